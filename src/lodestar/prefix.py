"""Chained prefix keys.

A prompt is described as a chain of *segments*: each segment is a run of tokens with a 64-bit key that identifies
its content **and everything before it** (like vLLM's chained block hashes). Two prompts that start with the same
segment keys share exactly that prefix, so its KV cache can be reused. Segments are whole multiples of the engine's
KV block size except possibly the last one of a prompt.

In simulation the workload produces the keys (from Mooncake's `hash_ids`, or from the synthetic generator); live,
the gateway derives them by hashing fixed-size blocks of prompt text (see the gateway's prefix hashing).
"""

from __future__ import annotations

import xxhash

ROOT_KEY = 0x6C6F646573746172  # chain origin ("lodestar")


def chain_key(parent: int, local_id: int | bytes | str) -> int:
    """Key of a segment with content `local_id` that follows the prefix whose key is `parent`."""
    h = xxhash.xxh64(seed=0)
    h.update(parent.to_bytes(8, "little", signed=False))
    if isinstance(local_id, int):
        h.update(local_id.to_bytes(8, "little", signed=True))
    elif isinstance(local_id, str):
        h.update(local_id.encode())
    else:
        h.update(local_id)
    return h.intdigest()


def chain_keys(local_ids: list[int] | tuple[int, ...], parent: int = ROOT_KEY) -> tuple[int, ...]:
    """Chained keys for a sequence of content ids, starting at `parent`."""
    out = []
    for lid in local_ids:
        parent = chain_key(parent, lid)
        out.append(parent)
    return tuple(out)
