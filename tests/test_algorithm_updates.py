"""Memory-bounded updates: micro-batches and gradient checkpointing give the un-split update's loss,
gradients and diagnostics, for every registered objective, on a real tiny model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.engines.native.step import UpdateData, accumulate_gradients, micro_batches  # noqa: E402
from sspo_cli.engines.native.tuning import bucket_count, length_bucket_parts, prepared_model, slice_bounds  # noqa: E402
from sspo_cli.models import load_policy  # noqa: E402
from sspo_cli.models.logprobs import completion_logprobs  # noqa: E402
from sspo_cli.objectives import build_objective, objective_names  # noqa: E402
from sspo_cli.recipe import recipe_from_dict  # noqa: E402

ROWS, GROUP, PROMPT, COMPLETION = 12, 3, 5, 7
# Every registered objective with a KL term (all of them take a reference), and grpo's token mean.
OBJECTIVES = [{"name": name, "beta": 0.05} for name in objective_names()] + [
    {"name": "grpo", "agg": "token_mean", "beta": 0.05}
]


def recipe(tiny_overrides, **performance):
    overrides = tiny_overrides + ["model.device=cpu", "performance.autocast_bf16=false", "model.tiny.num_layers=2"]
    overrides += [f"performance.{key}={'null' if value is None else value}" for key, value in performance.items()]
    return recipe_from_dict({}, overrides)


@pytest.fixture
def model(tiny_overrides):
    base = recipe(tiny_overrides)
    policy, _ = load_policy(base.model, "0123456789+=", base.seed)
    return policy


@pytest.fixture
def data(model) -> tuple[UpdateData, torch.Tensor]:
    """An off-policy rollout: grouped prompts, left padding, ragged and empty completions, a reference."""
    generator = torch.Generator().manual_seed(3)
    vocab = model.config.vocab_size
    prompt_index = torch.arange(ROWS) // GROUP
    prompts = torch.randint(4, vocab, (ROWS // GROUP, PROMPT), generator=generator)[prompt_index]
    completions = torch.randint(4, vocab, (ROWS, COMPLETION), generator=generator)
    input_ids = torch.cat([prompts, completions], dim=1)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[prompt_index == 1, :2] = 0  # one group's prompt is left-padded
    lengths = torch.tensor([7, 3, 0, 5, 1, 7, 2, 0, 6, 4, 7, 5])
    mask = (torch.arange(COMPLETION) < lengths[:, None]).float()
    with torch.no_grad():
        logp, _ = completion_logprobs(model, input_ids, attention_mask, COMPLETION, 1.0)
    old_logp = logp + 0.3 * torch.randn(logp.shape, generator=generator)  # off-policy: clips and gates act
    ref_logp = logp + 0.2 * torch.randn(logp.shape, generator=generator)
    advantages = torch.randn(ROWS, generator=generator)
    advantages[prompt_index == 2] = 0.0  # a group whose rewards were all equal
    update = UpdateData(input_ids, attention_mask, COMPLETION, old_logp, advantages, mask, ref_logp)
    return update, prompt_index


def update_of(model, objective_config, data, recipe_, shared: bool):
    update, prompt_index = data
    rows = torch.randperm(ROWS, generator=torch.Generator().manual_seed(5))[:10]  # a shuffled mini-batch
    result = accumulate_gradients(
        model, build_objective(objective_config), update, rows, prompt_index if shared else None, recipe_
    )
    return result, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("micro_batch_size", [1, 3, 4])
@pytest.mark.parametrize("shared", [True, False], ids=["shared-prompts", "no-sharing"])
def test_micro_batches_give_the_unsplit_update(tiny_overrides, model, data, objective, micro_batch_size, shared):
    """Sizes 1 (empty rows alone), 3 and 4 (uneven last micro-batch) split a mini-batch of 10."""
    whole, whole_grads = update_of(model, objective, data, recipe(tiny_overrides), shared)
    split, split_grads = update_of(
        model, objective, data, recipe(tiny_overrides, micro_batch_size=micro_batch_size), shared
    )
    assert split.loss == pytest.approx(whole.loss, rel=1e-5, abs=1e-7)
    assert split.metrics.keys() == whole.metrics.keys()
    for key, value in whole.metrics.items():
        assert split.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
    for name, (a, b) in zip([n for n, _ in model.named_parameters()], zip(split_grads, whole_grads)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_the_unsplit_update_is_the_objective_on_the_whole_mini_batch(tiny_overrides, model, data):
    update, prompt_index = data
    rows = torch.arange(ROWS)
    objective = build_objective({"name": "sspo", "beta": 0.05})
    # the loaded kernel, as the plain forward below runs (`auto` may pick another: equal up to rounding only)
    result = accumulate_gradients(
        model, objective, update, rows, prompt_index, recipe(tiny_overrides, update_attention="same")
    )
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    logp, _ = completion_logprobs(model, update.input_ids, update.attention_mask, COMPLETION, 1.0, prompt_index)
    out = objective(logp, **update.objective_inputs(rows))
    out.loss.backward()
    assert result.loss == float(out.loss.detach()) and result.metrics == out.metrics
    for a, p in zip(grads, model.parameters()):
        assert torch.equal(a, p.grad)


@pytest.mark.parametrize("micro_batch_size", [None, 4])
def test_gradient_checkpointing_keeps_the_gradients(tiny_overrides, data, micro_batch_size):
    plain = recipe(tiny_overrides, micro_batch_size=micro_batch_size)
    checkpointed = recipe(tiny_overrides, micro_batch_size=micro_batch_size, gradient_checkpointing=True)
    results = []
    for r in (plain, checkpointed):
        policy, _ = load_policy(r.model, "0123456789+=", r.seed)
        policy = prepared_model(policy, r.performance)
        policy.train()
        results.append(update_of(policy, {"name": "grpo", "beta": 0.05}, data, r, shared=True))
    assert policy.is_activation_checkpointing
    (a, a_grads), (b, b_grads) = results
    assert b.loss == pytest.approx(a.loss, rel=1e-5)
    for x, y in zip(a_grads, b_grads):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_is_enabled_in_place_once(tiny_overrides):
    r = recipe(tiny_overrides, gradient_checkpointing=True)
    policy, _ = load_policy(r.model, "0123456789+=", r.seed)
    assert not policy.is_activation_checkpointing
    assert prepared_model(policy, r.performance) is policy and policy.is_activation_checkpointing
    assert prepared_model(policy, r.performance) is policy


def test_micro_batches_keep_groups_together():
    rows = torch.tensor([5, 0, 3, 1, 4, 2])
    prompt_index = torch.tensor([0, 0, 1, 1, 2, 2])
    parts = micro_batches(rows, 4, prompt_index)
    assert [p.tolist() for p in parts] == [[0, 1, 3, 2], [5, 4]]
    assert [p.tolist() for p in micro_batches(rows, 4, None)] == [[5, 0, 3, 1], [4, 2]]
    assert [p.tolist() for p in micro_batches(rows, None, prompt_index)] == [rows.tolist()]
    assert [p.tolist() for p in micro_batches(rows, 9, prompt_index)] == [rows.tolist()]


def test_micro_batches_with_chunked_logprobs(tiny_overrides, model, data):
    """A chunk of one completion (the LM head recomputed in backward) inside micro-batches of 3."""
    objective = {"name": "sspo", "beta": 0.05}
    whole, whole_grads = update_of(model, objective, data, recipe(tiny_overrides), shared=True)
    chunked = recipe(tiny_overrides, micro_batch_size=3, logprob_chunk_mb=0.0001)
    split, split_grads = update_of(model, objective, data, chunked, shared=True)
    assert split.loss == pytest.approx(whole.loss, rel=1e-5, abs=1e-7)
    for a, b in zip(split_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("buckets", [2, 3, 10])
@pytest.mark.parametrize("shared", [True, False], ids=["shared-prompts", "no-sharing"])
def test_length_buckets_give_the_unsplit_update(tiny_overrides, model, data, objective, buckets, shared):
    """Micro-batches of similar lengths, each trimmed to its own longest completion (10: every row alone),
    against the whole mini-batch at full width."""
    whole, whole_grads = update_of(
        model, objective, data, recipe(tiny_overrides, length_buckets=1, trim_padding=False), shared
    )
    split, split_grads = update_of(model, objective, data, recipe(tiny_overrides, length_buckets=buckets), shared)
    assert split.loss == pytest.approx(whole.loss, rel=1e-5, abs=1e-7)
    assert split.metrics.keys() == whole.metrics.keys()
    for key, value in whole.metrics.items():
        assert split.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
    for name, (a, b) in zip([n for n, _ in model.named_parameters()], zip(split_grads, whole_grads)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_trimmed_micro_batches_give_the_untrimmed_update(tiny_overrides, model, data):
    objective = {"name": "sspo", "beta": 0.05}
    untrimmed, untrimmed_grads = update_of(
        model, objective, data, recipe(tiny_overrides, micro_batch_size=3, trim_padding=False), shared=True
    )
    trimmed, trimmed_grads = update_of(model, objective, data, recipe(tiny_overrides, micro_batch_size=3), True)
    assert trimmed.loss == pytest.approx(untrimmed.loss, rel=1e-5, abs=1e-7)
    for a, b in zip(trimmed_grads, untrimmed_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def lengths_data(lengths: list[int], prompt_len: int = 4) -> UpdateData:
    width = max(lengths)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).float()
    ids = torch.zeros(len(lengths), prompt_len + width, dtype=torch.long)
    zeros = torch.zeros(len(lengths), width)
    return UpdateData(ids, torch.ones_like(ids), width, zeros, torch.zeros(len(lengths)), mask, None)


def test_auto_length_buckets_choose_by_tokens_and_price():
    rows = torch.arange(8)
    even = lengths_data([5] * 8)
    assert length_bucket_parts(rows, even, None, None, price=0.0) == [rows]  # nothing to save: kept whole, in order
    ragged = lengths_data([40, 1, 40, 1, 40, 1, 40, 1])
    parts = length_bucket_parts(rows, ragged, None, None, price=10.0)
    assert [p.tolist() for p in parts] == [[1, 3, 5, 7], [0, 2, 4, 6]]  # 4 x 2 + 4 x 41 + 10 < 8 x 41
    assert length_bucket_parts(rows, ragged, None, None, price=1000.0) == [rows]  # a micro-batch costs too much
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # rows of one prompt stay together among equal lengths
    assert [p.tolist() for p in length_bucket_parts(rows, ragged, groups, 2)] == [[1, 3, 5, 7], [0, 2, 4, 6]]
    assert [p.tolist() for p in length_bucket_parts(rows, even, groups, 3)] == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_length_bucket_setting_resolves_by_device():
    perf = recipe_from_dict({}, []).performance
    assert perf.length_buckets == 1 and bucket_count(perf, torch.device("cpu")) == 1  # off by default
    perf = perf.model_copy(update={"length_buckets": "auto"})
    assert bucket_count(perf, torch.device("cpu")) is None  # chosen by cost
    assert bucket_count(perf, torch.device("meta")) == 1  # not measured on accelerators: no split
    assert bucket_count(perf.model_copy(update={"length_buckets": 4}), torch.device("meta")) == 4
    assert slice_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert [len(p) for p in torch.tensor_split(torch.arange(10), 3)] == [4, 3, 3]
