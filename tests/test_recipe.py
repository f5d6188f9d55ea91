"""Recipes: defaults, overrides, and one clear error per bad input."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from sspo_cli.recipe import Recipe, RecipeError, load_recipe, recipe_from_dict
from sspo_cli.tasks import build_task

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "path", [p for p in RECIPES if not p.name.startswith(("variants", "sweep"))], ids=lambda p: p.name
)
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.train.steps >= 0


def test_empty_recipe_gets_every_default(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, ""))
    assert recipe == Recipe()
    assert recipe.objective.name == "sspo" and recipe.objective.gate == "sigmoid"
    assert (recipe.objective.tau_pos, recipe.objective.tau_neg) == (1.0, 1.05)
    assert recipe.task.name == "addition"
    assert recipe.rollout.updates_per_rollout == 4


def test_resolved_round_trips_through_yaml(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", ["objective.name=grpo", "objective.agg=token_mean"])
    again = load_recipe(write(tmp_path, yaml.safe_dump(recipe.resolved())))
    assert again == recipe
    assert again.fingerprint() == recipe.fingerprint()


def test_overrides_parse_yaml_scalars_and_switch_union_members(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(tmp_path, "objective: {name: sspo, tau_pos: 2.0}\n"),
        [
            "objective.name=gmpo",
            "objective.eps_low=0.3",
            "rollout.group_size=4",
            "train.grad_clip=null",
            "tracking.tags.team=rl",
        ],
    )
    assert recipe.objective.name == "gmpo" and recipe.objective.eps_low == 0.3
    assert recipe.rollout.group_size == 4 and isinstance(recipe.rollout.group_size, int)
    assert recipe.train.grad_clip is None
    assert recipe.tracking.tags == {"team": "rl"}


def test_fingerprint_changes_with_any_option() -> None:
    base = recipe_from_dict({}, [])
    assert base.fingerprint() == recipe_from_dict({}, []).fingerprint()
    assert base.fingerprint() != recipe_from_dict({}, ["seed=1"]).fingerprint()
    assert base.fingerprint() != recipe_from_dict({}, ["objective.tau_neg=1.1"]).fingerprint()


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("rollout: {group_sise: 4}\n", [], ["rollout.group_sise", "unknown key", "did you mean 'group_size'"]),
        ("rollout: {temperature: 0}\n", [], ["rollout.temperature", "greater than 0"]),
        ("rollout: {group_size: many}\n", [], ["rollout.group_size", "integer"]),
        ("objective: {name: sppo}\n", [], ["objective.name", "'sppo'", "did you mean 'sspo'"]),
        ("objective: {name: sspo, gate: tanh}\n", [], ["objective.gate", "'tanh'"]),
        ("objective: {name: grpo, eps_low: -0.1}\n", [], ["objective.eps_low"]),
        ("objective: {name: grpo, tau_pos: 1}\n", [], ["objective.tau_pos", "unknown key"]),
        ("task: {name: adition}\n", [], ["task.name", "did you mean 'addition'"]),
        ("", ["rollout.nope=3"], ["--set rollout.nope", "no key 'nope'"]),
        ("", ["objective.tau_poss=3"], ["objective", "did you mean 'tau_pos'"]),
        ("", ["seed"], ["--set", "dotted.key=value"]),
        ("rollout: [1, 2]\n", [], ["rollout"]),
        ("- just\n- a list\n", [], ["top level must be a mapping"]),
    ],
)
def test_bad_recipes_name_the_file_and_key(
    tmp_path: Path, text: str, overrides: list[str], expected: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    message = info.value.render()
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["objective.name=cispo", "objective.correction=token_mask"], "objective.correction"),
        (["objective.m2_threshold=0.04"], "objective.m2_threshold"),
    ],
)
def test_sampler_corrections_are_recipe_options_of_every_objective(overrides: list[str], key: str) -> None:
    """The native engine runs them (decoupled mode); the TRL engine refuses them (tests/test_trl_mapping.py)."""
    objective = recipe_from_dict({}, overrides).objective
    assert getattr(objective, key.split(".")[1]) not in (None, "none")


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "rollout:\n  group_size: 4\n  temperature: [1.0\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "line 4" in str(info.value) or "line 3" in str(info.value)
    assert "column" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_the_tau_sweep_runs_on_the_quickstart_itself() -> None:
    """Same model, task, rollout and training, so the sweep shares the quickstart's cached warm start."""
    quickstart = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    sweep = yaml.safe_load((REPO / "recipes" / "sweep_tau.yaml").read_text())
    for section in ("model", "task", "rollout", "train"):
        assert sweep[section] == quickstart[section], section


# --------------------------------------------------------------------------- the file task's rewards and path

GSM8K_TASK = """task:
  name: file
  path: data/gsm8k.jsonl
  prompt_column: question
  reward:
    - {name: gsm8k, weight: 1.0}
    - {name: format, weight: 0.1}
"""


def test_a_relative_task_path_is_beside_the_recipe_and_saved_absolute(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "r.yaml").write_text(GSM8K_TASK)
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(Path("recipes") / "r.yaml")
    assert recipe.task.path == str(folder / "data" / "gsm8k.jsonl")
    assert recipe.resolved()["task"]["path"] == str(folder / "data" / "gsm8k.jsonl")
    # --set on the command line is relative to where the command runs.
    assert load_recipe(folder / "r.yaml", ["task.path=x.jsonl"]).task.path == str(tmp_path / "x.jsonl")


def test_a_reward_list_round_trips_and_the_format_style_is_filled_in(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, GSM8K_TASK))
    assert [(r.name, r.weight) for r in recipe.task.reward] == [("gsm8k", 1.0), ("format", 0.1)]
    assert recipe.task.reward[1].style == "gsm8k"
    again = load_recipe(write(tmp_path, yaml.safe_dump(recipe.resolved())))
    assert again == recipe and again.fingerprint() == recipe.fingerprint()


def test_match_round_trips_as_the_reward_it_stands_for(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "task: {name: file, path: d.jsonl, match: numeric}\n"))
    assert [r.name for r in recipe.task.reward] == ["numeric"]
    again = load_recipe(write(tmp_path, yaml.safe_dump(recipe.resolved())))
    assert again == recipe


def test_rewards_can_be_set_on_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, "task: {name: file, path: d.jsonl}\n")
    recipe = load_recipe(path, ["task.reward=[{name: regex, pattern: 'Answer: (.*)'}, {name: format}]"])
    assert recipe.task.reward[1].style == "regex" and recipe.task.reward[1].pattern == "Answer: (.*)"


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("{name: file, path: d.jsonl, match: exact, reward: [{name: boxed}]}", ["task", "not both"]),
        (
            "{name: file, path: d.jsonl, reward: [{name: boxd}]}",
            ["task.reward.0.name", "'boxd'", "did you mean 'boxed'"],
        ),
        ("{name: file, path: d.jsonl, reward: [{name: regex}]}", ["task.reward.0.pattern", "required"]),
        ("{name: file, path: d.jsonl, reward: [{name: regex, pattern: '\\d+'}]}", ["task.reward.0.pattern", "group"]),
        ("{name: file, path: d.jsonl, reward: [{name: boxed, weight: 0}]}", ["task.reward.0.weight", "greater than 0"]),
        ("{name: file, path: d.jsonl, reward: [{name: exact}, {name: format}]}", ["format needs a style"]),
        ("{name: file, path: d.jsonl, reward: [{name: format, style: boxed}]}", ["answer reward"]),
        ("{name: file, path: d.jsonl, reward: [{name: boxed, pattern: x}]}", ["task.reward.0.pattern", "unknown key"]),
    ],
)
def test_bad_reward_lists_name_the_key(tmp_path: Path, task: str, expected: list[str]) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, f"task: {task}\n"))
    message = info.value.render()
    for fragment in expected:
        assert fragment in message, message


def test_the_gsm8k_style_recipe_trains_and_evaluates_on_a_local_model_folder(
    tmp_path: Path, model_folder: Path
) -> None:
    """recipes/gsm8k_style.yaml as shipped (chat template, system prompt, boxed + format rewards, LoRA,
    micro-batches, gradient checkpointing, truncation masking), shrunk to CPU size by --set alone.
    (LoRA's exact resume is tested in test_reliability_resume.py.)"""
    import json
    import subprocess

    from conftest import sspo_command

    shrink = {
        "model.path": str(model_folder),
        "model.dtype": "float32",
        "model.device": "cpu",
        "rollout.prompts_per_step": "2",
        "rollout.group_size": "3",
        "rollout.max_new_tokens": "6",
        "task.eval_size": "4",
        "eval.batch_size": "4",
        "eval.every": "2",
        "train.steps": "3",
        "train.checkpoint_every": "2",
        "train.threads": "1",
        "performance.micro_batch_size": "2",
    }
    sets = [arg for key, value in shrink.items() for arg in ("--set", f"{key}={value}")]
    out = tmp_path / "runs"
    trained = subprocess.run(
        sspo_command("train", str(REPO / "recipes" / "gsm8k_style.yaml"), *sets, "-o", str(out), "--quiet"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("gsm8k-style-")]
    assert (run_dir / "checkpoints" / "final" / "adapter_model.safetensors").is_file()
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2, 3]
    assert all(0.0 <= row["rollout/truncated_frac"] <= 1.0 for row in history)

    evaluated = subprocess.run(
        sspo_command("eval", str(run_dir), "--output-dir", str(out)), capture_output=True, text=True, timeout=300
    )
    assert evaluated.returncode == 0, evaluated.stderr
    (report_file,) = (run_dir / "evals").glob("eval-*.json")
    report = json.loads(report_file.read_text())
    assert report["prompt_sample"].startswith("<|im_start|>system\nYou are a careful maths tutor.")
    assert report["prompt_sample"].endswith("Put the final number in \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report["accuracy"] == summary["eval_after"]["accuracy"]


def test_small_arithmetic_data_is_what_its_script_writes() -> None:
    """recipes/data/small_arithmetic.jsonl is regenerated by its script: the two must not drift apart."""
    script = REPO / "recipes" / "data" / "small_arithmetic.py"
    spec = importlib.util.spec_from_file_location("small_arithmetic", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [
        json.loads(line) for line in (REPO / "recipes" / "data" / "small_arithmetic.jsonl").read_text().splitlines()
    ]
    assert rows == module.problems()
    assert len(rows) == 15 * 15 * 2 + 15 * 16 // 2
    assert {"prompt": "What is 13 * 15?", "answer": "195"} in rows
    assert {"prompt": "What is 4 - 9?", "answer": "-5"} not in rows


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("13 * 15 = 195", 1.0),
        ("To calculate 13 * 15, you multiply 13 by 15, which gives you 195.", 1.0),
        ("13 * 15 = 195\n\nThis is a multi-step calculation with 2 steps.", 0.0),  # went on: the last number counts
        ("13 * 15 = 190", 0.0),
        ("The product is one hundred and ninety-five.", 0.0),
    ],
)
def test_smollm2_small_arithmetic_rewards_the_last_number(completion: str, reward: float) -> None:
    """The shipped recipe's task as a user gets it: 570 problems, 256 held out, the last integer of an answer
    that ended graded."""
    task = build_task(load_recipe(REPO / "recipes" / "smollm2_small_arithmetic.yaml").task)
    assert (len(task.eval), len(task.dev), len(task.train)) == (256, 64, 250)
    (example,) = [e for e in task.train + task.dev + task.eval if e.prompt == "What is 13 * 15?"]
    assert task.reward(completion, example) == reward
    assert task.reward(completion, example, truncated=True) == 0.0  # cut off at max_new_tokens: never counted
