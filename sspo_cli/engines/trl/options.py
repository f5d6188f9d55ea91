"""The recipe's `trl:` section: options only the TRL engine reads (pydantic only, no torch, no TRL).

Kept apart from `trl_mapping` so that `sspo_cli.recipe` can embed it without an import cycle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrlOptions(BaseModel):
    """Options only the TRL engine reads: the recipe's `trl:` section.

    Defaults keep the maths of the native engine; vLLM, its importance weight and micro-batching are opt-in.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    use_vllm: bool = Field(
        False, description="Sample completions with vLLM (GPU only; `pip install vllm`). Off: transformers' generate."
    )
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate",
        description="'colocate': vLLM shares each training GPU; 'server': a separate `trl vllm-serve` process.",
    )
    vllm_server_base_url: str | None = Field(
        None, description="URL of the `trl vllm-serve` server in 'server' mode (default http://0.0.0.0:8000)."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="Share of each GPU's memory vLLM may take in 'colocate' mode."
    )
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="Tensor-parallel size of the colocated vLLM engine.")
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimiser update on each process (the update's mini-batch is unchanged).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory (TRL's own default is on)."
    )
    vllm_importance_sampling_correction: bool = Field(
        False,
        description="Keep TRL's importance weight of the vLLM/trainer mismatch (exp(trainer - vLLM log-prob), truncated "
        "or masked, see vllm_importance_sampling_mode) on each token's gradient of the objective. Needs use_vllm and "
        "rollout.behaviour_logprobs: learner. Off: the objective alone (TRL's own default is on). See docs/engines.md.",
    )
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = (
        Field(
            "sequence_mask",
            description="TRL's weight per token or per sequence (the exp of the summed log-ratio), clipped into "
            "[clip_min, clip_max] ('truncate') or zeroed outside it ('mask'). TRL's default.",
        )
    )
    vllm_importance_sampling_clip_max: float = Field(
        3.0, gt=0, description="Upper bound of TRL's importance weight (TRL's default 3)."
    )
    vllm_importance_sampling_clip_min: float | None = Field(
        None, ge=0, description="Lower bound of TRL's importance weight (none by default)."
    )

    @model_validator(mode="after")
    def _clip_range(self) -> TrlOptions:
        low, high = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if low is not None and low >= high:
            raise ValueError(
                f"vllm_importance_sampling_clip_min {low} must be below vllm_importance_sampling_clip_max {high}"
            )
        return self
