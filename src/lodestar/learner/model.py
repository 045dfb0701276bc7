"""Online per-endpoint linear predictor with time decay (the `linear` reward predictor).

Consumes: (endpoint id, feature row, observed target) samples, and training calls at an explicit cadence.
Produces: vectorised predictions for a set of candidates, with an uncertainty (the standard error of the fitted
mean), and prequential accuracy (every prediction is scored against the outcome that follows it, so the error
reported is always on data the model had not trained on).

Each endpoint has its own ridge regression in information form: A = sum of w * f f^T, b = sum of w * f y, where the
weight w of a sample decays as exp(-age / half_life * ln 2), so the model follows drift (an instance slows down, the
mix changes). Training folds the pending samples in and solves A theta = b for every endpoint at once. A new endpoint
starts from a prior: the mean coefficients of the endpoints with the same discovery labels (or of all of them),
held with the strength of `prior_samples` pseudo-observations, so scale-out needs no cold start.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from lodestar.learner.features import FEATURES, N_FEATURES

# Physical sign constraints: more work, more decoding or a fuller cache never shortens the TTFT; the age of the oldest
# request still waiting can only mean that up to that much of the queue has drained (coefficient in [-1, 0]).
LOWER = np.array([-np.inf if f == "bias" else (-1.0 if f == "oldest_wait_s" else 0.0) for f in FEATURES])
UPPER = np.array([0.0 if f == "oldest_wait_s" else np.inf for f in FEATURES])


def bounded_solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min 1/2 t'At - b't subject to LOWER <= t <= UPPER, for a stack of problems (A positive definite).

    The unconstrained solution is kept where it already satisfies the bounds. Elsewhere, an active-set pass: fix
    every violated coordinate at its bound and re-solve for the others, until nothing is violated (at most once per
    coordinate). Coordinates are never released again, so this is a close approximation of the bounded optimum,
    not always the exact one; it is what keeps a coefficient's physical sign."""
    t = np.linalg.solve(A, b[:, :, None])[:, :, 0]
    bad = np.nonzero(((t < LOWER) | (t > UPPER)).any(axis=1))[0]
    d = A.shape[1]
    for k in bad:
        Ak, bk, tk = A[k], b[k], t[k]
        fixed = np.zeros(d, dtype=bool)
        for _ in range(d):
            viol = ((tk < LOWER) | (tk > UPPER)) & ~fixed
            if not viol.any():
                break
            fixed |= viol
            tk = np.where(fixed, np.clip(tk, LOWER, UPPER), tk)
            free = ~fixed
            if free.any():
                rhs = bk[free] - Ak[np.ix_(free, fixed)] @ tk[fixed]
                tk[free] = np.linalg.solve(Ak[np.ix_(free, free)], rhs)
        t[k] = np.clip(tk, LOWER, UPPER)
    return t


class OnlineLinearModel:
    """Per-endpoint online ridge regression with exponential forgetting in time."""

    def __init__(
        self,
        half_life_s: float = 60.0,
        ridge: float = 1e-3,
        prior_samples: float = 4.0,
        prior_theta: np.ndarray | None = None,
        prior_strength: float = 0.05,
    ) -> None:
        self.half_life_s = half_life_s
        self.prior_theta = prior_theta  # coefficients a first endpoint starts from (no peers to learn from yet)
        self.prior_strength = prior_strength
        self.ridge = ridge
        self.prior_samples = prior_samples
        self.rows: dict[str, int] = {}  # endpoint -> row in the arrays
        self.group: dict[str, str] = {}  # endpoint -> label group (for priors)
        d = N_FEATURES
        self.A = np.zeros((0, d, d))
        self.b = np.zeros((0, d))
        self.theta = np.zeros((0, d))
        self.Ainv = np.zeros((0, d, d))
        self.n_obs = np.zeros(0)  # decayed sample count
        self.resid_var = np.zeros(0)  # decayed mean squared residual (prequential)
        self._pending: list[tuple[int, np.ndarray, float]] = []
        self._last_train: float | None = None
        self.total_samples = 0
        self.recent: deque[tuple[float, float]] = deque(maxlen=1000)  # (prediction, outcome), prequential

    # ---- endpoints ------------------------------------------------------------------------------------------
    def ensure(self, endpoint_id: str, group: str) -> int:
        """Row of `endpoint_id`, adding it (with a prior from its label group) if new."""
        r = self.rows.get(endpoint_id)
        if r is not None:
            return r
        d = N_FEATURES
        r = len(self.rows)
        self.rows[endpoint_id] = r
        self.group[endpoint_id] = group
        peers = [self.rows[e] for e, g in self.group.items() if g == group and e != endpoint_id]
        peers = [p for p in peers if self.n_obs[p] > 1] or [p for p in range(r) if self.n_obs[p] > 1]
        A0 = np.eye(d) * self.ridge
        b0 = np.zeros(d)
        if peers:
            theta0 = self.theta[peers].mean(axis=0)
            # a weak prior: the peers' mean design, scaled to `prior_samples` observations
            M = np.mean([self.A[p] / max(self.n_obs[p], 1e-9) for p in peers], axis=0) * self.prior_samples
            A0 = A0 + M
            b0 = M @ theta0
        elif self.prior_theta is not None:
            A0 = A0 + np.eye(d) * self.prior_strength
            b0 = self.prior_strength * self.prior_theta
        self.A = np.concatenate([self.A, A0[None]])
        self.b = np.concatenate([self.b, b0[None]])
        self.theta = np.concatenate([self.theta, bounded_solve(A0[None], b0[None])])
        self.Ainv = np.concatenate([self.Ainv, np.linalg.inv(A0)[None]])
        self.n_obs = np.append(self.n_obs, self.prior_samples if peers else 0.0)
        self.resid_var = np.append(self.resid_var, self.resid_var[peers].mean() if peers else 0.0)
        return r

    def forget(self, endpoint_id: str) -> None:
        """Drop an endpoint that left (its row is kept but no longer addressed)."""
        self.rows.pop(endpoint_id, None)
        self.group.pop(endpoint_id, None)

    # ---- learning -------------------------------------------------------------------------------------------
    def observe(self, endpoint_id: str, x: np.ndarray, y: float, predicted: float | None) -> None:
        """Queue one sample for the next training step; score the prediction made for it."""
        r = self.rows.get(endpoint_id)
        if r is None:
            return
        self._pending.append((r, x, y))
        self.total_samples += 1
        if predicted is not None:
            self.recent.append((predicted, y))
            e2 = (y - predicted) ** 2
            self.resid_var[r] = e2 if self.n_obs[r] < 2 else 0.95 * self.resid_var[r] + 0.05 * e2

    def train(self, now: float) -> int:
        """Fold pending samples in (after decaying old evidence by the time since the last step); returns count."""
        if self._last_train is not None and self.half_life_s > 0:
            decay = math.exp(-(now - self._last_train) / self.half_life_s * math.log(2))
            self.A *= decay
            self.b *= decay
            self.n_obs *= decay
        self._last_train = now
        pending, self._pending = self._pending, []  # swap first: `observe` may run concurrently (live gateway)
        n = len(pending)
        if n == 0:
            return 0
        rows = np.fromiter((p[0] for p in pending), dtype=np.int64, count=n)
        X = np.stack([p[1] for p in pending])
        y = np.fromiter((p[2] for p in pending), dtype=np.float64, count=n)
        np.add.at(self.A, rows, X[:, :, None] * X[:, None, :])
        np.add.at(self.b, rows, X * y[:, None])
        np.add.at(self.n_obs, rows, 1.0)
        touched = np.unique(rows)
        reg = np.eye(N_FEATURES) * self.ridge
        A = self.A[touched] + reg
        # copy-on-write: a concurrent `predict` sees either the old or the new coefficients, never a mix
        theta, ainv = self.theta.copy(), self.Ainv.copy()
        theta[touched] = bounded_solve(A, self.b[touched])
        ainv[touched] = np.linalg.inv(A)
        self.theta, self.Ainv = theta, ainv
        return n

    # ---- prediction -----------------------------------------------------------------------------------------
    def predict(self, rows: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean prediction, standard error of the mean) for feature rows X of endpoints `rows`."""
        mean = np.einsum("md,md->m", X, self.theta[rows])
        quad = np.einsum("md,mde,me->m", X, self.Ainv[rows], X)
        sigma = np.sqrt(np.maximum(self.resid_var[rows], 1e-8))
        return mean, sigma * np.sqrt(np.maximum(quad, 0.0))

    def predict_endpoints(self, ids: list[str], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`predict` by endpoint id."""
        return self.predict(np.array([self.rows[e] for e in ids]), X)

    def accuracy(self) -> dict[str, float]:
        """Prequential accuracy over the last (up to) 1000 scored predictions: R^2, median relative error."""
        return _accuracy(self.recent)


def _accuracy(recent: deque[tuple[float, float]]) -> dict[str, float]:
    """Prequential accuracy over scored predictions: R^2 and median relative error."""
    if len(recent) < 10:
        return {"n": float(len(recent)), "r2": float("nan"), "rel_err": float("nan")}
    a = np.array(recent)
    p, y = a[:, 0], a[:, 1]
    ss_res = float(((y - p) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    rel = float(np.median(np.abs(p - y) / np.maximum(y, 1e-3)))
    return {"n": float(len(a)), "r2": r2, "rel_err": rel}
