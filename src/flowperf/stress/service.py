"""The linear service-time model shared by the simulator, the calibration fit and the flags.

Two costs dominate LLM serving: a prefill pass whose time grows with the prompt tokens it processes, and
decode iterations whose time grows with the number of sequences in the batch and the context they read.
Keeping the model (piecewise) linear makes it fittable by least squares from a handful of measured steps
and cheap to evaluate in the kernel.

The engine model (`scheduler vllm`) runs iterations that mix prefill chunks and decodes, as vLLM V1 does;
one iteration costs `d * (decode sequences) + e * (their context tokens)` plus `a + b * (prefill tokens)`
when it prefills any, else plus `c`. The batching schedulers read the same a, b, c, d in two phases.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServiceModel(BaseModel):
    """Prefill costs `a + b * (sum of prompt tokens)`; one decode iteration costs `c + d * (batch size)`.

    All four are seconds (per token, per request). The defaults are illustrative, of the order of a 7-8B
    model on one data-centre GPU; fit real ones with `bench stress --calibrate RUN_DIR`.
    """

    model_config = ConfigDict(frozen=True)

    prefill_base_s: float = Field(0.020, ge=0, description="a: fixed cost of a prefill pass")
    prefill_per_token_s: float = Field(1.0e-4, ge=0, description="b: cost per prompt token prefilled")
    decode_base_s: float = Field(0.012, ge=0, description="c: fixed cost of one decode iteration")
    decode_per_request_s: float = Field(4.0e-4, ge=0, description="d: extra cost per sequence in the batch")
    decode_per_context_token_s: float = Field(
        0.0, ge=0, description="e: cost per context token a decoding sequence reads (engine model only)"
    )
    prefill_attention_s: float = Field(
        0.0,
        ge=0,
        description="f: cost per (query, key) pair a prefill chunk attends to: its tokens times the context "
        "before it, plus its own causal half (engine model only)",
    )
