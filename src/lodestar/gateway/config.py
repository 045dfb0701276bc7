"""Gateway configuration: one pydantic model, filled from a YAML file and/or command-line flags.

Consumes: a YAML mapping (`load_config`) and flag overrides (`merge_flags`), plus the environment variables
`LODESTAR_API_KEYS` (comma-separated client keys) and `LODESTAR_ADMIN_KEY`, so keys need not appear in a command
line or a file. Produces: a validated `GatewayConfig`; any mistake is a `UserError` naming the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lodestar.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_url(url: str) -> str:
    """A backend base URL: http(s)://host[:port][/prefix], no query; returned without a trailing slash."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
        raise ValueError(f"backend URL must look like http://host:port, got {url!r}")
    try:
        u.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"backend URL has a bad port: {url!r}") from None
    return url.rstrip("/")


class BackendSpec(_Strict):
    url: str
    id: str | None = None  # default: host:port
    labels: dict[str, str] = Field(default_factory=dict)  # e.g. {gpu: h100, model: llama-3-8b, tp: "1"}
    models: list[str] | None = None  # served model names; default: learned from the backend's /v1/models

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_url(v)

    def endpoint_id(self) -> str:
        if self.id:
            return self.id
        u = urlsplit(self.url)
        return f"{u.hostname}:{u.port or (443 if u.scheme == 'https' else 80)}"


class KubernetesConfig(_Strict):
    namespace: str = "default"
    label_selector: str  # e.g. "app=vllm"
    port: int = Field(8000, ge=1, le=65535)  # the engines' HTTP port in the pod
    scheme: str = "http"
    api_server: str | None = None  # default: in-cluster (KUBERNETES_SERVICE_HOST/PORT)
    token_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_path: str | None = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    label_keys: list[str] = Field(default_factory=lambda: ["gpu", "model", "tp"])  # pod labels copied to endpoints


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    backends: list[BackendSpec] = Field(default_factory=list)
    kubernetes: KubernetesConfig | None = None
    policy: str = "least-request"
    policy_params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    model_save_interval_s: float = Field(60.0, gt=0)  # the learner's model to its `model_path`, if it has one
    # engine metrics and health
    scrape_interval_s: float = Field(0.05, gt=0)
    scrape_timeout_s: float = Field(1.0, gt=0)
    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(2.0, gt=0)
    unhealthy_after: int = Field(2, ge=1)  # consecutive failed health checks before leaving the candidate set
    models_refresh_s: float = Field(30.0, gt=0)
    # upstream requests
    connect_timeout_s: float = Field(2.0, gt=0)
    first_byte_timeout_s: float = Field(30.0, gt=0)  # until the engine's response headers
    idle_timeout_s: float = Field(300.0, gt=0)  # longest silence of an engine mid-response
    max_connections_per_backend: int = Field(0, ge=0)  # open connections to one engine; 0: no limit
    max_retries: int = Field(2, ge=0)  # extra attempts on other endpoints, before the first response byte
    stream_upstream: bool = True  # non-streaming client requests are streamed from the engine and aggregated
    backend_api_key: str | None = None  # sent upstream as a bearer token (vLLM --api-key)
    # circuit breaker
    breaker_failures: int = Field(3, ge=1)  # consecutive request failures that eject an endpoint
    breaker_open_s: float = Field(5.0, gt=0)  # first ejection; doubles on each failed probe
    breaker_max_open_s: float = Field(60.0, gt=0)
    # limits
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_concurrency: int = Field(2048, ge=1)
    retry_after_s: int = Field(1, ge=0)
    # prefix hashing
    block_chars: int = Field(64, ge=4)
    max_segments: int = Field(2048, ge=1)
    # security
    api_keys: list[str] = Field(default_factory=list)
    admin_key: str | None = None
    routing_hint_header: str | None = None  # e.g. "x-lodestar-endpoint"; None: hints are ignored
    # observability
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_requests: bool = False  # one structured line per request (never the body)
    log_bodies: bool = False  # request bodies in debug logs: off by default

    @field_validator("admin_key")
    @classmethod
    def _admin(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 8:
            raise ValueError("admin_key must be at least 8 characters")
        return v


def _validate(data: dict[str, Any], where: str) -> GatewayConfig:
    try:
        return GatewayConfig(**data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise UserError(f"{where}: {loc or 'config'}: {first['msg']}") from None


def load_config(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a YAML config file (validated later, with the flags applied)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of settings at the top level")
    return data


def parse_backend_flag(text: str) -> dict[str, Any]:
    """`--backend URL` or `--backend ID=URL`."""
    if "=" in text and not text.startswith(("http://", "https://")):
        eid, url = text.split("=", 1)
        return {"id": eid.strip(), "url": url.strip()}
    return {"url": text.strip()}


def build_config(file_data: dict[str, Any], overrides: dict[str, Any], where: str = "config") -> GatewayConfig:
    """File values, then flag overrides (None = not given), then keys from the environment."""
    data = dict(file_data)
    for k, v in overrides.items():
        if v is None:
            continue
        if k == "backends":
            data["backends"] = list(data.get("backends") or []) + list(v)
        elif k == "policy_params":
            data["policy_params"] = {**(data.get("policy_params") or {}), **v}
        else:
            data[k] = v
    env_keys = os.environ.get("LODESTAR_API_KEYS")
    if env_keys:
        data["api_keys"] = list(data.get("api_keys") or []) + [k.strip() for k in env_keys.split(",") if k.strip()]
    if os.environ.get("LODESTAR_ADMIN_KEY"):
        data["admin_key"] = os.environ["LODESTAR_ADMIN_KEY"]
    cfg = _validate(data, where)
    ids = [b.endpoint_id() for b in cfg.backends]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(f"{where}: backends: duplicate endpoint id {dup[0]!r} (give each backend an id)")
    return cfg
