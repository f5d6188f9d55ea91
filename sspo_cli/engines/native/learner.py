"""What the native engine trains and steps, held together: no torch at import."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sspo_cli.engines.native.lag import LaggedWeights

if TYPE_CHECKING:
    import torch

    from sspo_cli.run.state import Policy


@dataclass
class Learner:
    """The policy, its optimiser and learning-rate schedule, and the older weights the sampler uses
    under a policy lag (`rollout.policy_lag`; empty otherwise). A checkpoint saves all four."""

    policy: Policy
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lagged: LaggedWeights = field(default_factory=LaggedWeights)
