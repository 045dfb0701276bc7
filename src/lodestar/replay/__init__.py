"""`lodestar replay`: a workload replayed in real time against any OpenAI-compatible endpoint.

Consumes: a workload (a scenario YAML or built-in name whose `workload:` is used, a workload YAML, or the
synthetic default), a target URL. Produces: client-side TTFT, TPOT and E2E per request and the result JSON of
`lodestar sim` (DESIGN.md 4.2). See docs/emulator.md.

Modules: `workload` (what to replay), `text` (block-structured prompts -> text with the same shared prefixes),
`client` (one streamed request, measured), `runner` (real-time schedule, bounded concurrency, progress, results).
"""

from lodestar.replay.runner import ReplayOptions, replay, run_replay
from lodestar.replay.workload import load_replay_workload

__all__ = ["ReplayOptions", "load_replay_workload", "replay", "run_replay"]
