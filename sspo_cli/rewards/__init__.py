"""Rewards of completion text against a gold answer, each in [0, 1], composable with weights.

`config.py` holds one Pydantic model per reward (the recipe's `task.reward` entries), `functions.py`
each reward's function and gold check, `extract.py` the answer extraction, `combine.py` the
weighted mean. Pure text: no I/O, no model; math-verify is imported when a reward first needs it.
"""

from __future__ import annotations

from sspo_cli.rewards.combine import Grade, Scorer, scorer
from sspo_cli.rewards.config import REWARD_CONFIGS, BaseRewardConfig, reward_config_union
from sspo_cli.rewards.functions import REWARD_FUNCTIONS

__all__ = ["REWARD_CONFIGS", "REWARD_FUNCTIONS", "BaseRewardConfig", "Grade", "Scorer", "reward_config_union", "scorer"]
