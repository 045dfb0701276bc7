"""Emulated engines: the simulator's engine model stepped on the wall clock behind a vLLM-compatible HTTP server.

Consumes: a GPU, a model and engine settings (`EmulatorConfig`). Produces: an HTTP server with vLLM's OpenAI
endpoints, `/health`, `/metrics` (vLLM names) and `/admin/faults`, whose latency, batching, prefix cache and
metrics come from `lodestar.engine.engine.Engine`. See docs/emulator.md.

Modules: `server` (lifecycle, routes, faults, crash/restart), `driver` (wall-clock stepping, per-token timing,
aborts), `openai_api` (request parsing, SSE), `metrics` (Prometheus exposition), `faults`, `tokens` (generated
filler text), `engine_ops` (abort, answer caching), `fleet` (several engines: `lodestar up`), `background` (engines on
a thread), `cli` (`lodestar emulate`, `lodestar replay`).
"""

from lodestar.emulator.faults import FaultUpdate
from lodestar.emulator.server import EmulatorConfig, EmulatorServer, serve_forever

__all__ = ["EmulatorConfig", "EmulatorServer", "FaultUpdate", "serve_forever"]
