"""Our M2PO mask (`m2_threshold`; spec: "M2PO mask") against AReaL's own `_apply_m2po_masking`.

AReaL cannot be installed with its dependencies next to verl or our package (areal 1.0.4 pins torch<2.11 and
transformers<=5.3, among some sixty packages), and the module that holds the mask, `areal/trainer/ppo/actor.py`,
imports sixteen third-party packages at import time that neither environment has (colorlog, aiofiles, einops,
etcd3, flask, lark, numba, openai, pybase64, swanlab, tabulate, tenacity, tensorboardX, torch_memory_saver,
trackio, uvloop). The two functions themselves need torch only. So `.ci/verl_tests` installs the areal wheel with
`--no-deps` (it is never imported), and this test compiles those two functions from that installed file, unmodified,
and calls them. Their source is pinned by hash: it is that of AReaL @ 4aef98d8 (the commit the spec cites), which
areal 1.0.4 ships unchanged. Skipped where the areal distribution is not installed.

Which of AReaL's rules the spec mirrors (AReaL: `grpo_loss_fn` -> `_apply_m2po_masking` -> `_get_m2po_loss_mask`):
- m2 = delta^2 with delta = old_logp - prox_logp, AReaL's behaviour minus proximal: our ds with the sign flipped,
  the same square. AReaL does not clamp delta; the spec squares ds clamped at +-C (20), so the two differ only for
  a token with |ds| > 20 (none in these batches).
- Over the counted tokens of the batch handed to it, flattened in row-major order; sorted descending.
- k is the first index whose suffix mean (the mean of the n - k smallest) is strictly below the threshold; if none
  is, k = n - 1 (AReaL: "Mask all but one"). The k largest are dropped.
- The result replaces the loss mask, so dropped tokens leave AReaL's denominator too (spec: "everywhere").
- Not mirrored: AReaL applies it per micro-batch on each rank (the spec per batch handed to the objective); AReaL's
  unstable `torch.sort` leaves ties unspecified (the spec: the earlier flat position sorts first, and is dropped
  first). The ties case below checks only the count.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
from pathlib import Path

import pytest
import torch

from sspo_cli.objectives import build_objective

AREAL_SOURCE = "areal/trainer/ppo/actor.py"
# sha256 (first 16 hex digits) of each function's source at AReaL @ 4aef98d8d818af55b43621aaadba047ae10f4e77.
PINNED = {"_apply_m2po_masking": "7730e9ccf2ec75f4", "_get_m2po_loss_mask": "dd1bf19489d946ea"}
SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def areal_m2po_masking():
    """AReaL's `_apply_m2po_masking(old_logp, prox_logp, loss_mask, m2_threshold)`, from the installed wheel."""
    try:
        distribution = importlib.metadata.distribution("areal")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("AReaL is not installed here: .ci/verl_tests installs its wheel (--no-deps) in .venv-verl")
    path = Path(distribution.locate_file(AREAL_SOURCE))
    source = path.read_text()
    functions = [node for node in ast.parse(source).body if getattr(node, "name", None) in PINNED]
    hashes = {f.name: hashlib.sha256(ast.get_source_segment(source, f).encode()).hexdigest()[:16] for f in functions}
    assert hashes == PINNED, f"areal {distribution.version}'s M2PO functions are not the pinned ones"
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=functions, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["_apply_m2po_masking"]


def random_batch(seed: int, rows: int = 8, tokens: int = 11, empty_rows: int = 1):
    """Proximal and sampler log-probs (float64), ragged completions and an empty one; one token in seven far
    off-policy (|ds| ~ 3, below the +-20 clamp)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (rows, tokens)
    old = -0.05 - 3 * torch.rand(shape, generator=generator, dtype=torch.float64)
    ds = 0.25 * torch.randn(shape, generator=generator, dtype=torch.float64)
    far = torch.rand(shape, generator=generator) < 0.15
    ds = torch.where(far, 3 * torch.randn(shape, generator=generator, dtype=torch.float64), ds)
    lengths = torch.randint(1, tokens + 1, (rows,), generator=generator)
    lengths[0] = tokens
    lengths[-empty_rows:] = 0
    mask = torch.arange(tokens)[None, :] < lengths[:, None]
    return old.where(mask, 0.0), (old - ds).where(mask, 0.0), mask


def our_keep(old_logp: torch.Tensor, behav_logp: torch.Tensor, mask: torch.Tensor, threshold: float):
    """Our kept tokens through the public API: grpo, token_mean, logp = old_logp, A = 1, so the gradient is
    -1/N' on every token M2PO keeps (N' of them) and 0 on the rest. Also returns m2_masked_frac."""
    objective = build_objective({"name": "grpo", "agg": "token_mean", "m2_threshold": threshold})
    logp = old_logp.clone().requires_grad_(True)
    advantages = torch.ones(mask.shape[0], dtype=torch.float64)
    out = objective(logp, old_logp, advantages, mask, behav_logp=behav_logp)
    (gradient,) = torch.autograd.grad(out.loss, logp)
    keep = gradient != 0
    assert torch.equal(gradient[keep], torch.full_like(gradient[keep], -1.0 / int(keep.sum())))
    return keep, out.metrics["correction/m2_masked_frac"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.01, 0.04, 0.3, 1.0, 1e3])
def test_our_m2po_mask_is_areals(areal_m2po_masking, seed: int, threshold: float) -> None:
    old, behav, mask = random_batch(seed)
    theirs = areal_m2po_masking(old_logp=behav, prox_logp=old, loss_mask=mask, m2_threshold=threshold)
    ours, dropped_frac = our_keep(old, behav, mask, threshold)
    assert torch.equal(ours, theirs)
    assert dropped_frac == (int(mask.sum()) - int(theirs.sum())) / int(mask.sum())
    # Nothing is dropped exactly when the mean of all ds^2 is already below the threshold.
    assert torch.equal(theirs, mask) == bool((old - behav)[mask].square().mean() < threshold)


def test_when_no_suffix_mean_is_below_the_threshold_only_the_smallest_is_kept(areal_m2po_masking) -> None:
    old, _, mask = random_batch(0)
    generator = torch.Generator().manual_seed(1)
    ds = 1.0 + 0.01 * torch.rand(mask.shape, generator=generator, dtype=torch.float64)  # every ds^2 > 1 > 0.5
    behav = (old - ds).where(mask, 0.0)
    theirs = areal_m2po_masking(old_logp=behav, prox_logp=old, loss_mask=mask, m2_threshold=0.5)
    ours, _ = our_keep(old, behav, mask, 0.5)
    assert torch.equal(ours, theirs) and int(theirs.sum()) == 1


def test_ties_keep_the_same_number_of_tokens(areal_m2po_masking) -> None:
    """ds in {0.1, 0.5, 1.0} only: which of equal values is kept is AReaL's unstable sort's choice, the count is not."""
    old, _, mask = random_batch(2)
    generator = torch.Generator().manual_seed(2)
    ds = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)[torch.randint(0, 3, mask.shape, generator=generator)]
    behav = (old - ds).where(mask, 0.0)
    for threshold in (0.05, 0.2, 0.5):
        theirs = areal_m2po_masking(old_logp=behav, prox_logp=old, loss_mask=mask, m2_threshold=threshold)
        ours, _ = our_keep(old, behav, mask, threshold)
        assert int(ours.sum()) == int(theirs.sum())
        # Same multiset of kept m2 values.
        m2 = (old - behav).square()
        assert torch.equal(m2[ours].sort().values, m2[theirs].sort().values)
