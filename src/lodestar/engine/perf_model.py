"""Per-step latency model of a vLLM instance for one (GPU, model, tensor-parallel degree).

Consumes: the aggregate shape of one engine step. Produces: its duration in seconds.

    step_time(tokens, prefill_attn, decode_seqs, decode_ctx)

- `tokens`: all tokens processed in the step (prefill chunk tokens + one per decoding sequence): drives the linear
  layers, which are compute-bound for many tokens and weight-read (memory) bound for few.
- `prefill_attn`: sum over prefill chunks of c * (p + c / 2) for a chunk of c new tokens after p tokens of context
  (query-key pairs, causal): drives prefill attention FLOPs.
- `decode_seqs`, `decode_ctx`: number of decoding sequences and the sum of their context lengths: drives the KV read
  of decode attention (memory-bound).

Per GPU of a tensor-parallel group (every matmul and KV head is split `tp` ways):

    t_compute = (tokens * F_layers + rows * F_head) / (tp * peak_flops * GEMM_EFF)     rows = LM-head rows
    t_weights = (layer weights + LM head bytes) / (tp * mem_bw * MEM_EFF)
    linear    = sqrt(t_compute^2 + t_weights^2)                      smooth roofline: max() with a soft corner
              + tokens * elementwise bytes / (mem_bw * MEM_EFF)      norms, residual adds, RoPE, SiLU*mul
              + n_layers * LAYER_FLOOR_S                              kernel floors that never shrink
    attention = 4 * n_layers * n_heads * head_dim * prefill_attn / (tp * peak_flops * ATTN_EFF)
              + decode_ctx * kv_bytes_per_token / (tp * mem_bw * MEM_EFF)
    tp comm   = 2 * n_layers * (AR latency + 2 (tp-1)/tp * tokens * d_model * 2 bytes / (link_bw * LINK_EFF))
    step      = linear + attention + tp comm + STEP_OVERHEAD_S

Every constant is fitted or chosen in docs/calibration.md, which also lists the measured points and the error at
each. The model is cheap: `create` precomputes coefficients so that `step_time` is a handful of float operations.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from lodestar.engine.hardware import GpuSpec, ModelSpec, get_gpu, get_model
from lodestar.errors import UserError

# Fitted on Vidur A100 + H100 operator profiles (GEMM ops and element-wise ops fitted separately, TP 1-8).
GEMM_EFF = 0.72  # fraction of dense BF16 peak reached by the linear-layer GEMMs when compute-bound
MEM_EFF = 0.86  # fraction of spec memory bandwidth reached streaming weights, KV and activations
LAYER_FLOOR_S = 45e-6  # per decoder layer: minimum time of its ~10 kernels (~34 us GEMMs + ~11 us element-wise)
ELEM_REPLICATED = 10.6  # element-wise traffic per token and layer, in units of d_model * 2 bytes, on every TP rank
ELEM_SHARDED = 7.4  # element-wise traffic per token and layer, in units of d_ff * 2 bytes, split across TP ranks
# Not identifiable from the data we have (attention is <3% of every prefill calibration point): a prior.
ATTN_EFF = 0.50  # fraction of dense peak reached by FlashAttention-style prefill attention
# Fitted on the IOG vLLM 0.8.5 H100-PCIe serving runs (TPOT and TTFT at 1 request/s).
STEP_OVERHEAD_S = 0.0004  # per engine step: scheduler, input preparation, sampling not hidden behind the GPU
API_OVERHEAD_S = 0.0027  # per request, outside engine steps: HTTP, tokenisation, detokenisation, streaming
# Tensor-parallel all-reduce (two per layer). Link efficiency fitted on Splitwise A100 TP2-8 prefill.
LINK_EFF = 0.45  # fraction of per-direction link bandwidth reached by a ring all-reduce (NCCL bus bandwidth)
AR_LATENCY_NVLINK_S = 8e-6  # one small all-reduce over NVLink (vLLM custom all-reduce)
AR_LATENCY_PCIE_S = 25e-6  # one small all-reduce over PCIe (NCCL)
# Memory kept out of the KV cache on each GPU besides weights: peak activations, CUDA graphs, NCCL, CUDA context.
NON_KV_RESERVE_BYTES = 2.0 * 2**30

TP_DEGREES = (1, 2, 4, 8)


@dataclass(frozen=True, slots=True)
class PerfModel:
    gpu: GpuSpec
    model: ModelSpec
    tp: int = 1
    # Precomputed coefficients (seconds per unit); see the module docstring for the formula.
    _tok: float = field(init=False, repr=False, compare=False)  # compute time per token, all layers
    _row: float = field(init=False, repr=False, compare=False)  # compute time per LM-head row
    _w2: float = field(init=False, repr=False, compare=False)  # (weight-read time)^2
    _elem: float = field(init=False, repr=False, compare=False)  # element-wise ops, per token
    _comm: float = field(init=False, repr=False, compare=False)  # all-reduce bandwidth, per token
    _lin_tok: float = field(init=False, repr=False, compare=False)  # _elem + _comm
    _pair: float = field(init=False, repr=False, compare=False)  # per prefill query-key pair
    _kv: float = field(init=False, repr=False, compare=False)  # per decode context token
    _fixed: float = field(init=False, repr=False, compare=False)  # per step

    def __post_init__(self) -> None:
        g, m, tp = self.gpu, self.model, self.tp
        flops = tp * g.bf16_tflops * 1e12
        bw = g.mem_bw_gbs * 1e9 * MEM_EFF  # per GPU
        L, d, f = m.n_layers, m.d_model, m.d_ff
        elem = L * (ELEM_REPLICATED * d + ELEM_SHARDED * f / tp) * m.dtype_bytes / bw
        comm, fixed = 0.0, STEP_OVERHEAD_S + L * LAYER_FLOOR_S
        if tp > 1:
            ring = 2.0 * (tp - 1) / tp * d * m.dtype_bytes / (g.link_gbs * 1e9 * LINK_EFF)
            comm = 2 * L * ring
            fixed += 2 * L * (AR_LATENCY_NVLINK_S if g.nvlink else AR_LATENCY_PCIE_S)
        kv_copies = max(1, tp // m.n_kv_heads)  # KV heads are replicated when tp exceeds their number
        sa = object.__setattr__
        sa(self, "_tok", 2.0 * L * m.layer_params / (flops * GEMM_EFF))
        sa(self, "_row", 2.0 * m.head_params / (flops * GEMM_EFF))
        sa(self, "_w2", (m.streamed_weight_bytes / tp / bw) ** 2)
        sa(self, "_elem", elem)
        sa(self, "_comm", comm)
        sa(self, "_lin_tok", elem + comm)
        sa(self, "_pair", 4.0 * L * m.n_heads * m.head_dim / (flops * ATTN_EFF))
        sa(self, "_kv", m.kv_bytes_per_token * kv_copies / tp / bw)
        sa(self, "_fixed", fixed)

    @classmethod
    def create(cls, gpu: str, model: str, tp: int = 1) -> PerfModel:
        """The (cached) model for a GPU and model name; `UserError` on unknown names or an impossible `tp`."""
        return _create(gpu, model, tp)

    # ---- the hot path -------------------------------------------------------------------------------------------

    def step_time(self, tokens: int, prefill_attn: float, decode_seqs: int, decode_ctx: int) -> float:
        """Seconds for one engine step (see the module docstring for the arguments)."""
        rows = decode_seqs + 1 if tokens > decode_seqs else decode_seqs  # LM head: one row per sequence
        tc = tokens * self._tok + rows * self._row
        return (
            math.sqrt(tc * tc + self._w2)
            + tokens * self._lin_tok
            + prefill_attn * self._pair
            + decode_ctx * self._kv
            + self._fixed
        )

    # ---- components and conveniences (not on the hot path) ------------------------------------------------------

    def linear_time(self, tokens: int, lm_head_rows: int = 0) -> float:
        """Linear layers of one forward pass (matmuls, element-wise ops, kernel floors; no attention, no TP
        communication, no step overhead). `lm_head_rows=0` leaves out the LM head, as Vidur's per-layer profiles do."""
        m, tp = self.model, self.tp
        tc = tokens * self._tok + lm_head_rows * self._row
        w = (m.n_layers * m.layer_params + (m.head_params if lm_head_rows else 0)) * m.dtype_bytes
        tw = w / tp / (self.gpu.mem_bw_gbs * 1e9 * MEM_EFF)
        return math.sqrt(tc * tc + tw * tw) + tokens * self._elem + m.n_layers * LAYER_FLOOR_S

    def comm_time(self, tokens: int) -> float:
        """Bandwidth part of the tensor-parallel all-reduces of one forward pass (0 when tp == 1)."""
        return tokens * self._comm

    def decode_step_time(self, batch: int, ctx: int) -> float:
        """One pure-decode step: `batch` sequences, each with `ctx` tokens of context."""
        return self.step_time(batch, 0.0, batch, batch * ctx)

    def prefill_time(self, tokens: int, budget: int = 8192, cached: int = 0) -> float:
        """A lone request's prefill of `tokens` new tokens after `cached` cached ones, chunked under a per-step
        token budget (`max_num_batched_tokens`), on an otherwise idle engine: the engine part of its TTFT."""
        if budget <= 0:
            raise UserError(f"token budget must be positive, got {budget}")
        t, done, left = 0.0, cached, max(1, tokens)
        while left > 0:
            c = min(left, budget)
            t += self.step_time(c, c * (done + c / 2), 0, 0)
            done += c
            left -= c
        return t

    @property
    def api_overhead_s(self) -> float:
        """Per-request latency outside engine steps (API server: HTTP, tokenisation, detokenisation). A serving-level
        TTFT is roughly this + the wait for the step in flight + the prefill steps."""
        return API_OVERHEAD_S

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        """Tokens of KV cache that fit: per GPU, memory x utilisation minus its weight shard and a fixed reserve."""
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise UserError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        m, tp = self.model, self.tp
        free = self.gpu.memory_bytes * gpu_memory_utilization - m.weight_bytes / tp - NON_KV_RESERVE_BYTES
        per_token = m.kv_bytes_per_token * max(1, tp // m.n_kv_heads) / tp
        if free < 16 * per_token:
            raise UserError(
                f"model {m.name} ({m.weight_bytes / 1e9:.0f} GB of weights) does not fit on {tp} x {self.gpu.name} "
                f"at gpu_memory_utilization={gpu_memory_utilization}; use more GPUs (tensor_parallel) or a bigger GPU"
            )
        return int(free / per_token)


@functools.lru_cache(maxsize=256, typed=True)
def _create(gpu: str, model: str, tp: int) -> PerfModel:
    g, m = get_gpu(gpu), get_model(model)
    if not isinstance(tp, int) or isinstance(tp, bool) or tp not in TP_DEGREES:
        raise UserError(f"tensor_parallel must be one of {', '.join(map(str, TP_DEGREES))}, got {tp!r}")
    if m.n_heads % tp or (m.n_kv_heads % tp and tp % m.n_kv_heads):
        raise UserError(f"tensor_parallel={tp} does not divide the attention heads of {m.name}")
    return PerfModel(g, m, tp)
