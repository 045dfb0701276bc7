"""Finding the shared public data (traces, profiles) without copying it into the package.

A path written `shared:<relative path>` in a scenario names a file under the shared data folder, found in this
order: the folder in `$LODESTAR_SHARED_DATA`; `shared/data` in the current directory or any parent of it; the same
beside the package's source tree (a checkout next to `../shared`). Other relative paths resolve against the
scenario file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from lodestar.errors import UserError

PREFIX = "shared:"


def shared_data_dir() -> Path | None:
    env = os.environ.get("LODESTAR_SHARED_DATA")
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            cand = d / "shared" / "data"
            if cand.is_dir():
                return cand
    return None


def resolve_data_path(text: str, base_dir: Path) -> Path:
    """Resolve a workload path from a scenario (see module doc); raises `UserError` if `shared:` data is absent."""
    if text.startswith(PREFIX):
        root = shared_data_dir()
        rel = text[len(PREFIX) :].lstrip("/")
        if root is None or not (root / rel).exists():
            raise UserError(
                f"data file {text!r} not found: set LODESTAR_SHARED_DATA to the folder holding traces/ and "
                "profiles/, or run from a checkout beside ../shared"
            )
        return root / rel
    p = Path(text).expanduser()
    return p if p.is_absolute() else base_dir / p
