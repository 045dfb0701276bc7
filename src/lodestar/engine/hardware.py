"""GPU and model catalogue (spec-sheet facts).

Consumes: nothing. Produces: `GpuSpec` / `ModelSpec` by kebab-case name (`get_gpu`, `get_model`); unknown names raise
`UserError` listing the known ones. Sources of each number are in `docs/calibration.md`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lodestar.errors import UserError


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    memory_gb: float  # HBM/GDDR capacity, GB (1e9 bytes)
    bf16_tflops: float  # dense BF16/FP16 tensor-core peak, TFLOP/s
    mem_bw_gbs: float  # memory bandwidth, GB/s


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    params_b: float  # total parameters, billions
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab: int
    dtype_bytes: int = 2

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def weight_bytes(self) -> float:
        return self.params_b * 1e9 * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer, per token."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def linear_flops_per_token(self) -> float:
        """2 x (non-embedding matmul parameters + LM head) FLOPs per token."""
        d, f, L = self.d_model, self.d_ff, self.n_layers
        kv = self.n_kv_heads * self.head_dim
        per_layer = d * d + 2 * d * kv + d * d + 3 * d * f  # q, k+v, o, gated MLP (up, gate, down)
        return 2.0 * (L * per_layer + d * self.vocab)


GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in [
        GpuSpec("h100", 80, 989.0, 3350.0),  # H100 SXM
        GpuSpec("h100-pcie", 80, 756.0, 2000.0),
        GpuSpec("a100-80g", 80, 312.0, 2039.0),  # A100 SXM 80GB
        GpuSpec("a100-40g", 40, 312.0, 1555.0),
        GpuSpec("l40s", 48, 362.0, 864.0),
        GpuSpec("a40", 48, 149.7, 696.0),
        GpuSpec("a10g", 24, 125.0, 600.0),  # AWS A10G: 70 TFLOPS dense in some sheets; see docs
        GpuSpec("l4", 24, 121.0, 300.0),
    ]
}
GPU_ALIASES = {"a100": "a100-80g"}

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec("llama-3-8b", 8.03, 32, 4096, 32, 8, 14336, 128256),
        ModelSpec("llama-2-7b", 6.74, 32, 4096, 32, 32, 11008, 32000),
        ModelSpec("qwen-2.5-14b", 14.7, 48, 5120, 40, 8, 13824, 152064),
        ModelSpec("llama-3-70b", 70.6, 80, 8192, 64, 8, 28672, 128256),
    ]
}


def get_gpu(name: str) -> GpuSpec:
    key = GPU_ALIASES.get(name, name)
    if key not in GPUS:
        raise UserError(f"unknown GPU {name!r}; expected one of: {', '.join(GPUS)}")
    return GPUS[key]


def get_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; expected one of: {', '.join(MODELS)}")
    return MODELS[name]
