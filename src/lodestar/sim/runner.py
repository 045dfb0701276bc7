"""The discrete-event cluster runner.

Consumes: a `Scenario`, a list of `Request`s (the workload), and a `Policy`. Produces: a `RunRecord` (per-request
outcomes, per-instance facts, counts) that `lodestar.sim.results` summarises into the contract JSON.

Honesty: the policy sees a `ClusterView` built from (1) discovery (alive instances, labels if the scenario exposes
them), (2) scrapes of each engine's counters taken at the scrape ticks `k * scrape_interval_s` and visible
`scrape_delay_s` later, and (3) the router's own bookkeeping, updated only through outcome callbacks. Only a policy
that declares `sim_only` (the oracle) is handed the simulator.

Events, in time order (ties: step ends, scenario events, scrapes, arrivals): an engine step ends (first tokens,
completions, next step scheduled); a scenario event (slowdown, failure with failover of requests not yet past their
first token, scale-out); a scrape tick (only the ticks some decision will read are materialised: the latest tick
at or before `arrival - delay` of each arrival, so scraping costs nothing between decisions); an arrival (a routing
decision, then dispatch).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lodestar.cluster_view import ClusterView, Endpoint, EngineMetrics, RouterBookkeeping
from lodestar.engine.engine import Engine, Seq
from lodestar.engine.perf_model import PerfModel
from lodestar.policies.base import Policy
from lodestar.request import Request, RequestInfo
from lodestar.sim.scenario import InstanceGroup, Scenario

STEP, SCENARIO, SCRAPE, ARRIVAL = 0, 1, 2, 3
PENDING, DONE, FAILED = 0, 1, 2


@dataclass
class InstanceInfo:
    id: str
    gpu: str
    model: str
    tp: int
    added_at_s: float = 0.0
    failed_at_s: float | None = None


@dataclass
class RunRecord:
    """Raw outcome of one run (arrays indexed by request position in the workload)."""

    requests: list[Request]
    instance: np.ndarray  # int: index into `instances`, -1 if never dispatched
    ttft: np.ndarray
    e2e: np.ndarray
    hit_tokens: np.ndarray  # true engine prefix-cache hit at (last) admission
    status: np.ndarray  # PENDING / DONE / FAILED
    failovers: int
    rejected: int
    instances: list[InstanceInfo]
    sim_duration_s: float
    wall_s: float
    events: int
    decisions: int
    decision_wall_s: float
    engines: list[Engine] = field(repr=False, default_factory=list)


def snapshot(engine: Engine, at: float) -> EngineMetrics:
    """What a scrape of `engine`'s /metrics returns at time `at` (vLLM meanings)."""
    c = engine.counters
    return EngineMetrics(
        scraped_at=at,
        num_requests_running=float(len(engine.running)),
        num_requests_waiting=float(len(engine.waiting)),
        kv_cache_usage=engine.kv.usage(),
        prefix_cache_queries=float(c.prefix_queries),
        prefix_cache_hits=float(c.prefix_hits),
        prompt_tokens_total=float(c.prompt_tokens),
        generation_tokens_total=float(engine.generation_tokens_at(at)),
        num_preemptions_total=float(c.preemptions),
        ttft_sum=c.ttft_sum,
        ttft_count=float(c.ttft_count),
    )


class Simulation:
    """One run of a scenario with one policy. Use `run()` once."""

    def __init__(
        self,
        scenario: Scenario,
        requests: list[Request],
        policy: Policy,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.sc = scenario
        self.requests = requests
        self.policy = policy
        self.progress = progress
        self.book = RouterBookkeeping()
        self.engines: list[Engine] = []
        self.instances: list[InstanceInfo] = []
        self._by_id: dict[str, int] = {}
        self._alive: list[Endpoint] = []
        self._pending_scrapes: list[list[tuple[float, EngineMetrics]]] = []
        self._seq_of: dict[int, Seq] = {}
        self._req_pos = {r.id: i for i, r in enumerate(requests)}
        self._heap: list[tuple[float, int, int, int, object]] = []
        self._n = 0
        self._failovers = 0
        self._rejected = 0
        n = len(requests)
        self.inst = np.full(n, -1, dtype=np.int32)
        self.ttft = np.full(n, np.nan)
        self.e2e = np.full(n, np.nan)
        self.hit = np.zeros(n, dtype=np.int64)
        self.status = np.zeros(n, dtype=np.int8)
        self._info: dict[int, RequestInfo] = {}
        for g in scenario.cluster.instances:
            self._add_group(g, 0.0)
        if policy.sim_only:
            policy.bind_simulator(self)

    # ---- what the oracle may read ---------------------------------------------------------------------------
    def engine(self, endpoint_id: str) -> Engine:
        return self.engines[self._by_id[endpoint_id]]

    def request_by_id(self, req_id: int) -> Request:
        return self.requests[self._req_pos[req_id]]

    # ---- setup -----------------------------------------------------------------------------------------------
    def _add_group(self, g: InstanceGroup, now: float) -> None:
        cfg = g.engine.merged_over(self.sc.cluster.engine)
        perf = PerfModel.create(g.gpu, g.model, g.tp)
        for _ in range(g.count):
            idx = len(self.engines)
            iid = f"i{idx}"
            self.engines.append(Engine(iid, perf, cfg))
            self.instances.append(InstanceInfo(iid, g.gpu, g.model, g.tp, added_at_s=now))
            self._by_id[iid] = idx
            labels: dict[str, str] = {}
            if self.sc.router.expose_labels:
                labels = {"gpu": g.gpu, "model": g.model, "tp": str(g.tp),
                          "max_num_batched_tokens": str(cfg.max_num_batched_tokens),
                          "max_num_seqs": str(cfg.max_num_seqs), "block_size": str(cfg.block_size)}  # fmt: skip
            ep = Endpoint(iid, labels)
            self.book.add_endpoint(ep)
            self._alive.append(ep)
            self._pending_scrapes.append([])

    def _push(self, t: float, kind: int, payload: object) -> None:
        self._n += 1
        heapq.heappush(self._heap, (t, kind, self._n, kind, payload))

    def _start(self, idx: int, now: float) -> None:
        """Make engine idx notice a change at `now`: start a step if idle, or cut a decode run short."""
        eng = self.engines[idx]
        end = eng.start_step(now) if eng.busy_until is None else eng.interrupt(now)
        if end is not None:
            self._push(end, STEP, idx)

    # ---- the loop --------------------------------------------------------------------------------------------
    def run(self, until_s: float | None = None) -> RunRecord:
        wall0 = time.perf_counter()
        reqs = self.requests
        interval = self.sc.router.scrape_interval_s
        delay = self.sc.router.scrape_delay_s
        for ev in self.sc.events:
            self._push(ev.at_s, SCENARIO, ev)
        ai = 0  # next arrival to inject
        last_tick = -math.inf
        events = 0
        decisions = 0
        decision_wall = 0.0
        now = 0.0
        n = len(reqs)
        report_every = max(1, n // 200)
        heap = self._heap
        while True:
            # inject the next arrival (and the scrape tick it will read) lazily
            if ai < n and (not heap or heap[0][0] >= reqs[ai].arrival_s or len(heap) == 0):
                r = reqs[ai]
                if until_s is not None and r.arrival_s >= until_s:
                    n = ai
                    continue
                tick = math.floor((r.arrival_s - delay) / interval) * interval
                if tick > last_tick and tick >= 0:
                    last_tick = tick
                    self._push(tick, SCRAPE, None)
                self._push(r.arrival_s, ARRIVAL, ai)
                ai += 1
                continue
            if not heap:
                break
            t, kind, _, _, payload = heapq.heappop(heap)
            now = t
            events += 1
            if kind == STEP:
                self._on_step_end(payload, t)  # type: ignore[arg-type]
            elif kind == ARRIVAL:
                pos = int(payload)  # type: ignore[call-overload]
                w0 = time.perf_counter()
                self._route(reqs[pos], t, failover=False)
                decision_wall += time.perf_counter() - w0
                decisions += 1
                if self.progress is not None and pos % report_every == 0:
                    self.progress(pos + 1, n)
            elif kind == SCRAPE:
                for idx, eng in enumerate(self.engines):
                    if eng.alive:
                        self._pending_scrapes[idx].append((t + delay, snapshot(eng, t)))
            else:
                self._on_scenario_event(payload, t)
        if self.progress is not None:
            self.progress(n, n)
        return RunRecord(
            requests=reqs,
            instance=self.inst,
            ttft=self.ttft,
            e2e=self.e2e,
            hit_tokens=self.hit,
            status=self.status,
            failovers=self._failovers,
            rejected=self._rejected,
            instances=self.instances,
            sim_duration_s=now,
            wall_s=time.perf_counter() - wall0,
            events=events,
            decisions=decisions,
            decision_wall_s=decision_wall,
            engines=self.engines,
        )

    # ---- handlers --------------------------------------------------------------------------------------------
    def _view(self, now: float) -> ClusterView:
        for ep in self._alive:
            pend = self._pending_scrapes[self._by_id[ep.id]]
            if pend and pend[0][0] <= now:
                j = 0
                while j < len(pend) and pend[j][0] <= now:
                    j += 1
                ep.metrics = pend[j - 1][1]
                del pend[:j]
        return ClusterView(now, list(self._alive))

    def _route(self, req: Request, now: float, failover: bool) -> None:
        pos = self._req_pos[req.id]
        if not self._alive:
            self.status[pos] = FAILED
            return
        info = self._info.get(req.id)
        if info is None:
            info = req.info()
            self._info[req.id] = info
        view = self._view(now)
        pick = self.policy.choose(info, view)
        idx = self._by_id.get(pick)
        if idx is None or not self.engines[idx].alive:
            raise RuntimeError(f"policy {self.policy.name!r} picked {pick!r}, which is not a candidate")
        self.book.on_dispatch(info, pick, now)
        self.policy.on_dispatch(info, pick, now)
        seq = self.engines[idx].add(req)
        self.inst[pos] = idx
        if seq is None:  # longer than the instance's max_model_len: the engine rejects it at once
            self._rejected += 1
            self._fail(req, pick, now)
            return
        self._seq_of[req.id] = seq
        self._start(idx, now)

    def _fail(self, req: Request, endpoint_id: str, now: float) -> None:
        info = self._info[req.id]
        self.status[self._req_pos[req.id]] = FAILED
        self.book.on_failure(info, endpoint_id, now)
        self.policy.on_failure(info, endpoint_id, now)
        self._seq_of.pop(req.id, None)

    def _on_step_end(self, idx: int, now: float) -> None:
        eng = self.engines[idx]
        if not eng.alive or eng.busy_until != now:
            return  # stale: the engine died or was re-stepped
        firsts, done = eng.finish_step(now)
        eid = eng.id
        for s in firsts:
            r = s.req
            pos = self._req_pos[r.id]
            ttft = now - r.arrival_s
            self.ttft[pos] = ttft
            self.hit[pos] = s.hit
            info = self._info[r.id]
            self.book.on_first_token(info, eid, now, ttft)
            self.policy.on_first_token(info, eid, now, ttft)
        for s in done:
            r = s.req
            pos = self._req_pos[r.id]
            self.e2e[pos] = now - r.arrival_s
            self.status[pos] = DONE
            info = self._info.pop(r.id)
            self._seq_of.pop(r.id, None)
            self.book.on_complete(info, eid, now)
            self.policy.on_complete(info, eid, now, now - r.arrival_s, s.generated)
        self._start(idx, now)

    def _on_scenario_event(self, ev: object, now: float) -> None:
        from lodestar.sim.scenario import ScenarioEvent

        assert isinstance(ev, ScenarioEvent)
        if ev.add is not None:
            self._add_group(ev.add, now)
            return
        assert ev.instance is not None
        idx = ev.instance
        eng = self.engines[idx]
        if ev.slowdown is not None:
            eng.slowdown = ev.slowdown
            self._start(idx, now)  # a decode run in progress was timed at the old speed
            return
        if ev.fail and eng.alive:
            lost = eng.fail()
            self.instances[idx].failed_at_s = now
            self._alive = [e for e in self._alive if e.id != eng.id]
            self.policy.on_endpoint_removed(eng.id)
            for s in lost:
                r = s.req
                self.book.on_failure(self._info[r.id], eng.id, now)
                self.policy.on_failure(self._info[r.id], eng.id, now)
                if s.first_token_s is None:
                    # nothing was streamed yet: the router retries elsewhere (arrival time unchanged)
                    self._failovers += 1
                    self._route(r, now, failover=True)
                else:
                    self.status[self._req_pos[r.id]] = FAILED
                    self._info.pop(r.id, None)
            self.book.remove_endpoint(eng.id)
