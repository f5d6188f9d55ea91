"""``build_objective``: the one API the trainer, the tests and outside checks call.

objective = build_objective({"name": "sspo"})
out = objective(logp, old_logp, advantages, mask, ref_logp=None, behav_logp=None, staleness=None)
out.loss.backward(); log(out.metrics)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch
from pydantic import BaseModel
from torch import Tensor

from sspo_cli.objectives.batch import TokenBatch, clamped_log_ratio
from sspo_cli.objectives.config import BaseObjectiveConfig, parse_objective_config
from sspo_cli.objectives.correction import (
    SamplerRatios,
    correction_metrics,
    correction_weight,
    m2po_keep,
    staleness_metrics,
)
from sspo_cli.objectives.diagnostics import summarize
from sspo_cli.objectives.formulas import OBJECTIVES, PolicyWeight, k3


@dataclass(frozen=True)
class ObjectiveOutput:
    loss: Tensor
    """0-dim, float32 at least; minimising it maximises the objective."""
    metrics: dict[str, float]
    """Every key of ``METRIC_KEYS`` (NaN where the quantity has no data, e.g. no A != 0), then those of
    ``CORRECTION_METRIC_KEYS`` when ``behav_logp`` was passed and ``STALENESS_METRIC_KEYS`` when ``staleness`` was."""


class Aggregation(Protocol):
    def normaliser(self, mask: Tensor) -> Tensor:
        """What the loss divides its sum of per-completion terms by (0-dim; may be 0)."""
        ...

    def reduce_tokens(self, batch: TokenBatch, terms: Tensor) -> Tensor: ...
    def reduce_sequences(self, batch: TokenBatch, terms: Tensor) -> Tensor: ...
    def vanilla_gradient_scale(self, batch: TokenBatch) -> Tensor:
        """|d loss / d logp[b,t]| / |A_b| of the vanilla policy gradient; broadcasts to [B, T]."""
        ...


def inverse_count(count: Tensor, batch: TokenBatch) -> Tensor:
    """1 / count in the batch's float dtype, an empty batch's count taken as 1."""
    return 1.0 / count.to(batch.log_ratio.dtype).clamp(min=1)


class SequenceMeanTokenMean:
    """(1/B') * sum_b mean_t(.): every non-empty completion weighs the same (the default)."""

    def normaliser(self, mask: Tensor) -> Tensor:
        """B', the non-empty completions"""
        return mask.any(-1).sum()

    def reduce_tokens(self, batch: TokenBatch, terms: Tensor) -> Tensor:
        return batch.sequence_mean(batch.mean_t(terms))

    def reduce_sequences(self, batch: TokenBatch, terms: Tensor) -> Tensor:
        return batch.sequence_mean(terms)

    def vanilla_gradient_scale(self, batch: TokenBatch) -> Tensor:
        """1 / (B' * L_b)"""
        completions = self.normaliser(batch.mask).to(batch.log_ratio.dtype).clamp(min=1)
        return 1.0 / (completions * batch.lengths.clamp(min=1))[:, None]


class TokenMean:
    """sum_{b,t} mask * . / sum_{b,t} mask: every token weighs the same (DAPO)."""

    def normaliser(self, mask: Tensor) -> Tensor:
        """N, the counted tokens"""
        return mask.sum()

    def reduce_tokens(self, batch: TokenBatch, terms: Tensor) -> Tensor:
        return batch.token_mean(terms)

    def reduce_sequences(self, batch: TokenBatch, terms: Tensor) -> Tensor:
        raise ValueError("agg='token_mean' needs an objective with token-level weights")

    def vanilla_gradient_scale(self, batch: TokenBatch) -> Tensor:
        """1 / N with N = sum mask"""
        return inverse_count(self.normaliser(batch.mask), batch)


class SequenceMeanTokenSum(SequenceMeanTokenMean):
    """(1/B') * sum_b sum_t(.): a completion weighs by its length (luspo). Its normaliser is B', as above."""

    def reduce_tokens(self, batch: TokenBatch, terms: Tensor) -> Tensor:
        return batch.sequence_mean(batch.sum_t(terms))

    def reduce_sequences(self, batch: TokenBatch, terms: Tensor) -> Tensor:
        return batch.sequence_mean(batch.lengths * terms)

    def vanilla_gradient_scale(self, batch: TokenBatch) -> Tensor:
        """1 / B'"""
        return inverse_count(self.normaliser(batch.mask), batch)


AGGREGATIONS: dict[str, Aggregation] = {
    "seq_mean_token_mean": SequenceMeanTokenMean(),
    "token_mean": TokenMean(),
    "seq_mean_token_sum": SequenceMeanTokenSum(),
}


@dataclass(frozen=True)
class _Inputs:
    """Checked inputs, cast to the compute dtype; masks are bool.

    ``mask`` is what the objective counts: the mask as given, times M2PO's ``keep`` when
    ``m2_threshold`` is set. The sampler correction is computed from ``sampled_mask``, the mask as given.
    """

    logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    mask: Tensor
    ref_logp: Tensor | None
    sampled_mask: Tensor
    sampler: SamplerRatios | None = None
    """ds and rho, when behav_logp was passed."""
    correction: Tensor | None = None
    """c[b,t], when a correction other than 'none' is configured."""
    keep: Tensor | None = None
    """M2PO's kept tokens, when m2_threshold is set."""
    staleness: Tensor | None = None
    """[B, T], when staleness was passed."""

    def autograd_ready(self) -> _Inputs:
        """Copies of inference-mode tensors (e.g. old_logp from a rollout under
        ``torch.inference_mode``), which autograd refuses to save for backward."""

        def ready(t: Any) -> Any:
            return t.clone() if isinstance(t, Tensor) and t.is_inference() else t

        return replace(self, **{f.name: ready(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class _LossTerms:
    loss: Tensor
    batch: TokenBatch
    weight: PolicyWeight


class Objective:
    """A policy objective: ``objective(logp, old_logp, advantages, mask, *, ref_logp=None)``.

    Stateless: the same inputs give the same outputs. Build it with ``build_objective``.
    """

    def __init__(self, config: BaseObjectiveConfig) -> None:
        self.config = config
        self._weight_function = OBJECTIVES[config.name]
        self._aggregation = AGGREGATIONS[config.aggregation]

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"Objective({self.config!r})"

    @property
    def aggregation(self) -> str:
        """'seq_mean_token_mean', 'token_mean' or 'seq_mean_token_sum'."""
        return self.config.aggregation

    def __call__(
        self,
        logp: Tensor,
        old_logp: Tensor,
        advantages: Tensor,
        mask: Tensor,
        *,
        ref_logp: Tensor | None = None,
        behav_logp: Tensor | None = None,
        staleness: Tensor | None = None,
    ) -> ObjectiveOutput:
        inputs = self._check_inputs(logp, old_logp, advantages, mask, ref_logp, behav_logp, staleness)
        loss = self._loss_terms(inputs.logp, inputs).loss
        return ObjectiveOutput(loss=loss, metrics=self._metrics(inputs))

    def loss(
        self,
        logp: Tensor,
        old_logp: Tensor,
        advantages: Tensor,
        mask: Tensor,
        *,
        ref_logp: Tensor | None = None,
        behav_logp: Tensor | None = None,
    ) -> Tensor:
        """``out.loss`` alone: no diagnostics (they cost a second autograd pass)."""
        inputs = self._check_inputs(logp, old_logp, advantages, mask, ref_logp, behav_logp, None)
        return self._loss_terms(inputs.logp, inputs).loss

    def metrics(
        self,
        logp: Tensor,
        old_logp: Tensor,
        advantages: Tensor,
        mask: Tensor,
        *,
        ref_logp: Tensor | None = None,
        behav_logp: Tensor | None = None,
        staleness: Tensor | None = None,
    ) -> dict[str, float]:
        """``out.metrics`` alone."""
        return self._metrics(self._check_inputs(logp, old_logp, advantages, mask, ref_logp, behav_logp, staleness))

    def normaliser(self, mask: Tensor) -> Tensor:
        """What the loss divides by: B' (non-empty completions), or N (counted tokens) for token_mean.

        The loss, KL term included, is a sum of per-completion terms over this number, so for any
        split of a batch into row sets k: loss(all) = sum_k loss(k) * normaliser(k) / normaliser(all),
        gradients included (a set with normaliser 0 has loss 0). Micro-batched updates rely on it.
        Not with ``m2_threshold``: M2PO's mask is computed over the batch handed to the objective, so
        a split batch keeps other tokens (and this mask is the one before M2PO).
        """
        return self._aggregation.normaliser(mask != 0)

    def _loss_terms(self, logp: Tensor, inputs: _Inputs, corrected: bool = True) -> _LossTerms:
        """loss = -(1/B') * sum_b J_b  [+ beta * KL], aggregated as configured.

        The sampler correction c multiplies each token's term (token-level objectives) or J_b by
        mean_t(c) (sequence-level ones), unless the objective folds it into its weight (vespo).
        ``corrected=False`` leaves that multiplication out (the diagnostics describe the objective alone).
        """
        batch = TokenBatch.from_log_probs(
            logp, inputs.old_logp, inputs.advantages, inputs.mask, self.config.log_ratio_clamp, inputs.correction
        )
        weight = self._weight_function(self.config, batch)
        correction = inputs.correction if corrected and not weight.includes_correction else None
        if weight.per_token:
            # REINFORCE form: u = sg(w) * A_b * logp, whose gradient is sg(w) * A_b * grad logp
            token_weight = weight.value.detach() * batch.logp if weight.surrogate else weight.value
            terms = token_weight * batch.advantages[:, None]
            if correction is not None:
                terms = terms * correction
            objective = self._aggregation.reduce_tokens(batch, terms)
        else:
            terms = weight.value * batch.advantages
            if correction is not None:
                terms = terms * batch.mean_t(correction)
            objective = self._aggregation.reduce_sequences(batch, terms)
        loss = -objective
        if self.config.beta > 0:
            loss = loss + self.config.beta * self._kl_to_reference(logp, inputs, batch)
        return _LossTerms(loss, batch, weight)

    def _kl_to_reference(self, logp: Tensor, inputs: _Inputs, batch: TokenBatch) -> Tensor:
        """KL = (1/B') * sum_b mean_t(k3) with k3 = exp(ref - logp) - (ref - logp) - 1."""
        assert inputs.ref_logp is not None  # checked in _check_inputs
        log_ratio = clamped_log_ratio(inputs.ref_logp, logp, inputs.mask, self.config.log_ratio_clamp)
        return self._aggregation.reduce_tokens(batch, k3(log_ratio))

    def _metrics(self, inputs: _Inputs) -> dict[str, float]:
        """The spec's diagnostics; omega comes from autograd on a detached copy of logp, without the
        multiplicative sampler correction (the objective's own weights)."""
        with torch.inference_mode(False), torch.enable_grad():
            inputs = inputs.autograd_ready()
            logp = inputs.logp.detach().requires_grad_(True)
            terms = self._loss_terms(logp, inputs, corrected=False)
            (loss_gradient,) = torch.autograd.grad(terms.loss, logp, allow_unused=True)
        with torch.no_grad():
            if loss_gradient is None:  # nothing in the loss depends on logp (e.g. T == 0)
                loss_gradient = torch.zeros_like(logp)
            batch = terms.batch
            vanilla_gradient = -batch.advantages[:, None] * self._aggregation.vanilla_gradient_scale(batch)
            omega = loss_gradient / vanilla_gradient  # only read where A != 0
            sequence_weight = self._sequence_weight(terms.weight, batch)
            on_policy_weight = self._sequence_weight(self._weight_function(self.config, batch.on_policy()), batch)
            extra: dict[str, Tensor] = {}
            if inputs.sampler is not None:
                weight = inputs.correction if inputs.correction is not None else torch.ones_like(logp)
                extra |= correction_metrics(self.config, inputs.sampler, weight, inputs.keep)
            if inputs.staleness is not None:
                extra |= staleness_metrics(inputs.staleness, inputs.sampled_mask)
            return summarize(
                batch,
                sequence_weight=sequence_weight / on_policy_weight,
                omega=omega,
                saturation_threshold=self.config.saturation_threshold,
                truncated=terms.weight.truncated,
                extra=extra,
            )

    @staticmethod
    def _sequence_weight(weight: PolicyWeight, batch: TokenBatch) -> Tensor:
        """J_b / A_b: w_b, or mean_t(w) for token-level objectives. [B]"""
        return batch.mean_t(weight.value) if weight.per_token else weight.value

    def _check_inputs(
        self,
        logp: Tensor,
        old_logp: Tensor,
        advantages: Tensor,
        mask: Tensor,
        ref_logp: Tensor | None,
        behav_logp: Tensor | None = None,
        staleness: Tensor | None = None,
    ) -> _Inputs:
        named = {"logp": logp, "old_logp": old_logp, "advantages": advantages, "mask": mask}
        optional = {"ref_logp": ref_logp, "behav_logp": behav_logp, "staleness": staleness}
        named |= {key: value for key, value in optional.items() if value is not None}
        for key, value in named.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"{key} must be a torch.Tensor, got {type(value).__name__}")
        if logp.dim() != 2:
            raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
        for key in ("old_logp", "mask", "ref_logp", "behav_logp"):
            if key in named and named[key].shape != logp.shape:
                raise ValueError(
                    f"{key} must have the shape of logp {tuple(logp.shape)}, got {tuple(named[key].shape)}"
                )
        if advantages.shape != logp.shape[:1]:
            raise ValueError(f"advantages must be [B] = {tuple(logp.shape[:1])}, got {tuple(advantages.shape)}")
        if staleness is not None and staleness.shape not in (logp.shape[:1], logp.shape):
            raise ValueError(
                f"staleness must be [B] = {tuple(logp.shape[:1])} or [B, T] = {tuple(logp.shape)}, "
                f"got {tuple(staleness.shape)}"
            )
        for key in ("logp", "old_logp", "ref_logp", "behav_logp"):
            if key in named and not named[key].is_floating_point():
                raise ValueError(f"{key} must be a floating-point tensor, got {named[key].dtype}")
        if self.config.beta > 0 and ref_logp is None:
            raise ValueError(f"beta={self.config.beta} > 0 needs ref_logp (the reference policy)")
        if behav_logp is None:
            if self.config.correction != "none":
                raise ValueError(f"correction={self.config.correction!r} needs behav_logp (the sampler's log-probs)")
            if self.config.m2_threshold is not None:
                raise ValueError(f"m2_threshold={self.config.m2_threshold} needs behav_logp (the sampler's log-probs)")

        dtype = torch.float32
        for value in (logp, old_logp, advantages, ref_logp, behav_logp):
            if value is not None and value.is_floating_point():
                dtype = torch.promote_types(dtype, value.dtype)
        sampled_mask = mask.detach() != 0
        inputs = _Inputs(
            logp=logp.to(dtype),
            old_logp=old_logp.detach().to(dtype),
            advantages=advantages.detach().to(dtype),
            mask=sampled_mask,
            ref_logp=None if ref_logp is None else ref_logp.detach().to(dtype),
            sampled_mask=sampled_mask,
        ).autograd_ready()
        if staleness is not None:
            staleness = staleness.detach()
            inputs = replace(
                inputs, staleness=staleness[:, None].expand_as(logp) if staleness.dim() == 1 else staleness
            )
        if behav_logp is None:
            return inputs
        with torch.no_grad():
            sampler = SamplerRatios.from_log_probs(
                inputs.old_logp, behav_logp.detach().to(dtype), sampled_mask, self.config.log_ratio_clamp
            )
            keep = None if self.config.m2_threshold is None else m2po_keep(sampler, self.config.m2_threshold)
            correction = None if self.config.correction == "none" else correction_weight(self.config, sampler)
        return replace(
            inputs,
            mask=sampled_mask if keep is None else sampled_mask & keep,
            sampler=sampler,
            correction=correction,
            keep=keep,
        ).autograd_ready()


def build_objective(cfg: dict[str, Any] | BaseModel) -> Objective:
    """Build the objective a config names; raises a ValueError naming a bad key."""
    return Objective(parse_objective_config(cfg))
