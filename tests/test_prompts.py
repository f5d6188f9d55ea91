"""Prompts, chat templates, stop strings and truncation, on real tokenizers and models.

The chat model is the folder of tests/model_folder.py (byte-level BPE with a `<|im_start|>` chat
template, random tiny Qwen2); the plain one is the tiny model with its character tokenizer.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import sspo_command, write_sums_file

from sspo_cli.recipe import RecipeError, recipe_from_dict
from sspo_cli.rollout.collect import generate, loss_mask, truncated_fraction
from sspo_cli.rollout.prompts import PromptError, TextFormat, text_format
from sspo_cli.tasks import ADDITION_ALPHABET, build_task

SYSTEM = "You are terse."


def recipe(**sections):
    return recipe_from_dict(sections, [])


@pytest.fixture(scope="module")
def chat_policy(model_folder: Path):
    from sspo_cli.models import load_pretrained

    return load_pretrained(recipe(model={"path": str(model_folder)}).model)


# --------------------------------------------------------------------------- prompt templates


def test_the_default_template_keeps_the_addition_prompts_byte_for_byte() -> None:
    task = build_task(recipe(task={"name": "addition", "eval_size": 16, "dev_size": 16}).task)
    prompts = {e.prompt for e in task.train + task.dev + task.eval}
    assert prompts == {f"{a}+{b}=" for a in range(10, 100) for b in range(10, 100)}
    assert task.alphabet == ADDITION_ALPHABET


def test_a_template_fills_the_question_and_its_characters_join_the_alphabet() -> None:
    cfg = recipe(task={"name": "addition", "eval_size": 16, "dev_size": 16, "prompt_template": "Q {question} {{A}}"})
    task = build_task(cfg.task)
    assert all(e.prompt.startswith("Q ") and e.prompt.endswith("= {A}") for e in task.train)
    assert {"Q", "A", "{", "}"} <= set(task.alphabet)


def test_a_file_task_fills_its_prompt_column(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} + 1", "answer": str(i + 1)}) + "\n" for i in range(8)))
    cfg = recipe(
        task={"name": "file", "path": str(data), "eval_size": 2, "dev_size": 0, "prompt_template": "Add: {question}."}
    )
    task = build_task(cfg.task)
    assert {e.prompt for e in task.train + task.eval} == {f"Add: {i} + 1." for i in range(8)}


@pytest.mark.parametrize(
    ("template", "expected"),
    [("{answer} {question}", "{answer}"), ("{}", "{}"), ("no question", "has no {question}"), ("{question", "brace")],
)
def test_a_bad_template_names_the_key(template: str, expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        recipe(task={"prompt_template": template})
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("task.prompt_template") and expected in err.value.problems[0]


# --------------------------------------------------------------------------- chat templates


def test_auto_applies_the_folders_chat_template_with_the_system_prompt(model_folder: Path, chat_policy) -> None:
    _, tokenizer = chat_policy
    cfg = recipe(model={"path": str(model_folder)}, task={"system_prompt": SYSTEM})
    text = text_format(cfg, tokenizer)
    expected = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n3+4=<|im_end|>\n<|im_start|>assistant\n"
    assert text.chat and text.prompt_text(tokenizer, "3+4=") == expected
    ids = text.encode(tokenizer, ["3+4="])["input_ids"][0]
    assert tokenizer.decode(ids) == expected  # no special token added twice
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


def test_off_leaves_the_prompt_as_it_is(model_folder: Path, chat_policy) -> None:
    _, tokenizer = chat_policy
    text = text_format(recipe(model={"path": str(model_folder), "chat_template": "off"}), tokenizer)
    assert not text.chat and text.prompt_text(tokenizer, "3+4=") == "3+4="


def test_the_tiny_model_has_no_chat_template() -> None:
    from sspo_cli.models import build_char_tokenizer

    tokenizer = build_char_tokenizer(ADDITION_ALPHABET)
    assert text_format(recipe(), tokenizer) == TextFormat()
    with pytest.raises(PromptError) as on:
        text_format(recipe(model={"chat_template": "on"}), tokenizer)
    assert on.value.key == "model.chat_template"
    with pytest.raises(PromptError) as system:
        text_format(recipe(task={"system_prompt": SYSTEM}), tokenizer)
    assert system.value.key == "task.system_prompt"


def test_a_special_token_stop_string_ends_like_eos(model_folder: Path, chat_policy) -> None:
    _, tokenizer = chat_policy
    text = text_format(recipe(model={"path": str(model_folder)}, rollout={"stop": ["<|im_start|>", "\n\n"]}), tokenizer)
    assert text.stop == ("\n\n",) and text.stop_ids == (tokenizer.convert_tokens_to_ids("<|im_start|>"),)
    assert text.end_ids(tokenizer) == (tokenizer.eos_token_id, *text.stop_ids)


def test_the_models_own_end_tokens_end_a_completion_too(tmp_path: Path, model_folder: Path) -> None:
    """An instruct model's generation config ends a turn at <|im_end|> and at <|endoftext|>; its tokenizer names one."""
    import shutil

    from sspo_cli.models import load_pretrained

    folder = shutil.copytree(model_folder, tmp_path / "model")
    cfg = recipe(model={"path": str(folder)})
    _, tokenizer = load_pretrained(cfg.model)
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    generation = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": [im_end, endoftext]}))
    model, tokenizer = load_pretrained(cfg.model)
    assert tokenizer.eos_token_id == im_end
    assert text_format(cfg, tokenizer).end_ids(tokenizer, model) == (im_end, endoftext)  # each once, <eos> first
    assert TextFormat(stop_ids=(endoftext,)).end_ids(tokenizer, model) == (im_end, endoftext)
    assert TextFormat().end_ids(tokenizer) == (im_end,)  # no model: the tokenizer's <eos> alone


# --------------------------------------------------------------------------- stop strings


def greedy(policy, text: TextFormat, sampler: str = "kv_cache", max_new_tokens: int = 24):
    from sspo_cli.recipe import PerformanceConfig

    model, tokenizer = policy
    return generate(
        model, tokenizer, ["3+4=", "12+30="], max_new_tokens, None, PerformanceConfig(sampler=sampler), text=text
    )


@pytest.mark.parametrize("sampler", ["kv_cache", "hf_generate"])
def test_a_stop_string_cuts_the_completion_and_masks_what_follows(chat_policy, sampler: str) -> None:
    _, tokenizer = chat_policy
    chat = TextFormat(chat=True)
    free = greedy(chat_policy, chat, sampler)
    first = free.completions[0]
    assert len(first) >= 6, first  # the random model rambles on; take a stop string from the middle
    stop = first[3:5]
    before = first[: first.find(stop)]
    stopped = greedy(chat_policy, TextFormat(chat=True, stop=(stop,)), sampler)
    assert stopped.completions[0] == before  # the stop string is not part of the completion
    assert stopped.truncated[0] is False
    # The mask ends at the token that completed the stop string: what it counts holds the stop string,
    # one token fewer does not.
    kept = int(stopped.completion_mask[0].sum())
    tokens = stopped.completion_ids[0].tolist()
    assert stop in tokenizer.decode(tokens[:kept]) and stop not in tokenizer.decode(tokens[: kept - 1])
    assert tokens[:kept] == free.completion_ids[0].tolist()[:kept]  # the same tokens up to the stop
    assert stopped.completion_mask[0, kept:].sum() == 0


def test_both_samplers_end_at_the_same_stop(chat_policy) -> None:
    free = greedy(chat_policy, TextFormat(chat=True))
    stop = free.completions[1][2:4]
    ours = greedy(chat_policy, TextFormat(chat=True, stop=(stop,)))
    theirs = greedy(chat_policy, TextFormat(chat=True, stop=(stop,)), "hf_generate")
    assert ours.completions == theirs.completions
    assert ours.completion_mask.sum(1).tolist() == theirs.completion_mask.sum(1).tolist()


# --------------------------------------------------------------------------- truncation


def test_truncated_completions_are_counted_and_can_be_masked_out_of_the_gradient(chat_policy) -> None:
    import torch

    from sspo_cli.objectives import build_objective

    rollout = greedy(chat_policy, TextFormat(chat=True), max_new_tokens=3)  # too short to reach <eos>
    assert rollout.truncated == [True, True] and truncated_fraction(rollout) == 1.0
    assert torch.equal(loss_mask(rollout, False), rollout.completion_mask)
    assert loss_mask(rollout, True).sum() == 0

    # One finished row beside one cut off: only the finished one moves the loss.
    rollout.truncated = [False, True]
    mask = loss_mask(rollout, True)
    logp = torch.randn(mask.shape, requires_grad=True)
    out = build_objective({"name": "sspo"})(logp, logp.detach(), torch.tensor([1.0, -1.0]), mask)
    out.loss.backward()
    assert logp.grad[1].abs().sum() == 0 and logp.grad[0].abs().sum() > 0


# --------------------------------------------------------------------------- through the CLI


def test_train_and_eval_a_chat_model_folder_with_stop_strings(tmp_path: Path, model_folder: Path) -> None:
    data = write_sums_file(tmp_path)
    recipe_file = tmp_path / "chat.yaml"
    recipe_file.write_text(
        f"""
name: chat
model: {{path: {model_folder}, chat_template: on}}
task:
  name: file
  path: {data}
  eval_size: 4
  dev_size: 4
  prompt_template: "What is {{question}}? Put the answer in \\\\boxed{{{{}}}}."
  system_prompt: {SYSTEM}
  reward: [{{name: boxed}}]
rollout: {{prompts_per_step: 2, group_size: 2, max_new_tokens: 8, stop: ["\\n\\n"], mask_truncated_completions: true}}
train: {{steps: 2, threads: 1, checkpoint_every: 2, warm_start: {{max_steps: 2, batch_size: 4, eval_every: 2, target_dev_accuracy: null}}}}
eval: {{every: 2, batch_size: 8}}
"""
    )
    trained = subprocess.run(
        sspo_command("train", str(recipe_file), "-o", str(tmp_path / "runs"), "--quiet"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and p.name.startswith("chat-")]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2]
    assert all(0.0 <= row["rollout/truncated_frac"] <= 1.0 for row in history)

    evaluated = subprocess.run(
        sspo_command("eval", str(run_dir), "--output-dir", str(tmp_path / "runs")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    (report_file,) = (run_dir / "evals").glob("eval-*.json")
    report = json.loads(report_file.read_text())
    question = report["prompts"][0]
    assert question.startswith("What is ") and question.endswith("Put the answer in \\boxed{}.")
    assert report["prompt_sample"] == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
