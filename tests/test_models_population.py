"""A population's stacked decoder computes what each member's own transformers model computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.models import ModelError, build_char_tokenizer, build_tiny_model  # noqa: E402
from sspo_cli.models.kv_cache import position_ids_for  # noqa: E402
from sspo_cli.models.population import Population, PopulationCache  # noqa: E402
from sspo_cli.recipe import TinyModelConfig  # noqa: E402

MEMBERS = 3
TINY_KW = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer("0123456789+-=* ")


def members(tokenizer, architecture: str = "qwen2"):
    config = TinyModelConfig(architecture=architecture, **TINY_KW)
    models = [build_tiny_model(config, tokenizer, seed=seed) for seed in range(MEMBERS)]
    with torch.no_grad():  # random biases, so that q/k/v biases are checked too (init leaves them 0)
        for model in models:
            for name, parameter in model.named_parameters():
                if name.endswith("bias") or name.endswith("norm.weight"):
                    parameter.add_(0.1 * torch.randn_like(parameter))
    return models


def left_padded_batch(rows: int = 5, length: int = 7):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 19, (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, :3] = 0  # left padding of unequal lengths
    mask[2, :1] = 0
    ids[1, 4] = 0  # the padding token sampled as a real token: its embedding row takes no gradient from the input
    return ids, mask, position_ids_for(mask)


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_each_members_logits_and_gradients_equal_its_own_models(tokenizer, architecture):
    models = members(tokenizer, architecture)
    population = Population.stack(models)
    ids, mask, positions = left_padded_batch()
    real = mask.bool()
    logits = population.forward(ids, mask, positions)
    weights = torch.linspace(0.5, 1.5, MEMBERS)  # a different loss scale per member
    (logits.log_softmax(-1)[:, real].mean((1, 2)) * weights).sum().backward()
    for member, model in enumerate(models):
        own = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        torch.testing.assert_close(logits[member][real], own[real], rtol=1e-5, atol=1e-5)
        (own.log_softmax(-1)[real].mean() * weights[member]).backward()
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(population.weights[name].grad[member], parameter.grad, rtol=1e-5, atol=1e-6)


def test_under_bf16_autocast_a_linear_layer_rounds_as_nn_linear(tokenizer):
    """A linear layer with a bias gives what nn.Linear gives under autocast: the bias added inside the bf16
    product, rounded once. (Added after it in float32, the values were rounded twice on their way into attention,
    and the members' bf16 log-probs came out about 10% further from float32 than their own models'.)"""
    from sspo_cli.models.population import linear

    models = members(tokenizer)
    population = Population.stack(models)
    ids, _, _ = left_padded_batch()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for member, model in enumerate(models):
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.0."):
                    x = torch.randn(1, *ids.shape, module.in_features, generator=generator)
                    own_weights = {key: weight[member : member + 1] for key, weight in population.weights.items()}
                    together = linear(x, own_weights, name)[0]
                    torch.testing.assert_close(together, module(x[0]))  # dtype too: bf16, as nn.Linear's


def test_members_on_their_own_rows_and_decoding_with_a_cache(tokenizer):
    models = members(tokenizer)
    population = Population.stack(models)
    ids, mask, positions = left_padded_batch()
    own_ids = torch.stack([ids.roll(member, dims=1) for member in range(MEMBERS)])  # each member its own tokens
    with torch.no_grad():
        full = population.forward(own_ids, mask, positions)
        cache = PopulationCache()
        prefill = population.forward(own_ids[:, :, :4], mask[:, :4], positions[:, :4], cache)
        steps = [
            population.forward(own_ids[:, :, t : t + 1], mask[:, : t + 1], positions[:, t : t + 1], cache)
            for t in range(4, 7)
        ]
    decoded = torch.cat([prefill, *steps], dim=2)
    real = mask.bool()
    torch.testing.assert_close(decoded[:, real], full[:, real], rtol=1e-5, atol=1e-5)
    for member, model in enumerate(models):
        with torch.no_grad():
            own = model(input_ids=own_ids[member], attention_mask=mask, position_ids=positions).logits
        torch.testing.assert_close(full[member][real], own[real], rtol=1e-5, atol=1e-5)


def test_a_member_loads_back_into_its_architecture(tokenizer):
    models = members(tokenizer)
    population = Population.stack(models)
    with torch.no_grad():
        for weight in population.parameters():
            weight.mul_(1.01)  # the population trained on
    target = population.load_member_into(1, build_tiny_model(TinyModelConfig(**TINY_KW), tokenizer, seed=9))
    state = population.member_state(1)
    assert set(state) == {name for name, _ in target.named_parameters()}
    for name, parameter in target.named_parameters():
        assert torch.equal(parameter, state[name])
        assert torch.equal(parameter, dict(models[1].named_parameters())[name].detach() * 1.01)


def test_a_decoder_it_would_not_reproduce_is_refused(tokenizer):
    model = build_tiny_model(TinyModelConfig(**TINY_KW), tokenizer, seed=0)
    model.config.hidden_act = "gelu"
    with pytest.raises(ModelError, match="activation 'gelu'"):
        Population.stack([model])
    other = build_tiny_model(TinyModelConfig(**{**TINY_KW, "num_layers": 1}), tokenizer, seed=0)
    with pytest.raises(ModelError, match="share one config"):
        Population.stack([build_tiny_model(TinyModelConfig(**TINY_KW), tokenizer, seed=0), other])


def test_each_member_samples_what_its_standalone_run_samples(tokenizer):
    from sspo_cli.models.generation import sample_completions
    from sspo_cli.models.population import sample_population

    models = members(tokenizer)
    with torch.no_grad():  # far from uniform, so that rows end at different lengths
        for model in models:
            model.model.embed_tokens.weight.mul_(5.0)
    population = Population.stack(models)
    prompts = [["12+34=", "5+6=", "99+1="], ["7+8=", "10+20=", "3+3="], ["44+55=", "1+1=", "2+9="]]
    group = 4
    prompt_index = torch.arange(3).repeat_interleave(group)
    encoded = tokenizer([p for member in prompts for p in member], return_tensors="pt", padding=True)
    ids, mask = encoded["input_ids"].view(MEMBERS, 3, -1), encoded["attention_mask"].view(MEMBERS, 3, -1)
    seeds = [11, 12, 13]
    end = [tokenizer.eos_token_id]
    together = sample_population(
        population,
        ids,
        mask,
        prompt_index.expand(MEMBERS, -1),
        10,
        1.0,
        end,
        tokenizer.pad_token_id,
        [torch.Generator().manual_seed(seed) for seed in seeds],
    )
    lengths = set()
    for member, (model, seed) in enumerate(zip(models, seeds)):
        own = tokenizer(prompts[member], return_tensors="pt", padding=True)  # its own padding width
        torch.manual_seed(seed)
        alone = sample_completions(
            model, own["input_ids"], own["attention_mask"], prompt_index, 10, 1.0, end, tokenizer.pad_token_id
        )
        width = alone.completion_ids.shape[1]
        assert torch.equal(together.completion_ids[member, :, :width], alone.completion_ids)
        assert (together.completion_ids[member, :, width:] == tokenizer.pad_token_id).all()
        torch.testing.assert_close(together.logprobs[member, :, :width], alone.logprobs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(together.entropy[member, :, :width], alone.entropy, rtol=1e-5, atol=1e-5)
        lengths |= set((alone.completion_ids != tokenizer.pad_token_id).sum(1).tolist())
    assert len(lengths) > 2  # rows ended at different lengths
