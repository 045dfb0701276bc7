"""GPU and model catalogue (spec-sheet facts).

Consumes: nothing. Produces: `GpuSpec` / `ModelSpec` by kebab-case name (`get_gpu`, `get_model`); unknown names raise
`UserError` listing the known ones. Sources of each number are in `docs/calibration.md` (section "Spec sheets").
"""

from __future__ import annotations

from dataclasses import dataclass

from lodestar.errors import UserError


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    memory_gb: float  # capacity as marketed ("80GB"); vendors mean GiB here
    bf16_tflops: float  # dense BF16 tensor-core peak with FP32 accumulate, TFLOP/s (no 2:4 sparsity)
    mem_bw_gbs: float  # memory bandwidth, GB/s (1e9 bytes/s)
    visible_mib: int  # total memory the driver reports (nvidia-smi / torch), MiB: what vLLM's utilisation applies to
    link_gbs: float  # GPU-to-GPU bandwidth per direction used by tensor-parallel all-reduce, GB/s
    nvlink: bool  # True: NVLink/NVSwitch (SXM boards); False: PCIe only

    @property
    def memory_bytes(self) -> float:
        return self.visible_mib * 1048576.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    params_b: float  # total parameters, billions (official count, includes embedding and LM head)
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
    def layer_params(self) -> int:
        """Matmul parameters of one decoder layer: q, k+v, o and the gated MLP (gate, up, down)."""
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        return 2 * d * d + 2 * d * kv + 3 * d * self.d_ff

    @property
    def head_params(self) -> int:
        """LM head (untied in every catalogue model); the input embedding is a lookup and is not streamed."""
        return self.d_model * self.vocab

    @property
    def streamed_weight_bytes(self) -> float:
        """Weights read from memory by one forward pass: every layer's matmuls plus the LM head."""
        return (self.n_layers * self.layer_params + self.head_params) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer, per token."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def linear_flops_per_token(self) -> float:
        """2 x (decoder-layer matmul parameters + LM head) FLOPs per token."""
        return 2.0 * (self.n_layers * self.layer_params + self.head_params)


# Spec sheets: see docs/calibration.md. PCIe boards use PCIe bandwidth for TP (optional NVLink bridges ignored).
GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in [
        GpuSpec("h100", 80, 989.0, 3350.0, 81559, 450.0, True),  # H100 SXM5 80GB, NVLink4 900 GB/s bidir.
        GpuSpec("h100-pcie", 80, 756.0, 2000.0, 81559, 64.0, False),  # PCIe Gen5 x16
        GpuSpec("a100-80g", 80, 312.0, 2039.0, 81920, 300.0, True),  # A100 SXM4 80GB, NVLink3 600 GB/s bidir.
        GpuSpec("a100-40g", 40, 312.0, 1555.0, 40960, 300.0, True),  # A100 SXM4 40GB
        GpuSpec("l40s", 48, 362.0, 864.0, 46068, 32.0, False),  # PCIe Gen4 x16
        GpuSpec("a40", 48, 149.7, 696.0, 46068, 32.0, False),
        GpuSpec("a10g", 24, 70.0, 600.0, 23028, 32.0, False),  # AWS A10G: half the A10's tensor rate, see docs
        GpuSpec("l4", 24, 121.0, 300.0, 23034, 32.0, False),  # 242 TFLOPS in the sheet is with sparsity
    ]
}
GPU_ALIASES = {
    "a100": "a100-80g",
    "a100-80gb": "a100-80g",
    "a100-40gb": "a100-40g",
    "h100-sxm": "h100",
    "h100-80gb": "h100",
}

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec("llama-3-8b", 8.03, 32, 4096, 32, 8, 14336, 128256),
        ModelSpec("llama-2-7b", 6.74, 32, 4096, 32, 32, 11008, 32000),
        ModelSpec("qwen-2.5-14b", 14.77, 48, 5120, 40, 8, 13824, 152064),
        ModelSpec("llama-3-70b", 70.55, 80, 8192, 64, 8, 28672, 128256),
        ModelSpec("llama-2-70b", 68.98, 80, 8192, 64, 8, 28672, 32000),
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
