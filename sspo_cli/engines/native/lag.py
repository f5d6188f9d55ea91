"""The weights that sample a step when the learner runs ahead of its sampler, as in asynchronous RL.

    rollout.policy_lag k:     step n is sampled by the weights after step n-1-k (before then: the initial ones)
    rollout.sync_interval k:  the sampler's weights are refreshed at the start of steps 1, k+1, 2k+1, ...

A lag is counted in RL steps (one rollout and its `updates_per_rollout` optimiser updates). The
older weights are copies of the trained tensors (the adapters only under LoRA, whose base never
changes), copied into the policy for the sampling and its behaviour log-probs, then copied back:
the model object, its compiled code and the optimiser never see other tensors. The copies are
part of a checkpoint, so a resumed run samples exactly what an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sspo_cli.recipe import RolloutConfig


@dataclass(frozen=True)
class LagSchedule:
    """Which learner step's weights sample each RL step."""

    policy_lag: int = 0
    sync_interval: int = 1

    @classmethod
    def of(cls, rollout: RolloutConfig) -> LagSchedule:
        return cls(rollout.policy_lag, rollout.sync_interval)

    def source(self, step: int) -> int:
        """The learner step whose weights sample `step` (steps count from 1; 0: the initial weights)."""
        current = step - 1
        if self.policy_lag:
            return max(0, current - self.policy_lag)
        return current - current % self.sync_interval

    def lag(self, step: int) -> int:
        """The spec's `rollout/policy_lag` of `step`: learner steps between its sampling weights and the current ones."""
        return step - 1 - self.source(step)

    def keeps(self, step: int) -> bool:
        """Whether the weights at the start of `step` sample a later step too (and so need a copy)."""
        if self.policy_lag:
            return True
        return self.sync_interval > 1 and (step - 1) % self.sync_interval == 0


@dataclass
class LaggedWeights:
    """Copies of the trained weights by the learner step they are from; empty without a lag."""

    copies: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @contextmanager
    def sampling(self, model, schedule: LagSchedule, step: int) -> Iterator[None]:
        """Within the block, `model` holds the weights that sample `step`; then its own again.

        Called once per step, in order: it first keeps a copy of the current weights if a later
        step samples with them, and afterwards drops the copies no later step needs.
        """
        import torch

        if schedule.keeps(step):
            self.copies[step - 1] = {name: p.detach().clone() for name, p in trained(model)}
        source = schedule.source(step)
        if source == step - 1:
            yield
        else:
            weights = self.copies[source]
            current = {name: p.detach().clone() for name, p in trained(model)}
            with torch.no_grad():
                for name, p in trained(model):
                    p.copy_(weights[name])
            try:
                yield
            finally:
                with torch.no_grad():
                    for name, p in trained(model):
                        p.copy_(current[name])
        oldest = schedule.source(step + 1)
        self.copies = {kept: weights for kept, weights in self.copies.items() if kept >= oldest}

    def flat(self) -> dict[str, torch.Tensor]:
        """The copies as one name -> tensor mapping for a safetensors file: `<step>/<parameter name>`."""
        return {f"{kept}/{name}": tensor for kept, weights in self.copies.items() for name, tensor in weights.items()}

    @classmethod
    def from_flat(cls, tensors: dict[str, torch.Tensor]) -> LaggedWeights:
        """The inverse of `flat`; ValueError for a name that is not `<step>/<parameter name>`."""
        copies: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            kept, _, name = key.partition("/")
            if not kept.isdigit() or not name:
                raise ValueError(f"{key!r} is not '<step>/<parameter name>'")
            copies.setdefault(int(kept), {})[name] = tensor
        return cls(copies)

    def fit_problem(self, model) -> str | None:
        """Why these copies cannot be the model's trained weights, or None."""
        shapes = {name: p.shape for name, p in trained(model)}
        for kept, weights in self.copies.items():
            if weights.keys() != shapes.keys() or any(weights[k].shape != shapes[k] for k in shapes):
                return f"the copy of step {kept} does not match the trained weights"
        return None


def trained(model) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """The weights the optimiser changes (tied ones once): every weight, or only the adapters under LoRA."""
    return ((name, p) for name, p in model.named_parameters() if p.requires_grad)
