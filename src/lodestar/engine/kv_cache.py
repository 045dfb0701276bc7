"""Paged KV cache with automatic prefix caching (vLLM v1 semantics, at segment granularity).

Consumes: block requests from the scheduler and the prompt's chained segment keys. Produces: prefix-cache hits,
allocations that succeed or fail (the scheduler then preempts), usage for the `kv_cache_usage_perc` metric.

Model. The cache has `num_blocks` blocks of `block_size` tokens. A block's identity, as in vLLM, is the chained hash
of every token up to its end, so a block belongs to the prompt segment that holds its *last* token: segment i that
spans token positions [s, e) owns `e // bs - s // bs` blocks. A cached segment is one entry holding those blocks,
with a reference count. Entries whose count drops to zero stay cached but become evictable, in LRU order; like
vLLM, which frees a sequence's blocks tail-first, the later segments of a prompt become evictable before its
earlier ones. Allocation takes never-cached free blocks first and then evicts from the LRU end, tail blocks of a
segment first (a partly evicted entry keeps its leading blocks, which still match). Usage counts blocks that are
referenced, as vLLM's `1 - free / total` does (evictable cached blocks are free).

Approximation (stated in docs/engine.md): vLLM's free queue interleaves never-cached and cached-free blocks by
free time; we evict cached blocks only when no never-cached block is left, which keeps slightly more prefix
cache under moderate pressure.
"""

from __future__ import annotations

from collections import OrderedDict


class CacheEntry:
    __slots__ = ("blocks", "full_blocks", "key", "ref")

    def __init__(self, key: int, blocks: int, full_blocks: int) -> None:
        self.key = key
        self.blocks = blocks  # blocks currently cached (leading part of the segment)
        self.full_blocks = full_blocks  # blocks the whole segment owns
        self.ref = 0


def segment_blocks(start: int, end: int, bs: int) -> int:
    """Blocks owned by a segment spanning token positions [start, end)."""
    return end // bs - start // bs


class KVCache:
    __slots__ = (
        "block_size",
        "entries",
        "evictable",
        "evictable_blocks",
        "free_plain",
        "num_blocks",
        "prefix_caching",
    )

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError("KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.free_plain = num_blocks  # free blocks holding no cached content
        self.entries: dict[int, CacheEntry] = {}
        self.evictable: OrderedDict[int, CacheEntry] = OrderedDict()  # ref == 0, oldest first
        self.evictable_blocks = 0

    # ---- accounting -------------------------------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        return self.free_plain + self.evictable_blocks

    def usage(self) -> float:
        return 1.0 - self.free_blocks / self.num_blocks

    def allocate(self, n: int) -> bool:
        """Take `n` blocks (evicting cached-free ones if needed); False, changing nothing, if they do not fit."""
        if n <= self.free_plain:
            self.free_plain -= n
            return True
        if n > self.free_plain + self.evictable_blocks:
            return False
        need = n - self.free_plain
        self.free_plain = 0
        ev = self.evictable
        while need > 0:
            key, e = next(iter(ev.items()))
            if e.blocks <= need:
                need -= e.blocks
                self.evictable_blocks -= e.blocks
                del ev[key]
                del self.entries[key]
            else:
                e.blocks -= need  # evict the segment's tail blocks; its leading blocks stay matchable
                self.evictable_blocks -= need
                need = 0
        return True

    def free(self, n: int) -> None:
        self.free_plain += n

    # ---- prefix matching --------------------------------------------------------------------------------------
    def match(self, keys: tuple[int, ...], tokens: tuple[int, ...], limit: int) -> tuple[int, list[CacheEntry]]:
        """Longest cached prefix: (hit tokens, block-aligned and < `limit`; the entries it uses). No mutation."""
        if not self.prefix_caching:
            return 0, []
        bs = self.block_size
        pos = 0
        hit = 0
        used: list[CacheEntry] = []
        starts: list[int] = []  # first block index of each used entry
        entries = self.entries
        for key, n in zip(keys, tokens, strict=True):
            start, pos = pos, pos + n
            full = pos // bs - start // bs
            if full == 0:
                continue  # no block ends in this segment; the next segment's chained key covers it
            e = entries.get(key)
            if e is None or e.blocks == 0:
                break
            used.append(e)
            starts.append(start // bs)
            if e.blocks < full:
                hit = (start // bs + e.blocks) * bs
                break
            hit = (pos // bs) * bs
        if hit > limit:  # vLLM always computes at least the last prompt token
            hit = (limit // bs) * bs
            while used and starts[-1] >= hit // bs:
                used.pop()
                starts.pop()
        return hit, used

    def acquire(self, entries: list[CacheEntry]) -> None:
        for e in entries:
            if e.ref == 0:
                self.evictable.pop(e.key, None)
                self.evictable_blocks -= e.blocks
            e.ref += 1

    def release(self, entries: list[CacheEntry]) -> None:
        """Drop references, tail segment first, so earlier segments are evicted later."""
        for e in reversed(entries):
            e.ref -= 1
            if e.ref == 0:
                if self.entries.get(e.key) is e and e.blocks > 0:
                    self.evictable[e.key] = e
                    self.evictable_blocks += e.blocks
                elif self.entries.get(e.key) is e:
                    del self.entries[e.key]

    def register(self, key: int, blocks: int) -> CacheEntry | None:
        """Turn `blocks` private blocks of a computed segment into a cached entry (caller holds one reference).

        Returns the entry, or None if the key is already fully cached (the caller keeps its blocks private).
        """
        if not self.prefix_caching or blocks <= 0:
            return None
        e = self.entries.get(key)
        if e is not None:
            return None
        e = CacheEntry(key, blocks, blocks)
        e.ref = 1
        self.entries[key] = e
        return e

    def upgrade(self, e: CacheEntry, extra_blocks: int) -> None:
        """A partly cached entry this caller references gets its missing tail blocks (moved from private)."""
        e.blocks += extra_blocks
