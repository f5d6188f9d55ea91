"""A population: K decoders of one small architecture held as stacked weights, run as one.

Every weight of the K members is one tensor with a leading member dimension ([K, out, in] for a linear layer), and
the decoder below carries that dimension through: a linear layer is one batched matrix product over the members,
attention one SDPA call over members x rows. So K members cost one forward's Python and operator dispatch instead of
K, and their matrix products run as one larger batch. The parameter names are transformers' own, so a member's
weights (`member_state`) load into the usual model and save as an ordinary checkpoint.

Supported: the Llama family as transformers builds it for the embedded tiny models (`qwen2`, `llama`: RMSNorm,
rotary positions, grouped-query attention, SiLU-gated MLP, optional q/k/v biases, tied or separate LM head). The
forward follows transformers' modules step by step (the same operations in the same order), so a member's logits and
gradients equal its model's within float rounding (tests/test_models_population.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sspo_cli.models import ModelError
from sspo_cli.models.generation import Sample, draw, exponential_noise
from sspo_cli.models.kv_cache import position_ids_for

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

POPULATION_ARCHITECTURES = ("qwen2", "llama")


@dataclass(frozen=True)
class DecoderShape:
    """What the population's forward needs of a transformers config."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    padding_idx: int | None

    @classmethod
    def of(cls, config) -> DecoderShape:
        """The shape of `config`; a config this decoder would not reproduce is refused (`model`)."""
        problem = unsupported(config)
        if problem:
            raise ModelError(
                "model", f"a population needs a plain {' or '.join(POPULATION_ARCHITECTURES)} decoder: {problem}"
            )
        heads = config.num_attention_heads
        return cls(
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            rms_eps=config.rms_norm_eps,
            rope_theta=rope_parameters(config)["rope_theta"],
            padding_idx=config.pad_token_id,
        )


def rope_parameters(config) -> dict:
    """transformers 5 keeps the rotary settings in `rope_parameters`; older versions in `rope_theta`/`rope_scaling`."""
    parameters = getattr(config, "rope_parameters", None)
    if parameters:
        return dict(parameters)
    return {
        "rope_type": (getattr(config, "rope_scaling", None) or {}).get("rope_type", "default"),
        "rope_theta": config.rope_theta,
    }


def unsupported(config) -> str | None:
    """Why the population decoder would not compute what transformers computes for `config` (None: it would)."""
    checks = {
        f"model_type {config.model_type!r}": config.model_type in POPULATION_ARCHITECTURES,
        f"activation {getattr(config, 'hidden_act', None)!r}": getattr(config, "hidden_act", None) == "silu",
        f"rotary type {rope_parameters(config).get('rope_type')!r}": rope_parameters(config).get("rope_type")
        == "default",
        "a sliding window": not getattr(config, "use_sliding_window", False),
        "attention dropout": not getattr(config, "attention_dropout", 0.0),
        "MLP biases": not getattr(config, "mlp_bias", False),
    }
    failed = [name for name, ok in checks.items() if not ok]
    return ", ".join(failed) if failed else None


@dataclass
class PopulationCache:
    """Keys and values of every layer, [K, rows, kv_heads, positions, head_dim], grown by each forward.

    With a `capacity` (positions) each layer's buffers are reserved at its first forward and written in place, so a
    sampling loop does not copy the whole cache at every token; without one it grows by concatenation (what a
    forward whose gradients flow through the cache needs)."""

    capacity: int | None = None
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        start = self.lengths[layer] if layer < len(self.lengths) else 0
        end = start + keys.shape[-2]
        if layer == len(self.keys):  # this layer's first forward
            if self.capacity is None:
                self.keys.append(keys)
                self.values.append(values)
            else:
                reserved = (*keys.shape[:-2], self.capacity, keys.shape[-1])
                self.keys.append(keys.new_empty(reserved))
                self.values.append(values.new_empty(reserved))
            self.lengths.append(0)
        if self.capacity is None:
            if start:
                self.keys[layer] = torch.cat([self.keys[layer], keys], dim=-2)
                self.values[layer] = torch.cat([self.values[layer], values], dim=-2)
        else:
            self.keys[layer][..., start:end, :] = keys
            self.values[layer][..., start:end, :] = values
        self.lengths[layer] = end
        return self.keys[layer][..., :end, :], self.values[layer][..., :end, :]

    @property
    def length(self) -> int:
        return self.lengths[0] if self.lengths else 0

    def select_rows(self, index: torch.Tensor) -> None:
        """Row i of member k becomes its old row index[k, i] ([K, N]), in every layer."""
        import torch

        members = torch.arange(index.shape[0], device=index.device)[:, None]
        self.keys = [keys[members, index] for keys in self.keys]
        self.values = [values[members, index] for values in self.values]


class Population:
    """K members' weights, stacked: `weights[name]` is [K, *shape of that parameter in one member]."""

    def __init__(self, shape: DecoderShape, weights: dict[str, torch.Tensor]) -> None:
        self.shape = shape
        self.weights = weights

    @classmethod
    def stack(cls, models: list[PreTrainedModel]) -> Population:
        """The members `models` (one architecture and config) as one population of fresh leaf tensors."""
        import torch

        shape = DecoderShape.of(models[0].config)
        if any(m.config.to_dict() != models[0].config.to_dict() for m in models[1:]):
            raise ModelError("model", "the members of a population must share one config")
        states = [dict(m.named_parameters()) for m in models]
        weights = {
            name: torch.stack([state[name].detach() for state in states]).requires_grad_(True) for name in states[0]
        }
        return cls(shape, weights)

    @property
    def size(self) -> int:
        return next(iter(self.weights.values())).shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return list(self.weights.values())

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The stacked weights by name, as a module lists its parameters (so `engines/native/lag.py` keeps copies)."""
        return iter(self.weights.items())

    def member_state(self, member: int) -> dict[str, torch.Tensor]:
        """Member `member`'s parameters under transformers' names (copies: the population goes on training)."""
        return {name: weight[member].detach().clone() for name, weight in self.weights.items()}

    def load_member_into(self, member: int, model: PreTrainedModel) -> PreTrainedModel:
        """`model` (the members' architecture) with member `member`'s weights, e.g. to save it as a checkpoint."""
        import torch

        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(self.weights[name][member])
        return model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: PopulationCache | None = None,
        eager_attention: bool = False,
    ) -> torch.Tensor:
        """Logits [K, rows, T, vocab] of every member for its own rows.

        `input_ids` [K, rows, T] (or [rows, T]: the same rows for every member); `attention_mask` [K or 1, rows,
        cached + T] over the cached and new positions (1 = a real token; left padding); `position_ids` [K or 1, rows,
        T]. With `cache`, the new positions' keys and values are appended to it. `eager_attention`: transformers'
        eager attention (products and a float32 softmax), faster than the SDPA kernel at short lengths on a CPU."""
        import torch

        w, s = self.weights, self.shape
        members = self.size
        if input_ids.dim() == 2:
            input_ids = input_ids.expand(members, *input_ids.shape)
        rows, length = input_ids.shape[1:]
        embedding = w["model.embed_tokens.weight"]
        x = embedding[torch.arange(members)[:, None, None], input_ids]  # [K, rows, T, hidden]
        if s.padding_idx is not None:  # as nn.Embedding(padding_idx): the padding token's row takes no gradient here
            x = torch.where((input_ids == s.padding_idx)[..., None], x.detach(), x)
        cos, sin = rotary(position_ids, s.head_dim, s.rope_theta, x.dtype)
        past = cache.length if cache is not None else 0
        mask = attention_allowed(attention_mask, past, length)
        for layer in range(s.layers):
            prefix = f"model.layers.{layer}."
            h = rms_norm(x, w[prefix + "input_layernorm.weight"], s.rms_eps)
            q = heads_first(linear(h, w, prefix + "self_attn.q_proj"), s.heads, s.head_dim)
            k = heads_first(linear(h, w, prefix + "self_attn.k_proj"), s.kv_heads, s.head_dim)
            v = heads_first(linear(h, w, prefix + "self_attn.v_proj"), s.kv_heads, s.head_dim)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            if cache is not None:
                k, v = cache.update(layer, k, v)
            attended = attend_eagerly(q, k, v, mask) if eager_attention else attend(q, k, v, mask)
            attended = attended.transpose(2, 3).reshape(members, rows, length, s.heads * s.head_dim)
            x = x + linear(attended, w, prefix + "self_attn.o_proj")
            h = rms_norm(x, w[prefix + "post_attention_layernorm.weight"], s.rms_eps)
            gate, up = linear(h, w, prefix + "mlp.gate_proj"), linear(h, w, prefix + "mlp.up_proj")
            x = x + linear(torch.nn.functional.silu(gate) * up, w, prefix + "mlp.down_proj")
        x = rms_norm(x, w["model.norm.weight"], s.rms_eps)
        head = w.get("lm_head.weight", embedding)  # tied: the embedding is the head
        return batched_matmul(x, head)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """SDPA of queries [K, rows, heads, T, dim] over keys and values with fewer heads (grouped-query attention: head
    h reads key head h // (heads / kv_heads)), without copying the keys and values per query head."""
    import torch

    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)


def attend_eagerly(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """What transformers' eager attention computes: scaled products, the disallowed keys at the dtype's minimum, a
    float32 softmax cast back, the weighted values; the query heads of one key head as one group, so the keys and
    values (a whole KV cache while sampling) are read once, not copied per query head."""
    import torch

    members, rows, heads, length, dim = q.shape
    kv_heads = k.shape[2]
    grouped = q.view(members, rows, kv_heads, heads // kv_heads, length, dim)
    scores = (grouped @ k[:, :, :, None].transpose(-1, -2)) * dim**-0.5
    scores = scores.masked_fill(~allowed[:, :, :, None], torch.finfo(scores.dtype).min)
    weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    return (weights @ v[:, :, :, None]).view(members, rows, heads, length, dim)


def linear(x: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Each member's `name` linear layer on its own rows: x [K, rows, T, in] -> [K, rows, T, out]."""
    return batched_matmul(x, weights[name + ".weight"], weights.get(name + ".bias"))


def batched_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [K, rows, T, in] times each member's weight [K, out, in] transposed, plus its bias [K, out], as one
    batched product. The bias is added inside the product, as nn.Linear adds it under autocast: rounded to bf16
    once, not once before the add and again where attention reads the float32 sum."""
    import torch

    members, rows, length, width = x.shape
    flat, transposed = x.reshape(members, rows * length, width), weight.transpose(1, 2)
    product = torch.bmm(flat, transposed) if bias is None else torch.baddbmm(bias[:, None, :], flat, transposed)
    return product.reshape(members, rows, length, weight.shape[1])


def heads_first(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """[K, rows, T, heads * head_dim] -> [K, rows, heads, T, head_dim]."""
    members, rows, length, _ = x.shape
    return x.view(members, rows, length, heads, head_dim).transpose(2, 3)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm (in float32, cast back), each member's weight [K, hidden]."""
    import torch

    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight[:, None, None, :] * x.to(dtype)


def rotary(position_ids: torch.Tensor, head_dim: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the default rotary embedding at `position_ids` [K or 1, rows, T]: [K or 1, rows, 1, T, dim]."""
    import torch

    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if position_ids.dim() == 2:
        position_ids = position_ids[None]
    freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device)
    angles = torch.cat((freqs, freqs), dim=-1)[:, :, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    import torch

    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def attention_allowed(attention_mask: torch.Tensor, past: int, length: int) -> torch.Tensor:
    """Which keys each new query may attend to: causal over the cached and new positions, real tokens only, and
    always itself (so a padding position's query has a finite softmax; its output is never read).
    [K or 1, rows, 1, T, past + T] bool."""
    import torch

    if attention_mask.dim() == 2:
        attention_mask = attention_mask[None]
    total = past + length
    query_positions = torch.arange(past, total, device=attention_mask.device)
    key_positions = torch.arange(total, device=attention_mask.device)
    causal = key_positions[None, :] <= query_positions[:, None]  # [T, past + T]
    itself = key_positions[None, :] == query_positions[:, None]
    allowed = (causal & attention_mask[..., None, :total].bool()) | itself
    return allowed[:, :, None]


def sample_population(
    population: Population,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
    end_ids: list[int],
    pad_id: int,
    generators: list[torch.Generator] | None,
) -> Sample:
    """Every member's completions at once, each as `generation.sample_completions` samples its member alone.

    `prompt_ids`, `prompt_mask` [K, P, T]: each member's distinct prompts (left-padded to one width);
    `prompt_index` [K, N]: the prompt of each completion. `generators[k]`: member k's random numbers, drawn as its
    own run draws them from torch's generator seeded alike (the same Exp(1) noise per row and token), so a member
    samples the tokens its standalone run samples. Returns [K, N, T] tensors; a row is padding after its end
    (log-prob and entropy 0), and T runs until every member's every row has ended."""
    import torch

    members, rows = prompt_index.shape
    device = prompt_ids.device
    ends = torch.tensor(list(end_ids), device=device)
    member_rows = torch.arange(members, device=device)[:, None]
    with torch.inference_mode():
        cache = PopulationCache(capacity=prompt_ids.shape[-1] + max_new_tokens)
        positions = position_ids_for(prompt_mask)
        logits = population.forward(prompt_ids, prompt_mask, positions, cache)[:, :, -1]
        cache.select_rows(prompt_index)
        logits = logits[member_rows, prompt_index]
        prompt_len = prompt_ids.shape[-1]
        mask = torch.cat(
            [prompt_mask[member_rows, prompt_index], prompt_mask.new_ones(members, rows, max_new_tokens)], -1
        )
        next_position = positions[member_rows, prompt_index, -1:] + 1
        finished = torch.zeros(members, rows, dtype=torch.bool, device=device)
        tokens, logprobs, entropies = [], [], []
        for step in range(max_new_tokens):
            noise = None
            if temperature is not None:  # each member's from its own generator
                noise = torch.stack([exponential_noise(rows, logits.shape[-1], device, g) for g in generators])
            token, logp, entropy = draw(logits, temperature, True, noise)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            tokens.append(token)
            logprobs.append(logp.masked_fill(finished, 0.0))
            entropies.append(entropy.masked_fill(finished, 0.0))
            finished = finished | torch.isin(token, ends)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            logits = population.forward(
                token[..., None], mask[..., : prompt_len + step + 1], next_position + step, cache
            )[:, :, -1]
    return Sample(torch.stack(tokens, -1), torch.stack(logprobs, -1), torch.stack(entropies, -1))
