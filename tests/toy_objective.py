"""A sixth objective, added the way an objective is added: a config model and its policy weight,
both registered through `sspo_cli.objectives` and nothing else. Import it before `sspo_cli.recipe`.

`toy` is the importance-weighted policy gradient without any clip: w[b,t] = r[b,t].
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sspo_cli.objectives import BaseObjectiveConfig, register_objective
from sspo_cli.objectives.batch import TokenBatch
from sspo_cli.objectives.formulas import PolicyWeight, policy_weight


@register_objective
class ToyConfig(BaseObjectiveConfig):
    """Toy: the token importance ratio, unclipped."""

    name: Literal["toy"] = Field(default="toy", description="Objective name.")


@policy_weight(ToyConfig)
def toy(config: ToyConfig, batch: TokenBatch) -> PolicyWeight:
    return PolicyWeight(batch.ratio, per_token=True)
