"""Saving and loading the learned model, and the decision log.

Consumes: a `LodestarPolicy`. Produces: a model file (`.npz`: the per-endpoint model arrays plus a JSON header;
written atomically: a temporary file in the same folder, then renamed over the target, so a crash never leaves a
half-written model), and a JSONL decision log: one line per decision (`{"t", "req", "pick", "mode",
"candidates": [{"id", "pred_ttft_s", "cost"}]}`) and one per outcome (`{"t", "req", "ttft_s"}`), read back by
`lodestar explain`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lodestar.cluster_view import Endpoint
from lodestar.errors import UserError
from lodestar.learner.features import FEATURES
from lodestar.learner.model import OnlineLinearModel
from lodestar.request import RequestInfo

if TYPE_CHECKING:
    from lodestar.learner.policy import LodestarPolicy

FORMAT = "lodestar-model-v1"


def _arrays(prefix: str, m: OnlineLinearModel) -> dict[str, np.ndarray]:
    return {f"{prefix}_{k}": getattr(m, k) for k in ("A", "b", "theta", "Ainv", "n_obs", "resid_var")}


def save_model(policy: LodestarPolicy, path: str | Path) -> None:
    """Write the policy's models to `path` atomically."""
    write_model(path, *snapshot(policy))


def snapshot(policy: LodestarPolicy) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A copy of the policy's models (header, arrays), consistent as of now. Take it where the models are not being
    changed (between training steps, on the thread that routes), then write it anywhere with `write_model`."""
    header = {
        "format": FORMAT,
        "features": list(FEATURES),
        "ttft_rows": dict(policy.ttft_model.rows),
        "ttft_groups": dict(policy.ttft_model.group),
        "tpot_rows": dict(policy.tpot_model.rows) if policy.tpot_model else None,
        "tpot_groups": dict(policy.tpot_model.group) if policy.tpot_model else None,
    }
    arrays = {k: v.copy() for k, v in _arrays("ttft", policy.ttft_model).items()}
    if policy.tpot_model is not None:
        arrays.update({k: v.copy() for k, v in _arrays("tpot", policy.tpot_model).items()})
    return header, arrays


def write_model(path: str | Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write a `snapshot` to `path` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _restore(m: OnlineLinearModel, prefix: str, data: Any, rows: dict[str, int], groups: dict[str, str]) -> None:
    for k in ("A", "b", "theta", "Ainv", "n_obs", "resid_var"):
        setattr(m, k, np.array(data[f"{prefix}_{k}"]))
    m.rows = {str(k): int(v) for k, v in rows.items()}
    m.group = {str(k): str(v) for k, v in groups.items()}


def load_model(policy: LodestarPolicy, path: str | Path) -> bool:
    """Warm-start `policy` from `path`; False if the file does not exist. A corrupt file is a `UserError`."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != FORMAT or header.get("features") != list(FEATURES):
                raise UserError(f"{path}: not a {FORMAT} model with this feature set")
            _restore(policy.ttft_model, "ttft", data, header["ttft_rows"], header["ttft_groups"])
            if policy.tpot_model is not None and header.get("tpot_rows") is not None:
                _restore(policy.tpot_model, "tpot", data, header["tpot_rows"], header["tpot_groups"])
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: cannot read the saved model ({e})") from None
    return True


def _writer(policy: LodestarPolicy) -> Any:
    if policy._log is None:
        assert policy.p.decision_log is not None
        policy._log = open(policy.p.decision_log, "a", buffering=1 << 16)  # noqa: SIM115 (kept open)
    return policy._log


def log_decision(
    policy: LodestarPolicy, now: float, req: RequestInfo, eps: Sequence[Endpoint], ttft: np.ndarray,
    cost: np.ndarray, pick: str, mode: str,
) -> None:  # fmt: skip
    cands = [{"id": e.id, "pred_ttft_s": round(float(t), 6), "cost": round(float(c), 6)}
             for e, t, c in zip(eps, ttft, cost, strict=True)]  # fmt: skip
    rec = {"t": round(now, 6), "req": req.id, "pick": pick, "mode": mode, "candidates": cands}
    _writer(policy).write(json.dumps(rec) + "\n")


def log_outcome(policy: LodestarPolicy, now: float, req_id: int, ttft_s: float) -> None:
    _writer(policy).write(json.dumps({"t": round(now, 6), "req": req_id, "ttft_s": round(ttft_s, 6)}) + "\n")
