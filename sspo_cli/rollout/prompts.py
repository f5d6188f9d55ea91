"""How a task's prompt becomes the model's input, and where a completion ends.

One rule for every caller (RL rollouts, evals, `sspo eval`, the warm start): `text_format(recipe,
tokenizer)` resolves the recipe's `model.chat_template`, `task.system_prompt` and `rollout.stop`
against the tokenizer once; its `TextFormat` renders and encodes prompts and says where
completions end. The task has already filled `task.prompt_template` into `Example.prompt`.
See docs/prompts.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sspo_cli.errors import InputError

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase

    from sspo_cli.recipe import Recipe


class PromptError(InputError):
    """A prompt option the tokenizer cannot honour; the message names the recipe key."""


@dataclass(frozen=True)
class TextFormat:
    """The resolved prompt and stop options. The default is the prompt text as it is, ending at <eos> only."""

    chat: bool = False  # wrap the prompt in the tokenizer's chat template
    system_prompt: str | None = None
    stop: tuple[str, ...] = ()  # matched in the decoded completion text
    stop_ids: tuple[int, ...] = ()  # stop strings that are special tokens (never in decoded text): ended like <eos>

    def messages(self, prompt: str) -> list[dict[str, str]]:
        """The chat of one prompt: the system prompt (if any), then the prompt as the user's message."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": prompt}]

    def prompt_text(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
        """The text the model reads: the prompt itself, or the chat template's user turn and opened assistant turn."""
        if not self.chat:
            return prompt
        return tokenizer.apply_chat_template(self.messages(prompt), tokenize=False, add_generation_prompt=True)

    def encode(self, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], **kwargs) -> BatchEncoding:
        """Token ids of the prompts (`kwargs` go to the tokenizer: padding, return_tensors)."""
        texts = [self.prompt_text(tokenizer, p) for p in prompts]
        # A chat template writes its own special tokens (a <bos> where the model has one): add none twice.
        return tokenizer(texts, add_special_tokens=not self.chat, **kwargs)

    def end_ids(self, tokenizer: PreTrainedTokenizerBase, model: Any = None) -> tuple[int, ...]:
        """Tokens that end a completion (and are part of it): the tokenizer's <eos>, the model's own end
        tokens (its generation config: an instruct model ends a turn at <|im_end|> and also at
        <|endoftext|>, and a base model's tokenizer may name only one of them), then the special-token
        stop strings. Each once, in that order."""
        ids = (tokenizer.eos_token_id, *generation_end_ids(model), *self.stop_ids)
        return tuple(dict.fromkeys(i for i in ids if i is not None))


def generation_end_ids(model: Any) -> tuple[int, ...]:
    """`model.generation_config.eos_token_id` as a tuple (it may be one id, a list or absent)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return ()
    return (eos,) if isinstance(eos, int) else tuple(eos)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def text_format(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> TextFormat:
    """The recipe's prompt and stop options for this tokenizer. Raises PromptError (naming the key) on a mismatch."""
    setting, system_prompt = recipe.model.chat_template, recipe.task.system_prompt
    available = has_chat_template(tokenizer)
    if setting == "on" and not available:
        raise PromptError(
            "model.chat_template",
            f"'on', but the tokenizer ({type(tokenizer).__name__}) has no chat template "
            "(none in its tokenizer_config.json or chat_template.jinja; the tiny model never has one): use 'auto' or 'off'",
        )
    chat = available and setting != "off"
    if system_prompt is not None and not chat:
        why = "model.chat_template is 'off'" if setting == "off" else "the tokenizer has no chat template"
        raise PromptError(
            "task.system_prompt",
            f"a system prompt is a message of the chat template, and there is none here ({why}): "
            "put the instruction in task.prompt_template instead",
        )
    special = {token.content: index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    stop_ids = tuple(special[s] for s in recipe.rollout.stop if s in special)
    stop = tuple(s for s in recipe.rollout.stop if s not in special)
    return TextFormat(chat=chat, system_prompt=system_prompt, stop=stop, stop_ids=stop_ids)


# --------------------------------------------------------------------------- stop strings


def stop_window(stop: Sequence[str]) -> int:
    """Tokens of a completion's tail decoded to look for a stop string: every token is at least one byte,
    and two more keep a decoder's first-token quirks (a stripped leading space) away from the match."""
    return max(len(s.encode()) for s in stop) + 2


def tails_contain_stop(
    tokenizer: PreTrainedTokenizerBase, tails: Sequence[Sequence[int]], stop: Sequence[str]
) -> list[bool]:
    """Whether each decoded tail (the last `stop_window` tokens of a completion so far) contains a stop string.

    The one test of a stop string: the sampler asks it after every token, `completion_ends` over a
    finished completion token by token, so both find the same end."""
    texts = tokenizer.batch_decode([list(t) for t in tails], skip_special_tokens=True)
    return [any(s in text for s in stop) for text in texts]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before its first stop string (the stop string is not part of the completion, as in vLLM)."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(found)] if found else text
