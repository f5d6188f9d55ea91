"""The recipe's `trl:` section: options only the TRL engine reads (pydantic only, no torch, no TRL).

Kept apart from `trl_mapping` so that `sspo_cli.recipe` can embed it without an import cycle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrlOptions(BaseModel):
    """Options only the TRL engine reads: the recipe's `trl:` section.

    Defaults keep the maths of the native engine; vLLM and micro-batching are opt-in.
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
