"""LoRA through peft: low-rank adapters trained on a frozen base model (`model.lora`).

    base model (tiny or a folder, after the warm start) -> `attach_lora` -> Adapter
    policy.model        the base model with adapter layers injected in place: sampling, log-probs
                        and eval see a plain transformers model
    Adapter.peft_model  peft's wrapper of the same model: saves the adapter, turns it off for the
                        KL reference (the base model itself, not a second copy)

A LoRA checkpoint holds the adapter (peft's `save_pretrained`: adapter_config.json and
adapter_model.safetensors); for a tiny-model base, which exists nowhere else, also the base
model in `base/`. A folder base is named by `model.path` and never copied.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sspo_cli.errors import first_line
from sspo_cli.models import ModelError, load_pretrained, untied_state
from sspo_cli.recipe import LoraConfig, ModelConfig

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FOLDER = "base"  # in a checkpoint of a tiny-model base: the frozen base as a Hugging Face model folder
TARGETS_KEY = "model.lora.target_modules"


@dataclass
class Adapter:
    peft_model: PeftModel
    base_weights: dict[str, torch.Tensor]  # the frozen base's tensors under the base's own names (no copies)
    base_in_checkpoint: bool  # a tiny-model base is saved with each checkpoint; a folder base is not

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model: every adapter layer off, inside the block."""
        with self.peft_model.disable_adapter():
            yield


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def holds_model(folder: Path) -> bool:
    """A Hugging Face model folder, or a LoRA checkpoint (an adapter, on its base)."""
    return (folder / "config.json").is_file() or is_adapter_folder(folder)


def require_peft() -> None:
    """ModelError('model.lora') saying how to install peft, if it cannot be imported."""
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            "model.lora", f"LoRA needs peft, which cannot be imported ({exc}); pip install -e '.[lora]'"
        ) from None


def peft_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    # bias stays "none": trained biases would not be switched off with the adapter, so the KL
    # reference would drift from the base model.
    return PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules, bias="none"
    )


def check_targets(cfg: LoraConfig, model: PreTrainedModel) -> None:
    """peft is there and every name in `target_modules` matches a module of `model` (peft's rule);
    before anything is written."""
    require_peft()
    if cfg.target_modules == "all-linear":
        return
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [name for name, _ in model.named_modules()]
    for target in cfg.target_modules:
        config = peft_config(cfg.model_copy(update={"target_modules": [target]}))
        if not any(check_target_module_exists(config, name) for name in names):
            raise ModelError(
                TARGETS_KEY,
                f"{target!r} matches no module of the model (its linear layers: {', '.join(linear_names(model))})",
            )


def linear_names(model: PreTrainedModel) -> list[str]:
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def attach_lora(cfg: LoraConfig, model: PreTrainedModel, seed: int, base_in_checkpoint: bool) -> Adapter:
    """Inject adapters into `model` (in place) and freeze everything else; B starts at zero, so the
    policy starts as the base model. A's random init draws from `seed` alone."""
    import torch
    from peft import get_peft_model

    base_weights = dict(model.state_dict())  # peft keeps these very tensors as the base layers' weights
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations, reached through peft
        try:
            peft_model = get_peft_model(model, peft_config(cfg))
        except ValueError as exc:  # a module type peft cannot adapt, or no match
            raise ModelError(TARGETS_KEY, first_line(exc)) from None
    # Reentrant gradient checkpointing passes no gradient through blocks whose inputs need none.
    model.enable_input_require_grads()
    return Adapter(peft_model, base_weights, base_in_checkpoint)


# --------------------------------------------------------------------------- checkpoints


def save_adapter(adapter: Adapter, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """The adapter (peft's files) and the tokenizer into `folder`."""
    adapter.peft_model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def save_base(adapter: Adapter, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """The frozen base as a Hugging Face model folder (config, safetensors weights, tokenizer)."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(untied_state(adapter.base_weights), str(folder / "model.safetensors"), metadata={"format": "pt"})
    adapter.peft_model.get_base_model().config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def adapter_weight_problems(adapter: Adapter, weights: dict[str, torch.Tensor]) -> str | None:
    """Load peft-saved adapter weights; a description of what does not fit, or None."""
    from peft import set_peft_model_state_dict

    expected = set(_saved_names(adapter))
    if set(weights) != expected:
        unexpected, missing = sorted(set(weights) - expected), sorted(expected - set(weights))
        return f"unexpected {unexpected[:3]}" if unexpected else f"missing {missing[:3]}"
    try:
        set_peft_model_state_dict(adapter.peft_model, weights)
    except RuntimeError as exc:
        return first_line(exc)
    return None


def _saved_names(adapter: Adapter) -> list[str]:
    from peft import get_peft_model_state_dict

    return list(get_peft_model_state_dict(adapter.peft_model))


# --------------------------------------------------------------------------- eval


def load_trained(cfg: ModelConfig, folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A checkpoint folder as a model: a whole model folder, or a LoRA adapter on its base (the
    checkpoint's own `base/`, else the recipe's `model.path`). Adapters stay unmerged, so the
    numbers are those of training."""
    if not is_adapter_folder(folder):
        return load_pretrained(cfg, folder)
    require_peft()
    from peft import PeftModel

    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ModelError("model.path", f"{folder} has no {ADAPTER_WEIGHTS} (pickled adapter weights are refused)")
    base_folder = folder / BASE_FOLDER if (folder / BASE_FOLDER).is_dir() else cfg.path
    if base_folder is None:
        raise ModelError("model.path", f"{folder} holds a LoRA adapter without its base model: set model.path")
    model, tokenizer = load_pretrained(cfg, base_folder)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            peft_model = PeftModel.from_pretrained(model, folder, is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(
            "model.path", f"the adapter in {folder} does not fit {base_folder}: {first_line(exc)}"
        ) from None
    return peft_model.get_base_model().eval(), tokenizer
