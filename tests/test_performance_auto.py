"""The `auto` speed settings decide by what the machine has (capability flags given, nothing timed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.engines.native.tuning import bf16_autocast_pays, kernel_environment, native_bf16  # noqa: E402


@pytest.mark.parametrize(
    ("device", "flags", "expected"),
    [
        ("cpu", {}, False),  # no native bf16: emulated, slower than float32
        ("cpu", {"avx512_bf16": True}, True),  # AMD Zen 4 (this project's EPYC), Intel Cooper Lake
        ("cpu", {"amx": True}, True),
        ("cpu", {"avx512_bf16": True, "amx": True}, True),  # Intel Sapphire Rapids and later (the Xeon)
        ("cuda", {"cuda_bf16": True}, True),
        ("cuda", {}, False),
        ("mps", {"avx512_bf16": True, "amx": True}, False),  # CPU flags say nothing about another device
        ("cpu", {"avx512_bf16": True, "kernels": "AVX2"}, False),  # ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU
        ("cpu", {"avx512_bf16": True, "amx": True, "kernels": "DEFAULT"}, False),
        ("cpu", {"amx": True, "kernels": "AVX512"}, True),
    ],
)
def test_bf16_autocast_auto_rule(device, flags, expected):
    assert bf16_autocast_pays(device, **flags) is expected


def test_this_machine_follows_the_rule():
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    kernels = torch.backends.cpu.get_cpu_capability()
    assert native_bf16(torch.device("cpu")) == bf16_autocast_pays(
        "cpu", avx512_bf16=probe(), amx=amx(), kernels=kernels
    )
    assert native_bf16(torch.device("meta")) is False


def test_capping_the_kernels_at_avx2_turns_bf16_auto_off():
    """The caps that reproduce an AVX2-only CPU's rounding on an AVX-512 one also reproduce its `auto` choice."""
    code = (
        "import torch; from sspo_cli.engines.native.tuning import native_bf16; print(native_bf16(torch.device('cpu')))"
    )
    env = kernel_environment("avx2", os.environ)
    capped = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert capped.stdout.strip() == "False"


def _model_with_heads(heads: int):
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(num_attention_heads=heads))


@pytest.mark.parametrize(
    ("device", "setting", "rows", "length", "expected"),
    [
        ("cpu", "auto", 128, 16, "eager"),  # the standard benchmark workload
        ("cpu", "auto", 64, 160, "eager"),  # the long one: 64 x 6 x 160 x 160 x 4 bytes = 37.5 MiB per layer
        ("cpu", "auto", 64, 1024, "same"),  # 1.5 GiB per layer: SDPA's kernels never build the weights
        ("cpu", "auto", 1, 2048, "eager"),  # one row, one head: 16 MiB
        ("cuda", "auto", 128, 16, "same"),  # accelerators keep the loaded kernel
        ("cpu", "same", 128, 16, "same"),
        ("cpu", "sdpa", 128, 16, "sdpa"),
        ("cuda", "eager", 64, 1024, "eager"),  # an explicit choice is kept
    ],
)
def test_update_attention_auto_rule(device, setting, rows, length, expected):
    from sspo_cli.engines.native.tuning import update_attention_for
    from sspo_cli.recipe import PerformanceConfig

    heads = 1 if rows == 1 else 6
    perf = PerformanceConfig(update_attention=setting)
    assert update_attention_for(perf, torch.device(device), _model_with_heads(heads), rows, length) == expected


def test_update_attention_auto_is_the_default():
    from sspo_cli.recipe import PerformanceConfig

    assert PerformanceConfig().update_attention == "auto"
