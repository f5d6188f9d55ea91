"""The verl plug-in: registers ``loss_mode=sspo``, ``gmpo``, ``vespo`` and ``luspo`` with verl's policy-loss registry.

verl imports this module itself: through the ``verl.plugins`` entry point (on ``import verl``, in the driver and
in every Ray worker), through ``VERL_USE_EXTERNAL_MODULES=sspo_cli.integrations.verl.plugin``, or when Hydra builds
``SspoPolicyLossConfig`` (the ``_target_`` of ``actor_rollout_ref.actor.policy_loss``). verl logs a plug-in that
fails to import at DEBUG level only, so a failure here is logged at WARNING before it propagates;
``python -m sspo_cli.integrations.verl.check`` says whether the registration took place.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

try:
    from dataclasses import dataclass
    from typing import Optional

    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, register_policy_loss
    from verl.workers.config import PolicyLossConfig

    from sspo_cli.integrations.verl.loss import (
        POLICY_LOSS_KEYS,
        VERL_LOSS_MODES,
        check_policy_loss_keys,
        verl_policy_loss,
    )
except Exception as error:  # verl would swallow it: say it where a user looks
    logger.warning(
        "sspo-cli's verl plug-in failed to load, so loss_mode=sspo/gmpo/vespo/luspo are not registered: %s: %s "
        "(python -m sspo_cli.integrations.verl.check shows the traceback)",
        type(error).__name__,
        error,
    )
    raise


@dataclass
class SspoPolicyLossConfig(PolicyLossConfig):
    """verl's policy_loss config plus our keys that verl's ActorConfig lacks (None: the objective's default).

    Select it with ``actor_rollout_ref.actor.policy_loss._target_=sspo_cli.integrations.verl.plugin.SspoPolicyLossConfig``
    and set a key with ``+actor_rollout_ref.actor.policy_loss.gate=arctan``; it is checked when verl builds the config.
    """

    loss_mode: str = "sspo"
    gate: Optional[str] = None
    log_ratio_clamp: Optional[float] = None
    saturation_threshold: Optional[float] = None
    k_pos: Optional[float] = None
    lambda_pos: Optional[float] = None
    k_neg: Optional[float] = None
    lambda_neg: Optional[float] = None

    def __post_init__(self) -> None:
        check_policy_loss_keys(self.loss_mode, {key: getattr(self, key) for key in POLICY_LOSS_KEYS})


for _loss_mode in VERL_LOSS_MODES:
    if (
        _loss_mode in POLICY_LOSS_REGISTRY
        and POLICY_LOSS_REGISTRY[_loss_mode].__module__ != verl_policy_loss.__module__
    ):
        logger.warning("sspo-cli's verl plug-in replaces the loss_mode=%s that was registered before it", _loss_mode)
    register_policy_loss(_loss_mode)(verl_policy_loss(_loss_mode))
