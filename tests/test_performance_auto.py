"""The `auto` speed settings decide by what the machine has (capability flags given, nothing timed)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.algorithm import bf16_autocast_pays, native_bf16  # noqa: E402


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
    ],
)
def test_bf16_autocast_auto_rule(device, flags, expected):
    assert bf16_autocast_pays(device, **flags) is expected


def test_this_machine_follows_the_rule():
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16(torch.device("cpu")) == bf16_autocast_pays("cpu", avx512_bf16=probe(), amx=amx())
    assert native_bf16(torch.device("meta")) is False
