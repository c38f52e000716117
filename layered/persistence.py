"""Saved pipelines: the config a pipeline is rebuilt from, atomic save, checked load.

A saved folder holds ``pipeline.json`` (the settings and each slot's config, with its
registered ``kind``), the files of parts that have their own (an index, adapter weights)
and a sha256 manifest, written by :func:`layered.artifacts.save_folder_atomically` and
checked by :func:`~layered.artifacts.verify_manifest` before anything is read. A
hand-edited or hostile config fails with one :class:`~layered.errors.ArtifactError` line
naming the field; a folder contacts no host and reads no secret on its own
(:mod:`layered.outbound`). :class:`~layered.pipeline.Pipeline`'s ``config``/``save``/``load``
/``add_adapter`` delegate here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import layered
from layered import registry
from layered.answers import DEFAULT_REFUSAL
from layered.artifacts import atomic_write_json, read_json, save_folder_atomically, verify_manifest
from layered.errors import ArtifactError, ConfigError
from layered.outbound import Trust, checked_slots
from layered.prompts.conversation import DEFAULT_QUERY, QUERY_METHODS
from layered.protocols import AdapterInstaller, LoadsFiles, Persistable, SavesFiles, provides

if TYPE_CHECKING:
    from layered.pipeline import Pipeline

log = logging.getLogger(__name__)

CONFIG_FILE = "pipeline.json"
FORMAT_VERSION = 1
SLOTS = ("generator", "prompt", "retriever", "router")

P = TypeVar("P", bound="Pipeline")


def pipeline_config(pipe: Pipeline) -> dict[str, Any]:
    """Everything needed to rebuild ``pipe``, as JSON-ready data."""
    parts = {"generator": pipe.generator, "prompt": pipe.prompt, "retriever": pipe.retriever, "router": pipe.router}
    cfg: dict[str, Any] = {
        "format": FORMAT_VERSION, "layered_version": layered.__version__, "k": pipe.k, "metadata": pipe.metadata,
        "min_score": pipe.min_score, "refusal": pipe.refusal, "grounding": pipe.grounding,
        "history_query": pipe.history_query, "abstain": None if pipe.abstain is None else pipe.abstain.to_dict(),
    }
    for name, part in parts.items():
        if part is None:
            cfg[name] = None
            continue
        if not provides(part, Persistable):
            raise ConfigError(
                f"the {name} ({type(part).__name__}) has no config() method, so the pipeline cannot be saved; "
                "give it config()/from_config() and register it with layered.registry.register"
            )
        cfg[name] = cast(Persistable, part).config()
    return cfg


def save_pipeline(pipe: Pipeline, folder: str | Path) -> Path:
    """Save atomically: configs as JSON, the parts' own files (the index, adapters), a sha256 manifest."""
    cfg = pipeline_config(pipe)

    def write(tmp: Path) -> None:
        atomic_write_json(tmp / CONFIG_FILE, cfg)
        for part in (pipe.retriever, pipe.generator):
            if provides(part, SavesFiles):
                cast(SavesFiles, part).save(tmp)

    path = save_folder_atomically(folder, write, manifest_extra={"layered_version": layered.__version__})
    log.info("saved pipeline to %s", path)
    return path


def load_pipeline(
    cls: type[P], folder: str | Path, *, trust_remote_endpoint: Trust = False, api_key_env: str | None = None, **overrides: Any,
) -> P:
    """A ``cls`` pipeline from a folder written by :func:`save_pipeline`, after checking every file's sha256.

    ``overrides`` replace slots (e.g. ``generator=...``) instead of building them. A
    folder contacts no host and reads no secret on its own (:mod:`layered.outbound`):
    endpoints it names must be allowed by ``trust_remote_endpoint`` (URLs, or True),
    and the API key variable is ``api_key_env``, never the folder's.
    """
    folder = Path(folder)
    verify_manifest(folder)
    cfg = checked_config(folder, read_json(folder / CONFIG_FILE))
    if cfg.get("layered_version") != layered.__version__:
        log.warning("%s was saved by layered %s; this is %s", folder, cfg.get("layered_version"), layered.__version__)
    saved = {name: cfg[name] for name in SLOTS if name not in overrides and cfg.get(name) is not None}
    saved = checked_slots(folder, saved, trust=trust_remote_endpoint, api_key_env=api_key_env)
    parts: dict[str, Any] = {name: overrides.get(name) for name in SLOTS}
    for name, part_cfg in saved.items():
        cls_ = registry.lookup(name, part_cfg["kind"])
        try:
            # Parts with files of their own (an index, adapter weights) load from the folder.
            parts[name] = cls_.load(folder, part_cfg) if provides(cls_, LoadsFiles) else cls_.from_config(part_cfg)
        except (KeyError, TypeError, AttributeError, IndexError) as e:  # a hand-edited config: one line, not a traceback
            raise ArtifactError(f"{folder / CONFIG_FILE}: the {name} config is malformed ({type(e).__name__}: {e})") from None
    return cls(
        generator=parts["generator"], retriever=parts["retriever"], prompt=parts["prompt"],
        k=cfg["k"], metadata=cfg.get("metadata") or {}, router=parts["router"],
        min_score=cfg.get("min_score"), refusal=cfg.get("refusal", DEFAULT_REFUSAL), grounding=cfg.get("grounding", "mark"),
        history_query=cfg.get("history_query", DEFAULT_QUERY), abstain=_abstain(where=folder / CONFIG_FILE, cfg=cfg.get("abstain")),
    )


def _abstain(*, where: Path, cfg: Any) -> Any:
    """The saved answerability decision (None when the pipeline had none), or one ArtifactError line."""
    from layered.answerability import Answerability

    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{where}: 'abstain' must be an object or null")
    try:
        return Answerability.from_dict(cfg)
    except ConfigError as e:
        raise ArtifactError(f"{where}: {e}") from None


def checked_config(folder: Path, cfg: Any) -> dict[str, Any]:
    """The saved config's top level, type-checked, or one :class:`ArtifactError` line naming the field."""
    where = folder / CONFIG_FILE
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{where} must hold a JSON object, not {type(cfg).__name__}")
    if cfg.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{folder} was saved in format {cfg.get('format')}; this layered reads format {FORMAT_VERSION}")
    k = cfg.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ArtifactError(f"{where}: 'k' must be a positive integer, got {json_repr(k)}")
    if cfg.get("min_score") is not None and (not isinstance(cfg["min_score"], (int, float)) or isinstance(cfg["min_score"], bool)):
        raise ArtifactError(f"{where}: 'min_score' must be a number or null, got {json_repr(cfg['min_score'])}")
    if not isinstance(cfg.get("refusal", DEFAULT_REFUSAL), str):
        raise ArtifactError(f"{where}: 'refusal' must be a string")
    if cfg.get("history_query", DEFAULT_QUERY) not in QUERY_METHODS:
        raise ArtifactError(f"{where}: 'history_query' must be one of {', '.join(QUERY_METHODS)}, got {json_repr(cfg['history_query'])}")
    if not isinstance(cfg.get("metadata") or {}, dict):
        raise ArtifactError(f"{where}: 'metadata' must be an object")
    for name in SLOTS:
        part = cfg.get(name)
        if part is not None and not (isinstance(part, dict) and isinstance(part.get("kind"), str)):
            raise ArtifactError(f"{where}: '{name}' must be an object with a 'kind' (a string), got {json_repr(part)}")
    return cfg


def json_repr(value: Any) -> str:
    """A short JSON rendering of a config value for an error line."""
    return json.dumps(value, default=lambda o: type(o).__name__)[:60]


def add_saved_adapter(generator: Any, name: str, source: str | Path, *, default: bool = False) -> None:
    """Serve the adapter of the saved, tuned pipeline in ``source`` as ``name`` on ``generator``.

    The source's manifest is checked and its base model must be ``generator``'s.
    ``default=True`` makes it answer requests that name no adapter (and match no route).
    """
    from layered.generation.transformers_generator import adapter_file

    source = Path(source)
    verify_manifest(source)
    theirs = read_json(source / CONFIG_FILE).get("generator") or {}
    if not provides(generator, AdapterInstaller):
        raise ConfigError(f"the {type(generator).__name__} generator serves no adapters")
    ours = generator.model_name
    if theirs.get("model") != ours:
        raise ConfigError(f"{source} was tuned on {theirs.get('model')!r}, but this pipeline serves {ours!r}")
    saved = theirs.get("adapters") or {}
    if len(saved) != 1:
        raise ConfigError(f"{source} holds {len(saved)} adapters; add_adapter takes a pipeline tuned with exactly one")
    (theirs_name, config), = saved.items()
    generator.add_adapter(name, config, adapter_file(source, theirs_name), default=default)
