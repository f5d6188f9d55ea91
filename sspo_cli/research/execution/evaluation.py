"""`sspo eval TARGET`: greedy accuracy or sampled pass@k of a trained policy, on its own task or another.

TARGET is a run folder, a checkpoint folder (a Hugging Face model folder, or a LoRA adapter on
its base), or an MLflow run id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.models import resolve_device, set_offline_defaults
from sspo_cli.models.lora import holds_model, load_trained
from sspo_cli.recipe import Recipe, recipe_from_dict
from sspo_cli.research import ResearchError
from sspo_cli.research.analysis.stats import default_ks, mean, mean_pass_at_k
from sspo_cli.research.planning.recipe_files import read_yaml_mapping
from sspo_cli.rollout.collect import generate, grade_all
from sspo_cli.rollout.prompts import text_format
from sspo_cli.run.folder import CHECKPOINTS, RECIPE_FILE, SUMMARY_FILE, final_checkpoint
from sspo_cli.run.tracking import Tracker, default_tracking_uri, flatten, open_client
from sspo_cli.tasks import build_task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.rollout.prompts import TextFormat
    from sspo_cli.tasks import Example, Task

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
SPLITS = ("eval", "dev", "train")


@dataclass
class EvalTarget:
    checkpoint: Path
    recipe_data: dict[str, Any] | None  # the run's resolved recipe, if one was found
    run_id: str | None = None
    run_dir: Path | None = None
    tracking_uri: str | None = None


@dataclass
class EvalOptions:
    split: str = "eval"
    size: int | None = None
    samples: int = 1
    temperature: float | None = None  # None: greedy when samples == 1, the recipe's temperature otherwise
    ks: list[int] | None = None
    seed: int = 0
    batch_size: int | None = None
    max_new_tokens: int | None = None
    device: str | None = None


@dataclass
class EvalReport:
    target: str
    checkpoint: str
    task: str
    split: str
    size: int
    decoding: str
    samples: int
    accuracy: float
    mean_reward: float
    mean_length: float
    pass_at: dict[int, float] = field(default_factory=dict)
    correct_per_prompt: list[int] | None = None  # how many of the `samples` completions of each prompt were correct
    reward_per_prompt: list[float] | None = None  # the mean reward of each prompt's `samples` completions
    prompts: list[str] | None = None  # the evaluated prompts, in the order of correct_per_prompt
    prompt_sample: str | None = None  # the first prompt as the model read it (chat template applied where on)
    run_id: str | None = None
    eval_run_id: str | None = None
    file: str | None = None

    def metrics(self) -> dict[str, float]:
        out = {
            "eval/accuracy": self.accuracy,
            "eval/mean_reward": self.mean_reward,
            "eval/mean_length": self.mean_length,
        }
        out.update({f"eval/pass_at_{k}": v for k, v in self.pass_at.items()})
        return out


# --------------------------------------------------------------------------- target


def resolve_target(target: str, tracking_uri: str | None, output_dir: Path) -> EvalTarget:
    path = Path(target)
    if path.is_dir():
        return _target_from_folder(path)
    if path.exists():
        raise ResearchError(
            "TARGET", f"{target!r} is a file: give a run folder, a checkpoint folder or an MLflow run id"
        )
    if not RUN_ID.match(target):
        raise ResearchError(
            "TARGET", f"{target!r} is neither an existing folder nor an MLflow run id (32 hex characters)"
        )
    return _target_from_mlflow(target, tracking_uri, output_dir)


def _target_from_folder(folder: Path) -> EvalTarget:
    if holds_model(final_checkpoint(folder)):
        return _target_in_run_dir(folder, final_checkpoint(folder))
    if holds_model(folder):
        for parent in list(folder.parents)[:3]:  # run_dir/checkpoints/<name>
            if (parent / RECIPE_FILE).is_file() and (parent / CHECKPOINTS).is_dir():
                return _target_in_run_dir(parent, folder)
        return EvalTarget(folder, None)
    raise ResearchError(
        "TARGET",
        f"{str(folder)!r} is neither a run folder (with checkpoints/final) nor a checkpoint folder (with config.json or adapter_config.json)",
    )


def _target_in_run_dir(run_dir: Path, checkpoint: Path) -> EvalTarget:
    recipe_data = read_yaml_mapping(run_dir / RECIPE_FILE, "recipe")
    summary = _read_json(run_dir / SUMMARY_FILE)
    return EvalTarget(checkpoint, recipe_data, summary.get("run_id"), run_dir, summary.get("tracking_uri"))


def _target_from_mlflow(run_id: str, tracking_uri: str | None, output_dir: Path) -> EvalTarget:
    """The run's folder if it is on this machine, else its logged checkpoint and recipe, downloaded once."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri(output_dir)
    client = open_client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ResearchError("TARGET", f"no MLflow run {run_id} in {uri}") from None
    run_dir = run.data.tags.get("sspo.run_dir")
    if run_dir and holds_model(final_checkpoint(Path(run_dir))):
        target = _target_in_run_dir(Path(run_dir), final_checkpoint(Path(run_dir)))
        target.tracking_uri = uri
        return target
    cache = output_dir / ".cache" / "eval" / run_id
    checkpoint = cache / "final_checkpoint"
    if not holds_model(checkpoint):
        try:
            cache.mkdir(parents=True, exist_ok=True)
            client.download_artifacts(run_id, "final_checkpoint", str(cache))
            client.download_artifacts(run_id, "recipe.yaml", str(cache))
        except Exception as exc:  # MLflow raises several types for missing artifacts
            raise ResearchError(
                "TARGET",
                f"run {run_id} has no final_checkpoint/recipe.yaml artifacts to evaluate ({str(exc).splitlines()[0]})",
            ) from None
    return EvalTarget(checkpoint, read_yaml_mapping(cache / "recipe.yaml", "recipe"), run_id, None, uri)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def eval_recipe(target: EvalTarget, recipe_path: Path | None, task: str | None, overrides: Sequence[str]) -> Recipe:
    """The recipe that decides the task (and model options): the run's, or --recipe; then --task and --set."""
    if recipe_path is not None:
        data, source = read_yaml_mapping(recipe_path, "recipe"), str(recipe_path)
        data.pop("sweep", None)
    elif target.recipe_data is not None:
        data, source = dict(target.recipe_data), str(target.run_dir or target.checkpoint)
    else:
        raise ResearchError(
            "--recipe",
            f"{target.checkpoint} is not inside a run folder: give --recipe (for the task) and, if needed, --task/--set",
        )
    if task:
        data["task"] = task_section(task)
    return recipe_from_dict(data, list(overrides), source + (f" + --task {task}" if task else ""))


def task_section(task: str) -> dict[str, Any]:
    """--task: a YAML file (a task mapping, or a recipe with a `task:` section) or a task name."""
    path = Path(task)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        data = read_yaml_mapping(path, "--task")
        section = data.get("task", data)
        if not isinstance(section, dict):
            raise ResearchError("--task", f"{task}: `task` must be a mapping")
        return section
    return {"name": task}


# --------------------------------------------------------------------------- evaluation


def evaluate_target(target_text: str, target: EvalTarget, recipe: Recipe, options: EvalOptions) -> EvalReport:
    import torch

    set_offline_defaults()
    _check_options(options)
    task = build_task(recipe.task)
    examples = getattr(task, options.split)
    if options.size is not None:
        if options.size > len(examples):
            raise ResearchError(
                "--size", f"the {options.split} split has only {len(examples)} examples, asked for {options.size}"
            )
        examples = examples[: options.size]
    if not examples:
        raise ResearchError("--split", f"the {options.split} split of task {task.name!r} is empty")
    model_cfg = recipe.model.model_copy(update={"device": options.device}) if options.device else recipe.model
    model, tokenizer = load_trained(model_cfg, target.checkpoint)
    model = model.to(resolve_device(model_cfg.device))
    text = text_format(recipe, tokenizer)
    max_new = options.max_new_tokens or recipe.eval.max_new_tokens or recipe.rollout.max_new_tokens
    batch_size = options.batch_size or recipe.eval.batch_size
    common = dict(
        target=target_text,
        checkpoint=str(target.checkpoint),
        task=task.name,
        split=options.split,
        size=len(examples),
        run_id=target.run_id,
    )
    temperature = (
        options.temperature
        if options.temperature is not None
        else (recipe.rollout.temperature if options.samples > 1 else None)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        correct, rewards, lengths = sample_many(
            model, tokenizer, task, examples, options.samples, max_new, batch_size, temperature, text
        )
    accuracy = mean_pass_at_k(correct, options.samples, 1)
    pass_at = (
        {}
        if temperature is None
        else {k: mean_pass_at_k(correct, options.samples, k) for k in options.ks or default_ks(options.samples)}
    )
    decoding = "greedy" if temperature is None else f"sampled, temperature {temperature}"
    if options.samples > 1:
        decoding += f", {options.samples} samples per prompt"
    return EvalReport(
        **common,
        decoding=decoding,
        samples=options.samples,
        accuracy=accuracy,
        mean_reward=mean(rewards),
        mean_length=mean(lengths),
        pass_at=pass_at,
        correct_per_prompt=correct,
        reward_per_prompt=[mean(rewards[i : i + options.samples]) for i in range(0, len(rewards), options.samples)],
        prompts=[example.prompt for example in examples],
        prompt_sample=text.prompt_text(tokenizer, examples[0].prompt),
    )


def _check_options(options: EvalOptions) -> None:
    if options.split not in SPLITS:
        raise ResearchError("--split", f"{options.split!r} is not a split (choose from {', '.join(SPLITS)})")
    if options.samples < 1:
        raise ResearchError("--samples", f"must be at least 1, got {options.samples}")
    if options.size is not None and options.size < 1:
        raise ResearchError("--size", f"must be at least 1, got {options.size}")
    if options.temperature is not None and options.temperature <= 0:
        raise ResearchError(
            "--temperature", f"must be > 0 (leave it out for greedy decoding), got {options.temperature}"
        )
    for k in options.ks or []:
        if not 1 <= k <= options.samples:
            raise ResearchError("--k", f"pass@{k} needs 1 <= k <= --samples ({options.samples})")


def sample_many(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    samples: int,
    max_new_tokens: int,
    batch_size: int,
    temperature: float | None,
    text: TextFormat | None = None,
) -> tuple[list[int], list[float], list[float]]:
    """`samples` completions per example (greedy when `temperature` is None): (correct count per example,
    every reward, every length). Batches as the trainer's eval does, so greedy results match it."""
    was_training = model.training
    model.eval()
    per_batch = max(1, batch_size // samples)
    correct: list[int] = []
    rewards: list[float] = []
    lengths: list[float] = []
    for start in range(0, len(examples), per_batch):
        batch = examples[start : start + per_batch]
        repeated = [example for example in batch for _ in range(samples)]
        rollout = generate(model, tokenizer, [e.prompt for e in repeated], max_new_tokens, temperature, text=text)
        grades = grade_all(task, repeated, rollout.completions, rollout.truncated)
        rewards += [g.reward for g in grades]
        lengths += rollout.completion_mask.sum(1).tolist()
        for index in range(len(batch)):
            correct.append(sum(g.correct for g in grades[index * samples : (index + 1) * samples]))
    model.train(was_training)
    return correct, rewards, lengths


# --------------------------------------------------------------------------- records


def save_and_log(
    report: EvalReport,
    target: EvalTarget,
    recipe: Recipe,
    options: EvalOptions,
    output_dir: Path,
    tracking_uri: str | None,
    track: bool,
) -> EvalReport:
    """eval JSON next to the run (or under OUTPUT_DIR/evals), and an MLflow run nested under the trained run."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = (target.run_dir / "evals") if target.run_dir else output_dir / "evals"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"eval-{report.task}-{report.split}-{stamp}.json"
    report.file = str(path)
    if track:
        uri = tracking_uri or target.tracking_uri or default_tracking_uri(output_dir)
        experiment = recipe.tracking.experiment
        parent = None
        if target.run_id:
            client = open_client(uri)
            try:
                run = client.get_run(target.run_id)
                parent = target.run_id
                experiment = client.get_experiment(run.info.experiment_id).name
            except Exception:  # the trained run lives in another store: log a stand-alone run that names it
                parent = None
        artifact_root = (target.run_dir.parent if target.run_dir else output_dir) / "mlartifacts"
        tags = {"sspo.kind": "eval", "sspo.checkpoint": str(target.checkpoint.resolve())}
        if target.run_id:
            tags["sspo.eval_of"] = target.run_id
        params = {
            "split": options.split,
            "size": report.size,
            "samples": options.samples,
            "decoding": report.decoding,
            "seed": options.seed,
            **{f"recipe.{k}": v for k, v in flatten({"task": recipe.task.model_dump(mode="json")}).items()},
        }
        tracker = Tracker.start(
            uri, experiment, f"eval-{report.task}-{report.split}", params, tags, artifact_root, parent
        )
        tracker.log_metrics(report.metrics(), step=0)
        report.eval_run_id = tracker.run_id
        path.write_text(json.dumps(report.__dict__, indent=2, default=str))
        tracker.log_artifact(path)
        tracker.finish("FINISHED")
    else:
        path.write_text(json.dumps(report.__dict__, indent=2, default=str))
    return report


def report_rows(report: EvalReport) -> dict[str, Any]:
    rows = [("accuracy" if report.samples == 1 else "accuracy (pass@1)", report.accuracy, "percent")]
    rows += [
        (f"pass@{k}", v, "percent")
        for k, v in sorted(report.pass_at.items())
        if not (k == 1 and report.samples > 1) and report.samples > 1
    ]
    rows += [("mean reward", report.mean_reward, "float"), ("mean length (tokens)", report.mean_length, "float")]
    caption = (
        f"{report.decoding}; pass@k: unbiased estimator 1 - C(n-c,k)/C(n,k), averaged over prompts"
        if report.samples > 1
        else report.decoding
    )
    return {"title": f"{report.task} / {report.split} split, {report.size} prompts", "caption": caption, "rows": rows}
