"""Ready-made pipelines (installed as ``layered.pipelines``): ``medical`` and ``support``.

The assistants' modules load their prompt files when imported, so :func:`assistant` imports
one only when it is asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from layered.errors import ConfigError

BUNDLED = ("medical", "support")


def assistant(name: str) -> ModuleType:
    """The module of the bundled assistant ``name`` (``medical`` or ``support``)."""
    if name not in BUNDLED:
        raise ConfigError(f"{name!r} is not a bundled assistant; choose from {', '.join(BUNDLED)}")
    return importlib.import_module(f"layered.pipelines.{name}")


def cache_folder(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where the bundled assistant ``name`` keeps its built pipeline: ``cache_dir`` when given,
    else ``demo-NAME`` in the shared cache (so ``demo``, ``tune`` and ``compare`` reuse one index)."""
    from layered.models import cache_dir as shared

    return Path(cache_dir) if cache_dir else shared() / f"demo-{name}"
