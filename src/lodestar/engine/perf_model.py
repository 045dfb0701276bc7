"""Per-step latency model of a vLLM instance for one (GPU, model, tensor-parallel degree).

Consumes: the aggregate shape of one engine step. Produces: its duration in seconds.

    step_time(tokens, prefill_attn, decode_seqs, decode_ctx)

- `tokens`: all tokens processed in the step (prefill chunk tokens + one per decoding sequence): drives the linear
  layers, which are compute-bound for many tokens and weight-read (memory) bound for few.
- `prefill_attn`: sum over prefill chunks of c * (p + c / 2) for a chunk of c new tokens after p tokens of context
  (query-key pairs, causal): drives prefill attention FLOPs.
- `decode_seqs`, `decode_ctx`: number of decoding sequences and the sum of their context lengths: drives the KV read
  of decode attention (memory-bound).

The model must be cheap: the simulator calls it once per engine step.
"""

from __future__ import annotations

from dataclasses import dataclass

from lodestar.engine.hardware import GpuSpec, ModelSpec, get_gpu, get_model
from lodestar.errors import UserError

# Efficiencies (fraction of spec-sheet peak actually achieved); fitted constants live in docs/calibration.md.
LINEAR_EFF = 0.62
ATTN_EFF = 0.45
MEM_EFF = 0.80
STEP_OVERHEAD_S = 0.0035  # scheduler + sampling + launch, per step
TP_COMM_EFF = 0.85  # fraction of ideal speed-up kept per doubling of TP


@dataclass(frozen=True, slots=True)
class PerfModel:
    gpu: GpuSpec
    model: ModelSpec
    tp: int = 1

    @classmethod
    def create(cls, gpu: str, model: str, tp: int = 1) -> PerfModel:
        if tp not in (1, 2, 4, 8):
            raise UserError(f"tensor_parallel must be 1, 2, 4 or 8, got {tp}")
        return cls(get_gpu(gpu), get_model(model), tp)

    def _speedup(self) -> float:
        s, t = 1.0, self.tp
        while t > 1:
            s *= 2 * TP_COMM_EFF
            t //= 2
        return s

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        """Tokens of KV cache that fit: GPU memory x utilisation minus weights (and ~1 GB activations) per GPU."""
        per_gpu = self.gpu.memory_gb * 1e9 * gpu_memory_utilization
        free = self.tp * per_gpu - self.model.weight_bytes - self.tp * 1.0e9
        if free <= 0:
            raise UserError(
                f"model {self.model.name} does not fit on {self.tp} x {self.gpu.name} "
                f"at gpu_memory_utilization={gpu_memory_utilization}"
            )
        return int(free / self.model.kv_bytes_per_token)

    def step_time(self, tokens: int, prefill_attn: float, decode_seqs: int, decode_ctx: int) -> float:
        g, m = self.gpu, self.model
        flops = g.bf16_tflops * 1e12
        bw = g.mem_bw_gbs * 1e9 * MEM_EFF
        t_lin = max(tokens * m.linear_flops_per_token / (flops * LINEAR_EFF), m.weight_bytes / bw)
        t_attn_p = 4.0 * m.n_layers * m.d_model * prefill_attn / (flops * ATTN_EFF)
        t_attn_d = decode_ctx * m.kv_bytes_per_token / bw
        return (t_lin + t_attn_p + t_attn_d) / self._speedup() + STEP_OVERHEAD_S
