"""Supervised warm start on the task's gold answers, cached by a hash of everything that decides it.

A tiny random model never earns reward, so RL has nothing to reinforce. A short supervised
phase brings it to a partial accuracy; every method and seed of a comparison then starts from
the same cached weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.errors import InputError
from sspo_cli.models import untied_state
from sspo_cli.models.kv_cache import position_ids_for
from sspo_cli.recipe import Recipe, stable_hash
from sspo_cli.rollout.evaluate import evaluate
from sspo_cli.rollout.prompts import TextFormat, text_format

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.recipe import WarmStartConfig
    from sspo_cli.tasks import Example, Task

CACHE_FORMAT = 1


@dataclass(frozen=True)
class WarmStartResult:
    steps: int
    dev_accuracy: float
    cached: bool
    folder: Path
    target: float | None = None  # train.warm_start.target_dev_accuracy; None: no target to miss

    @property
    def reached_target(self) -> bool:
        return self.target is None or self.dev_accuracy >= self.target

    def as_summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "dev_accuracy": self.dev_accuracy,
            "cached": self.cached,
            "target": self.target,
            "reached_target": self.reached_target,
        }


class WarmStartMissed(InputError):
    """The warm start ended below its dev-accuracy target and the recipe says to stop (`on_miss: stop`)."""


def missed_target_message(result: WarmStartResult, max_steps: int) -> str:
    return (
        f"the warm start ended at dev accuracy {result.dev_accuracy:.1%} after {result.steps} of {max_steps} steps, "
        f"short of its target {result.target:.1%}; RL would start from a policy that may earn too little reward to learn from. "
        "Raise train.warm_start.max_steps, lower train.warm_start.target_dev_accuracy, "
        "or try another train.warm_start.seed (a higher train.warm_start.lr makes the accuracy jump less predictable)"
    )


def check_target(result: WarmStartResult, cfg: WarmStartConfig, warn: Callable[[str], None]) -> None:
    """Say when the warm start missed its target: a warning (`on_miss: warn`) or WarmStartMissed (`stop`)."""
    if result.reached_target:
        return
    message = missed_target_message(result, cfg.max_steps)
    if cfg.on_miss == "stop":
        raise WarmStartMissed("train.warm_start.target_dev_accuracy", message + " (train.warm_start.on_miss: stop)")
    warn(message + "; going on to RL (train.warm_start.on_miss: warn)")


def warm_start_key(recipe: Recipe, task: Task) -> str:
    """Model, task data, warm-start options and eval length decide the weights; the RL seed does not."""
    return stable_hash(
        {
            "format": CACHE_FORMAT,
            # LoRA is trained after the warm start: with or without it, the warm-started weights are the same.
            "model": recipe.model.model_dump(mode="json", exclude={"device", "lora"}),
            "task": recipe.task.model_dump(mode="json"),
            "task_data": task.fingerprint(),  # a data file edited in place changes the key
            "warm_start": recipe.train.warm_start.cache_fields(),
            "max_new_tokens": recipe.rollout.max_new_tokens,
            "stop": recipe.rollout.stop,  # the dev checks that decide when it ends see them
        }
    )


WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "warm_start.json"


def is_cached(folder: Path) -> bool:
    """Whether a warm start's cache folder is complete (it is moved into place whole, so both files or none)."""
    return (folder / WEIGHTS_FILE).is_file() and (folder / INFO_FILE).is_file()


def cached_warm_start(
    recipe: Recipe,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    cache_root: Path,
    on_progress: Callable[[int, int, float | None], None] | None = None,
) -> WarmStartResult:
    """Load the warm-started weights from the cache, or train them and cache them atomically."""
    from safetensors.torch import load_file, save_file

    folder = cache_root / warm_start_key(recipe, task)
    target = recipe.train.warm_start.target_dev_accuracy
    weights, info_file = folder / WEIGHTS_FILE, folder / INFO_FILE
    if is_cached(folder):
        model.load_state_dict(load_file(str(weights), device=str(next(model.parameters()).device)), strict=False)
        info = json.loads(info_file.read_text())
        return WarmStartResult(info["steps"], info["dev_accuracy"], cached=True, folder=folder, target=target)

    steps, dev_accuracy = supervised_warm_start(model, tokenizer, task, recipe, on_progress)
    staging = cache_root / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(untied_state(model.state_dict()), str(staging / WEIGHTS_FILE))
    (staging / INFO_FILE).write_text(json.dumps({"steps": steps, "dev_accuracy": dev_accuracy, "key": folder.name}))
    try:
        os.replace(staging, folder)
    except OSError:  # another process cached the same key first: theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return WarmStartResult(steps, dev_accuracy, cached=False, folder=folder, target=target)


def supervised_warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    recipe: Recipe,
    on_progress: Callable[[int, int, float | None], None] | None = None,
) -> tuple[int, float]:
    """Cross-entropy on answer tokens (and <eos>) until dev accuracy reaches the target."""
    import torch

    cfg = recipe.train.warm_start
    text = text_format(recipe, tokenizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / max(cfg.warmup_steps, 1)))
    device = next(model.parameters()).device
    dev = task.dev or task.train[: recipe.eval.batch_size]
    dev_accuracy = 0.0
    step = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model.train()
        for step in range(1, cfg.max_steps + 1):
            rows = torch.randint(len(task.train), (cfg.batch_size,), generator=generator).tolist()
            input_ids, attention_mask, loss_mask = supervised_batch(tokenizer, [task.train[i] for i in rows], text)
            input_ids, attention_mask, loss_mask = input_ids.to(device), attention_mask.to(device), loss_mask.to(device)
            logits = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_for(attention_mask),
                use_cache=False,
            ).logits
            token_loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
            )
            loss = (token_loss * loss_mask[:, 1:].reshape(-1)).sum() / loss_mask[:, 1:].sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            checked = step % cfg.eval_every == 0 or step == cfg.max_steps
            if checked:
                dev_accuracy = evaluate(
                    model, tokenizer, task, dev, recipe.rollout.max_new_tokens, recipe.eval.batch_size, text=text
                ).accuracy
            if on_progress:
                on_progress(step, cfg.max_steps, dev_accuracy if checked else None)
            if checked and cfg.target_dev_accuracy is not None and dev_accuracy >= cfg.target_dev_accuracy:
                break
    model.eval()
    return step, dev_accuracy


def supervised_batch(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], text: TextFormat | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded `prompt + answer + <eos>` rows and a mask that is 1 on the answer and <eos>.

    The prompt is rendered as rollouts render it (`text`, default: as it is)."""
    import torch

    prompts = (text or TextFormat()).encode(tokenizer, [e.prompt for e in examples])["input_ids"]
    rows, masks = [], []
    for example, prompt in zip(examples, prompts):
        answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        masks.append([0] * len(prompt) + [1] * len(answer))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    loss_mask = torch.tensor([[0] * (width - len(m)) + m for m in masks], dtype=torch.float32)
    return input_ids, attention_mask, loss_mask
