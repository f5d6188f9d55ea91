"""The native engine's tuning rules: what the `auto` settings of `performance:` choose, by what the machine has.

Each rule reads the device (CPU instruction sets, the kernels torch runs, CUDA), never a machine's name; the
measurements behind them, per CPU, are in docs/performance.md. None of them changes the maths: they choose
precision, attention kernels and micro-batch shapes, whose results agree up to float rounding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from sspo_cli.recipe import PerformanceConfig


class PaddedRows(Protocol):
    """What the length buckets read of an update's rows (the step's `UpdateData` is one)."""

    input_ids: torch.Tensor  # [rows, prompt + completion]
    mask: torch.Tensor  # [rows, completion_len]: which completion tokens count
    completion_len: int


def sampler_precision(device: torch.device, dtype: str):
    """The sampler's dtype (`rollout.sampler_dtype`): 'same' changes nothing, 'bfloat16' autocasts the model to
    bf16 (as a bf16 vLLM runs it), 'float32' keeps it in float32; the log-softmax stays float32 in all."""
    import torch

    if dtype == "same":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def autocast(device: torch.device, setting: bool | str):
    """bfloat16 autocast of the model in the updates; the log-probs and the loss stay float32.

    'auto' turns it on where bfloat16 matrix products run natively (`bf16_autocast_pays`).
    """
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16_updates(device, setting))


def bf16_updates(device: torch.device, setting: bool | str) -> bool:
    """Whether the updates run under bf16 autocast (`performance.autocast_bf16` resolved for `device`)."""
    return native_bf16(device) if setting == "auto" else bool(setting)


def native_bf16(device: torch.device) -> bool:
    """`bf16_autocast_pays` for this machine's `device`."""
    import torch

    if device.type == "cuda":
        return bf16_autocast_pays("cuda", cuda_bf16=torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    probes = {name: getattr(torch.cpu, f"_is_{name}_supported", lambda: False) for name in ("avx512_bf16", "amx_tile")}
    return bf16_autocast_pays(  # private probes
        "cpu",
        avx512_bf16=probes["avx512_bf16"](),
        amx=probes["amx_tile"](),
        kernels=torch.backends.cpu.get_cpu_capability(),
    )


# The environment that caps torch's CPU kernels (ATen, MKL, oneDNN) at an instruction set. On an AVX-512 CPU the AVX2
# caps reproduce an AVX2-only CPU's rounding exactly (docs/results.md, the quickstart grid), and `kernels` below.
KERNEL_CAPS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def kernel_environment(kernels: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` for a process whose CPU kernels run as `kernels` (a key of KERNEL_CAPS) says; any cap `environ`
    held is dropped first, so 'native' is the machine's whole instruction set."""
    capped = {name for caps in KERNEL_CAPS.values() for name in caps}
    return {k: v for k, v in environ.items() if k not in capped} | KERNEL_CAPS[kernels]


def bf16_autocast_pays(
    device_type: str,
    *,
    cuda_bf16: bool = False,
    avx512_bf16: bool = False,
    amx: bool = False,
    kernels: str = "AVX512",
) -> bool:
    """The rule of `autocast_bf16: auto`, from what the device has.

    - CUDA with bf16: on.
    - CPU with AVX-512-BF16: on. Its bf16 dot products run natively, and the update's matrix products are
      faster than in float32 (docs/performance.md, "The `auto` rules", has the figures per CPU).
    - CPU with AMX (which also has AVX-512-BF16): on. At the tiny default model it neither gains nor loses;
      AMX's bf16 tiles are the fastest path for larger matrices.
    - Off where torch's CPU kernels run below AVX-512 (`kernels`, the ATen capability: `ATEN_CPU_CAPABILITY=avx2`
      caps it), even on a CPU that has the instructions: the kernels would not use them.
    - Elsewhere off: bf16 would be emulated, slower than float32.
    """
    if device_type == "cuda":
        return cuda_bf16
    return device_type == "cpu" and (avx512_bf16 or amx) and kernels.upper().startswith("AVX512")


def prepared_model(model, perf: PerformanceConfig):
    """The policy itself, set up in place on first use: its decoder compiled (weights stay shared)
    with `perf.compile`, gradient checkpointing on (it acts in train mode only) with `perf.gradient_checkpointing`."""
    decoder = getattr(model, "base_model", model)
    if perf.compile and getattr(decoder, "_compiled_call_impl", None) is None:
        decoder.compile(dynamic=True)
    if perf.gradient_checkpointing and not model.is_activation_checkpointing:
        # transformers' gradient checkpointing, under its v5 name (`gradient_checkpointing_enable` is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


# Per-micro-batch cost of an update (Python and operator dispatch of one forward and backward), per decoder
# layer, and the CPU's float32 throughput on the update's matrix products: their ratio prices one more
# micro-batch in tokens (`bucket_count`). Rough figures of a small CPU server; the choice they drive is not
# sensitive to a factor of 2 in either (docs/performance.md, "The `auto` rules").
MICRO_BATCH_OVERHEAD_S_PER_LAYER = 1e-3
CPU_UPDATE_FLOPS = 1e11


def bucket_count(perf: PerformanceConfig, device: torch.device) -> int | None:
    """`performance.length_buckets` resolved: a number of buckets, or None where 'auto' chooses by cost
    (`length_bucket_parts`). 'auto' does not split on accelerators (not measured there)."""
    if perf.length_buckets != "auto":
        return int(perf.length_buckets)
    return None if device.type == "cpu" else 1


def micro_batch_price(model) -> float:
    """One more micro-batch's fixed cost, in tokens of forward + backward (6 FLOPs per parameter per token)."""
    layers = getattr(model.config, "num_hidden_layers", 1)
    params = sum(p.numel() for p in model.parameters())
    return layers * MICRO_BATCH_OVERHEAD_S_PER_LAYER * CPU_UPDATE_FLOPS / (6 * max(params, 1))


MAX_LENGTH_BUCKETS = 8


def length_bucket_parts(
    rows: torch.Tensor, data: PaddedRows, prompt_index: torch.Tensor | None, count: int | None, price: float = 0.0
) -> list[torch.Tensor]:
    """`rows` sorted by completion length (rows of one prompt together among equals) in `count` slices of equal
    size; `count` None: the number (1 to MAX_LENGTH_BUCKETS) that costs fewest tokens of forward + backward,
    one more micro-batch priced at `price` tokens. Each slice is later trimmed to its own longest completion."""
    import torch

    if count == 1 or rows.shape[0] < 2:
        return [rows]
    lengths = (data.mask[rows] != 0).sum(1)
    key = lengths * (int(prompt_index.max()) + 1) + prompt_index[rows] if prompt_index is not None else lengths
    order = torch.argsort(key, stable=True)
    by_length, lengths = rows[order], lengths[order]
    if count is not None:
        return list(torch.tensor_split(by_length, min(count, rows.shape[0])))
    prefix = data.input_ids.shape[1] - data.completion_len - 1  # the prompt but its last token
    widths = [max(n, 1) + 1 for n in lengths.tolist()]  # + the last prompt token
    prompts = by_length.tolist() if prompt_index is None else prompt_index[by_length].tolist()
    best, best_cost = 1, math.inf
    for k in range(1, min(MAX_LENGTH_BUCKETS, len(widths)) + 1):
        cost = k * price
        for start, end in slice_bounds(len(widths), k):
            cost += (end - start) * widths[end - 1] + len(set(prompts[start:end])) * prefix
        if cost < best_cost:
            best, best_cost = k, cost
    return [rows] if best == 1 else list(torch.tensor_split(by_length, best))  # one bucket: the rows' own order


# Eager attention keeps every layer's rows x heads x L x L attention weights for the backward pass; above this
# size per layer (float32) 'auto' leaves long sequences to SDPA, whose kernels never build them.
EAGER_UPDATE_ATTENTION_MAX_MB = 64.0


def update_attention_for(perf: PerformanceConfig, device: torch.device, model, rows: int, length: int) -> str:
    """`performance.update_attention` resolved for a micro-batch of `rows` sequences of `length` tokens.

    'auto': eager on CPU while one layer's attention weights fit in EAGER_UPDATE_ATTENTION_MAX_MB (ATen's CPU
    flash kernel is slower at these lengths: 1.1-1.2x on both benchmark workloads, docs/performance.md), the
    loaded kernel elsewhere."""
    if perf.update_attention != "auto":
        return perf.update_attention
    heads = getattr(getattr(model, "config", None), "num_attention_heads", 1) or 1
    weights_mb = rows * heads * length * length * 4 / 2**20
    return "eager" if device.type == "cpu" and weights_mb <= EAGER_UPDATE_ATTENTION_MAX_MB else "same"


@contextlib.contextmanager
def attention_kernel(model, name: str):
    """The model's attention kernel set to `name` ('sdpa', 'eager'; 'same': as loaded) inside the block.

    transformers' attention layers and mask builders read `config._attn_implementation` at every call."""
    config = getattr(model, "config", None)
    loaded = getattr(config, "_attn_implementation", None)
    if name == "same" or loaded is None or loaded == name or loaded not in ("sdpa", "eager"):
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = loaded


def slice_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """The (start, end) of `torch.tensor_split`'s k slices of n items: the first n % k are one longer."""
    size, longer = divmod(n, k)
    bounds, start = [], 0
    for i in range(k):
        end = start + size + (i < longer)
        bounds.append((start, end))
        start = end
    return bounds
