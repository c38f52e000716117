"""Ready-made pipelines (installed as ``layered.pipelines``): ``medical`` and ``support``.

The assistants' modules load their prompt files when imported, so :func:`assistant` imports
one only when it is asked for.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from layered.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    from layered.pipeline import Pipeline

log = logging.getLogger(__name__)

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


def cached_pipeline(cache: Path, *, name: str, expect: Mapping[str, str], build: Callable[[], "Pipeline"], rebuild: bool = False,
                    **load_options: Any) -> tuple["Pipeline", bool]:
    """The pipeline of the bundled assistant ``name`` saved in ``cache`` when it loads intact,
    carries no adapter (adapters come from the package, never the cache) and its metadata holds
    every ``expect`` item (the hash of what it was built from, and how it was embedded: an index
    embedded otherwise is not reused); else ``build()``, saved to ``cache`` atomically with
    ``assistant: name`` in its metadata. Returns ``(pipeline, reused)``.

    Raises, touching nothing, when ``cache`` holds *another* assistant's pipeline
    (:class:`ConfigError`: one ``--cache-dir`` given to both demos) or files this library did
    not save (:class:`~layered.errors.ArtifactError`): rebuilding would throw them away.
    """
    from layered.artifacts import check_replaceable, recover_interrupted_swap
    from layered.pipeline import Pipeline
    from layered.persistence import CONFIG_FILE
    from layered.protocols import AdapterHost

    recover_interrupted_swap(cache)
    check_replaceable(cache)  # before indexing for minutes, not when saving
    owner = _saved_assistant(cache / CONFIG_FILE)
    if owner not in (None, name):
        raise ConfigError(f"{cache} holds the {owner} assistant's index; give the {name} assistant a folder of its own "
                          "(--cache-dir), or delete that one")
    if cache.exists() and not rebuild:
        try:
            cached = Pipeline.load(cache, **load_options)
        except ArtifactError as e:
            log.warning("ignoring the cached pipeline in %s (%s); rebuilding", cache, e)
        else:
            stale = sorted(k for k, v in expect.items() if cached.metadata.get(k) != v)
            if not stale and not (isinstance(cached.generator, AdapterHost) and cached.generator.adapters):
                return cached, True
            log.info("the cached pipeline in %s was built otherwise (%s); rebuilding", cache, ", ".join(stale) or "adapters")
    pipe = build()
    pipe.metadata["assistant"] = name
    pipe.save(cache)
    return pipe, False


def _saved_assistant(config: Path) -> str | None:
    """The ``assistant`` a saved pipeline's config names (None: no readable config, or none named)."""
    try:
        owner = json.loads(config.read_text(encoding="utf-8")).get("metadata", {}).get("assistant")
    except (OSError, ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None
