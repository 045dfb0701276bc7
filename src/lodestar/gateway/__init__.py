"""The gateway: `lodestar serve`, an OpenAI-compatible HTTP router in front of vLLM/SGLang engines.

Modules: `config` (settings), `parse` (client requests -> routing facts), `pool` (backends, health, breakers),
`monitor` (health checks and `/metrics` scraping), `engine_metrics` (vLLM/SGLang names -> `EngineMetrics`), `sse`
(stream observation and aggregation), `proxy` (the request path), `upstream` (the keep-alive client to the engines),
`streaming` (engine body -> client), `outcomes` (callbacks to bookkeeping and policy), `observability` (the
gateway's Prometheus metrics and JSON logs), `admin` (runtime backend management), `kubernetes` (optional pod
discovery), `app` (wiring and lifecycle), `cli` (`lodestar serve`), `testing` (a fake engine for tests and
benchmarks). See docs/gateway.md.
"""
