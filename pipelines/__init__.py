"""Ready-made pipelines (installed as ``layered.pipelines``): ``medical`` and ``support``."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Where the demos cache their pipelines: ``$LAYERED_CACHE``, else ``$XDG_CACHE_HOME/layered``, else ``~/.cache/layered``."""
    root = os.environ.get("LAYERED_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layered"
    return Path(root)
