"""Router-side prefix index: which endpoint was sent which prompt prefixes, approximately.

Consumes: a request's chained segment keys with their token counts (`RequestInfo.segment_keys` /
`segment_tokens`; in simulation derived from the workload's block ids, live from hashes of prompt text blocks),
the chosen endpoint, and the router clock `now` (never the wall clock).
Produces: for each endpoint, the number of *leading* prompt tokens it holds (its prefix match), and the number of
tokens indexed per endpoint (SGLang's "tree size").

Because keys are chained (a key identifies its segment and everything before it, see `lodestar.prefix`), a flat
dict keyed by segment key is equivalent to a prefix tree: an endpoint holds the first i segments of a prompt when it
holds the key of each of them. A lookup walks the prompt's keys from the start and stops at the first one an endpoint
lacks, so it costs O(matched segments + 1) dict look-ups per endpoint; an insert costs O(segments).

Eviction, all driven by the `now` passed in:

* **per-endpoint capacity** (`capacity_tokens_per_endpoint`): each endpoint's entries form an LRU; when the tokens
  it holds exceed the capacity, its least recently touched entries go first (GIE / llm-d `lruCapacityPerServer`,
  SGLang `max_tree_size`);
* **total capacity** (`capacity_tokens_total`): one LRU over distinct keys shared by all endpoints; evicting a key
  removes it from every endpoint (AIBrix's prefix hash table, whose capacity counts keys, not key-endpoint pairs);
* **idle eviction** (`idle_ttl_s`): an entry not touched for longer than this no longer matches and is dropped by
  the next sweep (AIBrix evicts entries idle for 20 minutes);
* `capacity_check_interval_s`: 0 enforces capacities on every insert; a positive value enforces them only in a
  sweep run at most that often (SGLang evicts in a background pass every `eviction_interval_secs`).

An insert touches the prompt's segments from the last to the first, so within one prompt the first segment is the
most recently used and LRU eviction removes the deep ends of old prompts before their shared beginnings; a match can
therefore rely on consecutive leading keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

_NEVER = float("-inf")


class PrefixIndex:
    """Approximate per-endpoint prefix cache contents, keyed by chained segment keys.

    Capacities are in tokens (the sum of `segment_tokens` of the distinct keys held); `None` means unbounded. The
    object is plain data (dicts), so it pickles with the policy that owns it.
    """

    __slots__ = (
        "_cap_ep",
        "_cap_ep_override",
        "_cap_interval",
        "_cap_total",
        "_ep_tokens",
        "_eps",
        "_global",
        "_global_tokens",
        "_last_cap_check",
        "_last_sweep",
        "_sweep_interval",
        "_ttl",
    )

    def __init__(
        self,
        *,
        capacity_tokens_per_endpoint: int | None = None,
        capacity_tokens_total: int | None = None,
        idle_ttl_s: float | None = None,
        sweep_interval_s: float = 1.0,
        capacity_check_interval_s: float = 0.0,
    ) -> None:
        for name, v in (
            ("capacity_tokens_per_endpoint", capacity_tokens_per_endpoint),
            ("capacity_tokens_total", capacity_tokens_total),
        ):
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive or None, got {v}")
        if idle_ttl_s is not None and idle_ttl_s <= 0:
            raise ValueError(f"idle_ttl_s must be positive or None, got {idle_ttl_s}")
        self._cap_ep = capacity_tokens_per_endpoint
        self._cap_ep_override: dict[str, int] = {}
        self._cap_total = capacity_tokens_total
        self._ttl = idle_ttl_s
        self._sweep_interval = max(0.0, sweep_interval_s)
        self._cap_interval = max(0.0, capacity_check_interval_s)
        # endpoint -> key -> (tokens, last touched); order = least recently touched first
        self._eps: dict[str, OrderedDict[int, tuple[int, float]]] = {}
        self._ep_tokens: dict[str, int] = {}
        # total-capacity mode only: key -> (tokens, endpoints holding it); order = least recently touched first
        self._global: OrderedDict[int, tuple[int, list[str]]] | None = OrderedDict() if capacity_tokens_total else None
        self._global_tokens = 0
        self._last_sweep = _NEVER
        self._last_cap_check = _NEVER

    # ---- queries ------------------------------------------------------------------------------------------

    def match(self, endpoint_id: str, keys: Sequence[int], tokens: Sequence[int], now: float) -> int:
        """Leading tokens of the prompt (`keys`, `tokens`) that `endpoint_id` holds, as of `now`."""
        return self.match_many((endpoint_id,), keys, tokens, now)[0]

    def match_many(
        self, endpoint_ids: Sequence[str], keys: Sequence[int], tokens: Sequence[int], now: float
    ) -> list[int]:
        """`match` for each of `endpoint_ids`, in that order. Entries idle past the TTL do not match."""
        cutoff = now - self._ttl if self._ttl is not None else _NEVER
        out: list[int] = []
        for eid in endpoint_ids:
            d = self._eps.get(eid)
            m = 0
            if d:
                for k, t in zip(keys, tokens, strict=False):
                    ent = d.get(k)
                    if ent is None or ent[1] < cutoff:
                        break
                    m += t
            out.append(m)
        return out

    def endpoint_tokens(self, endpoint_id: str) -> int:
        """Tokens currently indexed for `endpoint_id` (0 when unknown)."""
        return self._ep_tokens.get(endpoint_id, 0)

    def endpoints(self) -> list[str]:
        """Endpoints with at least one entry, in first-insert order."""
        return [e for e, d in self._eps.items() if d]

    def total_tokens(self) -> int:
        """Tokens indexed over all endpoints (a key held by two endpoints counts twice)."""
        return sum(self._ep_tokens.values())

    def __len__(self) -> int:
        """Number of (endpoint, key) entries."""
        return sum(len(d) for d in self._eps.values())

    # ---- updates ------------------------------------------------------------------------------------------

    def set_endpoint_capacity(self, endpoint_id: str, capacity_tokens: int | None) -> None:
        """Override the per-endpoint capacity for one endpoint (`None` restores the default)."""
        if capacity_tokens is None:
            self._cap_ep_override.pop(endpoint_id, None)
        elif capacity_tokens <= 0:
            raise ValueError(f"capacity must be positive, got {capacity_tokens}")
        else:
            self._cap_ep_override[endpoint_id] = capacity_tokens

    def insert(self, endpoint_id: str, keys: Sequence[int], tokens: Sequence[int], now: float) -> None:
        """Record that `endpoint_id` was sent the prompt (`keys`, `tokens`) at `now` (touches every segment)."""
        self._maybe_sweep(now)
        d = self._eps.get(endpoint_id)
        if d is None:
            d = self._eps[endpoint_id] = OrderedDict()
            self._ep_tokens[endpoint_id] = 0
        g = self._global
        dget, dmove = d.get, d.move_to_end
        added = 0
        for i in range(min(len(keys), len(tokens)) - 1, -1, -1):  # deepest first: the first segment ends newest
            k = keys[i]
            ent = dget(k)
            if ent is None:
                t = tokens[i]
                d[k] = (t, now)
                added += t
                if g is not None:
                    ge = g.get(k)
                    if ge is None:
                        g[k] = (t, [endpoint_id])
                        self._global_tokens += t
                    else:
                        ge[1].append(endpoint_id)
                        g.move_to_end(k)
            else:
                d[k] = (ent[0], now)
                dmove(k)
                if g is not None:
                    g.move_to_end(k)  # held by an endpoint => present globally
        self._ep_tokens[endpoint_id] += added
        if self._cap_interval == 0.0:
            self._enforce_endpoint(endpoint_id)
            self._enforce_total()

    def remove_endpoint(self, endpoint_id: str) -> None:
        """Forget everything indexed for `endpoint_id`."""
        d = self._eps.pop(endpoint_id, None)
        self._ep_tokens.pop(endpoint_id, None)
        self._cap_ep_override.pop(endpoint_id, None)
        if d and self._global is not None:
            for k in d:
                self._release_global(k, endpoint_id)

    def evict_idle(self, now: float) -> int:
        """Drop entries idle longer than the TTL as of `now`; returns how many (endpoint, key) entries went."""
        if self._ttl is None:
            return 0
        cutoff = now - self._ttl
        n = 0
        for eid, d in self._eps.items():
            removed = 0
            while d:
                k, (t, last) = next(iter(d.items()))
                if last >= cutoff:
                    break
                del d[k]
                removed += t
                n += 1
                if self._global is not None:
                    self._release_global(k, eid)
            self._ep_tokens[eid] -= removed
        return n

    # ---- internals ----------------------------------------------------------------------------------------

    def _maybe_sweep(self, now: float) -> None:
        if self._ttl is not None and now - self._last_sweep >= self._sweep_interval:
            self._last_sweep = now
            self.evict_idle(now)
        if self._cap_interval > 0.0 and now - self._last_cap_check >= self._cap_interval:
            self._last_cap_check = now
            for eid in list(self._eps):
                self._enforce_endpoint(eid)
            self._enforce_total()

    def _enforce_endpoint(self, endpoint_id: str) -> None:
        cap = self._cap_ep_override.get(endpoint_id, self._cap_ep)
        if cap is None:
            return
        d = self._eps[endpoint_id]
        held = self._ep_tokens[endpoint_id]
        while held > cap and d:
            k, (t, _) = d.popitem(last=False)
            held -= t
            if self._global is not None:
                self._release_global(k, endpoint_id)
        self._ep_tokens[endpoint_id] = held

    def _enforce_total(self) -> None:
        g = self._global
        cap = self._cap_total
        if g is None or cap is None:
            return
        eps, ep_tokens = self._eps, self._ep_tokens
        while self._global_tokens > cap and g:
            k, (t, holders) = g.popitem(last=False)
            self._global_tokens -= t
            for eid in holders:
                del eps[eid][k]
                ep_tokens[eid] -= t

    def _release_global(self, key: int, endpoint_id: str) -> None:
        g = self._global
        assert g is not None
        ge = g.get(key)
        if ge is None:
            return
        holders = ge[1]
        holders.remove(endpoint_id)
        if not holders:
            del g[key]
            self._global_tokens -= ge[0]
