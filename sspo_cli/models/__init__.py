"""Policies: a tiny decoder with a character tokenizer, or any local Hugging Face causal LM."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.errors import InputError, first_line
from sspo_cli.recipe import ModelConfig, TinyModelConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelError(InputError):
    """A model folder or model option that cannot be used; the message names the recipe key."""


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerBase:
    """One token per character of `alphabet`, plus <pad> <bos> <eos> <unk>; prompts start with <bos>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(alphabet))
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[cfg.architecture]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def load_pretrained(
    cfg: ModelConfig, path: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local folder (never the hub); refuses pickles, runs no remote code unless asked.
    A GGUF file (`.gguf`, `package:PKG/FILE.gguf`) loads as its cached conversion: see `models/gguf_cache.py`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sspo_cli.models.gguf_cache import gguf_model_folder, is_gguf_key

    raw = str(path or cfg.path or "")
    folder = gguf_model_folder(raw) if is_gguf_key(raw) else Path(raw)
    key = "model.path"
    if not folder.is_dir():
        raise ModelError(
            key, f"folder {str(folder)!r} does not exist" if not folder.exists() else f"{str(folder)!r} is not a folder"
        )
    if not (folder / "config.json").is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = f" (to load a GGUF file, name it: {str(folder / ggufs[0])!r})" if ggufs else ""
        raise ModelError(key, f"{str(folder)!r} has no config.json: not a Hugging Face model folder{hint}")
    if not any(folder.glob("*.safetensors")):
        raise ModelError(
            key, f"{str(folder)!r} has no .safetensors weights (pickled .bin weights are refused: they can run code)"
        )
    if cfg.trust_remote_code:
        warnings.warn(f"model.trust_remote_code is on: {folder} may run its own Python code", stacklevel=2)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(key, f"cannot read {folder}/config.json: {first_line(exc)}") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not (
        cfg.trust_remote_code and getattr(config, "auto_map", None)
    ):
        raise ModelError(key, f"{folder} holds a {type(config).__name__}, not a causal language model")
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(name.endswith(CAUSAL_LM_SUFFIXES) for name in architectures):
        # e.g. BERT: its config maps to BertLMHeadModel, but the folder holds an encoder.
        raise ModelError(key, f"{folder} holds a {', '.join(architectures)}, not a causal language model")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(key, f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=cfg.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=cfg.trust_remote_code,
            dtype=_torch_dtype(cfg.dtype),
            attn_implementation=cfg.attn_implementation,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(key, f"cannot load {folder}: {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def load_policy(cfg: ModelConfig, alphabet: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The recipe's policy on its device: a local folder if `model.path` is set, else the tiny model."""
    if cfg.path:
        model, tokenizer = load_pretrained(cfg)
    else:
        tokenizer = build_char_tokenizer(alphabet)
        model = build_tiny_model(cfg.tiny, tokenizer, seed).to(_torch_dtype(cfg.dtype))
    return model.to(resolve_device(cfg.device)), tokenizer


def check_generation_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Sampling stops at the end-of-sequence token: a folder whose tokenizer has none is no causal LM we can train."""
    if tokenizer.eos_token_id is None:
        what = f"the tokenizer ({type(tokenizer).__name__}) has no end-of-sequence token"
        raise ModelError("model.path", f"{what}: not a causal language model with its tokenizer")


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def trainable_parameters(model: PreTrainedModel) -> list[torch.nn.Parameter]:
    """What the optimiser updates: every weight in full fine-tuning, only the adapters under LoRA."""
    return [p for p in model.parameters() if p.requires_grad]


def untied_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: on the CPU, and tied tensors (shared storage) as independent copies."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ptr = tensor.data_ptr()
        out[key] = tensor.detach().cpu().clone() if ptr in seen else tensor.detach().contiguous().cpu()
        seen.add(ptr)
    return out


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelError("model.device", f"unknown device {name!r} ({first_line(exc)})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device", f"{name!r} asked for, but no CUDA device is available")
    return device


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@contextlib.contextmanager
def quiet_transformers(logs: bool = False) -> Iterator[None]:
    """transformers without its progress bars inside (no 'Writing model shards' on every checkpoint); with `logs`,
    without its info and warning lines too (a load report would bury the one line a failure gets)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    if logs:
        logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def set_offline_defaults() -> None:
    """Nothing here downloads: make hub lookups fail fast instead of hanging, and telemetry off."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # ours are in the terminal already
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
