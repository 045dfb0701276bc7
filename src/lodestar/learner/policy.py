"""`lodestar`: the learned router.

Consumes: `RequestInfo` + `ClusterView` per decision (features in `lodestar.learner.features`), and the outcome
callbacks (first token -> TTFT sample, completion -> TPOT sample). Produces: the candidate with the best predicted
reward (`lodestar.learner.rewards`), exploring optimistically; until its predictor is good enough, the choice of a
configurable fallback policy.

Per decision: features of every candidate -> per-endpoint online linear predictions of TTFT (and TPOT when the
reward needs it) with standard errors -> cost per candidate -> pick the lowest *optimistic* cost
(cost - `explore_beta` x its standard error: a lower confidence bound, so endpoints the model knows little about, or
whose evidence has decayed, get tried; the bonus shrinks as evidence accumulates). Training folds the queued samples
in every `train_interval_s` of router time (explicit cadence: reproducible in simulation; the gateway may call
`train` from a worker thread instead, see `train`).

Cold start: until the predictor has `min_samples` scored predictions and its median relative error on them is at
most `max_rel_err` (the switch is logged and recorded in `diagnostics()`), there is no exploration, and the pick is
- with `cold_start: prior` (default) and every candidate's discovery labels naming a GPU and model of the latency
  model's catalogue: the lowest predicted cost, where the predictions start at the calibrated latency model's own
  answer (queue + own prefill, `PHYSICS_PRIOR`) and learn from the first sample on; so a mixed fleet's slow GPUs do
  not get the first requests' long cold prefills, as they would from a load balancer;
- otherwise (labels unknown, or `cold_start: fallback`): the `fallback` policy's choice.
A saved model (`model_path`) starts warm.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import Field

from lodestar.cluster_view import ClusterView, Endpoint
from lodestar.learner.features import PHYSICS_PRIOR, FeatureBuilder, hardware_known
from lodestar.learner.model import OnlineLinearModel
from lodestar.learner.rewards import RewardSpec, cost
from lodestar.policies.base import Policy, PolicyParams, build_policy, register_policy
from lodestar.request import RequestInfo

log = logging.getLogger("lodestar.learner")


class LodestarParams(PolicyParams):
    fallback: str = "least-request"
    cold_start: Literal["prior", "fallback"] = "prior"
    reward: RewardSpec = Field(default_factory=RewardSpec)
    half_life_s: float = Field(60.0, gt=0)
    train_interval_s: float = Field(0.5, gt=0)
    min_samples: int = Field(10, ge=1)
    max_rel_err: float = Field(0.5, gt=0)
    explore_beta: float = Field(1.0, ge=0)
    explore_cap: float = Field(0.25, ge=0, le=1)
    probe_interval_s: float = Field(20.0, ge=0)  # 0 disables probing idle, unheard-of endpoints
    probe_max_ratio: float = Field(2.0, gt=0)  # probe only with requests whose prior TTFT there is within this x best
    index_tokens: int | None = Field(None, gt=0)
    model_path: str | None = None
    decision_log: str | None = None
    diagnostics_interval_s: float = Field(5.0, gt=0)


def _group(ep: Endpoint) -> str:
    """Endpoints that share hardware, model and token budget share a prior."""
    lab = ep.labels
    return f"{lab.get('gpu', '?')}/{lab.get('model', '?')}/{lab.get('max_num_batched_tokens', '?')}" if lab else "all"


@register_policy
class LodestarPolicy(Policy):
    name = "lodestar"
    description = "Learned: online per-endpoint TTFT predictor, lowest predicted cost with optimistic exploration."
    learning = True
    Params = LodestarParams

    def __init__(self, params: PolicyParams | None = None, seed: int = 0) -> None:
        super().__init__(params, seed)
        p = self.p = self.params if isinstance(self.params, LodestarParams) else LodestarParams()
        if p.fallback == self.name:
            raise ValueError("the fallback of 'lodestar' must be another policy")
        self.fallback = build_policy(p.fallback, seed=seed)
        self.features = FeatureBuilder(p.index_tokens)
        self.ttft_model = OnlineLinearModel(p.half_life_s, prior_theta=PHYSICS_PRIOR)
        self.tpot_model = OnlineLinearModel(p.half_life_s) if p.reward.needs_tpot else None
        self.ready = False
        self.ready_at: float | None = None
        # True: `choose` trains on the cadence itself (simulation). A live front end sets it False and calls
        # `train(now)` from a worker thread every `train_interval_s` (training swaps in new coefficients whole).
        self.inline_training = True
        self._next_train = 0.0
        self._next_diag = 0.0
        self._out_mean = 200.0  # running mean of observed output tokens (for e2e when max_tokens is absent)
        # request id -> (endpoint, features at dispatch, predicted ttft, predicted tpot, est. uncached, ttft seen)
        self._pending: dict[int, list[Any]] = {}
        self.decisions = 0
        self.explored = 0
        self._last_sample: dict[str, float] = {}  # endpoint -> router time of its last TTFT sample
        self.history: list[tuple[float, float, float, float]] = []  # (time, r2, rel_err, explore rate)
        self._log: Any = None
        if p.model_path:
            from lodestar.learner.persist import load_model

            if load_model(self, p.model_path):
                self.ready, self.ready_at = True, 0.0

    # ---- decisions ------------------------------------------------------------------------------------------
    def choose(self, req: RequestInfo, view: ClusterView) -> str:
        now = view.now
        if self.inline_training and now >= self._next_train:
            self.train(now)
        eps = view.endpoints
        unc = self.features.uncached(req, eps, now)
        X = self.features.rows(req, view, unc)
        ids = [e.id for e in eps]
        known = self.ttft_model.rows
        for e in eps:
            if e.id not in known:
                self.ttft_model.ensure(e.id, _group(e))
        ttft, ttft_se = self.ttft_model.predict_endpoints(ids, X)
        ttft = np.maximum(ttft, 1e-3)
        if self.tpot_model is not None:
            for e in eps:
                self.tpot_model.ensure(e.id, _group(e))
            tpot, tpot_se = self.tpot_model.predict_endpoints(ids, X)
            tpot = np.maximum(tpot, 1e-3)
        else:
            tpot = tpot_se = np.zeros(len(eps))
        out_tokens = float(req.max_tokens) if req.max_tokens else self._out_mean
        c, c_se = cost(self.p.reward, ttft, ttft_se, tpot, tpot_se, out_tokens)
        self.decisions += 1
        if self.ready:
            # optimism, bounded: never more than `explore_cap` of the predicted cost (a congested endpoint's noisy
            # estimate must not make it look attractive)
            bonus = np.minimum(self.p.explore_beta * c_se, self.p.explore_cap * np.abs(c))
            i = int(np.argmin(c - bonus))
            greedy = int(np.argmin(c))
            if c[i] != c[greedy]:
                self.explored += 1
            mode = "learned" if i == greedy else "explore"
            probe = self._probe_candidate(eps, now, X @ PHYSICS_PRIOR, float(ttft.min()))
            if probe is not None:
                i, mode = probe, "probe"
                self.explored += 1
            pick = eps[i].id
        elif self.p.cold_start == "prior" and all(hardware_known(e.labels) for e in eps):
            i = int(np.argmin(c))
            pick, mode = eps[i].id, "prior"
        else:
            pick = self.fallback.choose(req, view)
            i = next(k for k, e in enumerate(eps) if e.id == pick)
            mode = "fallback"
        self._pending[req.id] = [pick, X[i], float(ttft[i]), float(tpot[i]), float(unc[i]), False]
        if self.p.decision_log:
            from lodestar.learner.persist import log_decision

            log_decision(self, now, req, eps, ttft, c, pick, mode)
        return pick

    def _probe_candidate(self, eps: list[Endpoint], now: float, prior_ttft: np.ndarray, best: float) -> int | None:
        """An idle endpoint the model has not heard from for `probe_interval_s`, if any (at most one probe per
        endpoint per interval), provided this request is a cheap probe there: its TTFT by the calibrated latency
        model alone (`prior_ttft`, which a stale bad estimate does not inflate) is within `probe_max_ratio` of the
        best prediction. Without probes, an endpoint whose estimate went bad during a congested episode could be
        starved forever: no traffic, so no evidence that it recovered. Without the cost check, a probe could be a
        long cold prompt on a slow GPU (seconds of TTFT for one request)."""
        if self.p.probe_interval_s <= 0:
            return None
        limit = self.p.probe_max_ratio * max(best, 1e-3)
        for k, e in enumerate(eps):
            last = self._last_sample.setdefault(e.id, now)
            if now - last >= self.p.probe_interval_s and e.book.in_flight == 0 and prior_ttft[k] <= limit:
                self._last_sample[e.id] = now  # one probe per interval, whatever its outcome
                return k
        return None

    def train(self, now: float) -> None:
        """Fold queued samples into the models; check the cold-start switch. Cheap (a few small solves)."""
        self._next_train = now + self.p.train_interval_s
        self.ttft_model.train(now)
        if self.tpot_model is not None:
            self.tpot_model.train(now)
        acc = self.ttft_model.accuracy()
        if not self.ready and acc["n"] >= self.p.min_samples and acc["rel_err"] <= self.p.max_rel_err:
            self.ready, self.ready_at = True, now
            log.info("lodestar: predictor ready at t=%.1fs (n=%d, median rel err %.2f); leaving fallback %s",
                     now, acc["n"], acc["rel_err"], self.p.fallback)  # fmt: skip
        if now >= self._next_diag:
            self._next_diag = now + self.p.diagnostics_interval_s
            rate = self.explored / self.decisions if self.decisions else 0.0
            self.history.append((now, acc["r2"], acc["rel_err"], rate))

    def diagnostics(self) -> dict[str, Any]:
        """Learning diagnostics for reports: prequential prediction error over time, switch time, exploration."""
        return {
            "pred_error": [(t, r2, rel) for t, r2, rel, _ in self.history],
            "explore_rate": [(t, e) for t, _, _, e in self.history],
            "ready_at_s": self.ready_at,
            "decisions": self.decisions,
            "explored": self.explored,
            "accuracy": self.ttft_model.accuracy(),
        }

    # ---- outcomes -------------------------------------------------------------------------------------------
    def on_dispatch(self, req: RequestInfo, endpoint_id: str, now: float) -> None:
        self.fallback.on_dispatch(req, endpoint_id, now)
        rec = self._pending.get(req.id)
        if rec is None or rec[0] != endpoint_id:  # dispatched elsewhere than chosen (e.g. a retry): re-estimate
            unc = float(max(1, req.prompt_tokens - self.features.index.match(endpoint_id, req.segment_keys,
                                                                             req.segment_tokens, now)))  # fmt: skip
            rec = [endpoint_id, None, None, None, unc, False]
            self._pending[req.id] = rec
        self.features.dispatched(req, endpoint_id, rec[4], now)

    def on_first_token(self, req: RequestInfo, endpoint_id: str, now: float, ttft_s: float) -> None:
        self.fallback.on_first_token(req, endpoint_id, now, ttft_s)
        rec = self._pending.get(req.id)
        if rec is None or rec[5]:
            return
        rec[5] = ttft_s
        self._last_sample[endpoint_id] = now
        self.features.first_token(req.id, endpoint_id, rec[4], req.prompt_tokens, now)
        if self.p.decision_log:
            from lodestar.learner.persist import log_outcome

            log_outcome(self, now, req.id, ttft_s)
        if rec[1] is not None:
            self.ttft_model.observe(endpoint_id, rec[1], ttft_s, rec[2])

    def on_complete(self, req: RequestInfo, endpoint_id: str, now: float, e2e_s: float, output_tokens: int) -> None:
        self.fallback.on_complete(req, endpoint_id, now, e2e_s, output_tokens)
        rec = self._pending.pop(req.id, None)
        if rec is None:
            return
        self._out_mean = 0.99 * self._out_mean + 0.01 * output_tokens
        self.features.finished(req.id, endpoint_id, rec[4], req.prompt_tokens, past_first_token=rec[5] is not False)
        if self.tpot_model is not None and rec[1] is not None and rec[5] is not False and output_tokens > 1:
            self.tpot_model.observe(endpoint_id, rec[1], (e2e_s - rec[5]) / (output_tokens - 1), rec[3])

    def on_failure(self, req: RequestInfo, endpoint_id: str, now: float) -> None:
        self.fallback.on_failure(req, endpoint_id, now)
        rec = self._pending.pop(req.id, None)
        if rec is not None:
            self.features.finished(req.id, endpoint_id, rec[4], req.prompt_tokens, past_first_token=rec[5] is not False)

    def on_endpoint_removed(self, endpoint_id: str) -> None:
        self.fallback.on_endpoint_removed(endpoint_id)
        self.features.remove_endpoint(endpoint_id)
        self.ttft_model.forget(endpoint_id)
        if self.tpot_model is not None:
            self.tpot_model.forget(endpoint_id)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_log"] = None  # file handles do not pickle; the log reopens on the next decision
        return state
