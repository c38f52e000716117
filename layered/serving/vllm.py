"""Handing a pipeline's generation to vLLM: its adapters as PEFT folders and its base model as a
Hugging Face folder, gathered from shipped adapters or saved pipelines (``layered export-peft``).
Retrieval, prompts, access control and citations stay in layered; the pipeline's generator then
points at the vLLM server through :mod:`layered.connectors.openai` (adapter name as model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from layered.errors import InputError


def export_sources(sources: Sequence[str], out: str | Path, *, adapters: Sequence[str] | None = None,
                   base_folder: str | Path | None = None) -> Any:
    """Export every adapter of ``sources`` (shipped adapter names or saved pipeline folders; of a
    pipeline, only ``adapters`` when given) and their one base model to ``out``. Two adapters of
    one name, or adapters of different base models, are refused before anything is written."""
    from layered.adapters.export import export_for_serving, generator_adapters
    from layered.pipeline import Pipeline
    from layered.pipelines.shipped import ROOT, ShippedAdapter

    found_all: dict[str, tuple[Any, dict[str, Any]]] = {}
    bases: set[str] = set()
    for source in sources:
        if not Path(source).exists() and (ROOT / source).is_dir():  # a shipped adapter, checked against its manifest
            shipped = ShippedAdapter.named(source).verify()
            found: dict[str, tuple[Any, dict[str, Any]]] = {source: (shipped.weights, shipped.config())}
            bases.add(str(shipped.report()["base_model"]))
        else:
            generator = Pipeline.load(source).generator
            found = generator_adapters(generator, adapters)
            bases.add(str(getattr(generator, "model_name", "")))
        for name in found:
            if name in found_all:
                raise InputError(f"two sources have an adapter named {name!r}; export them separately")
        found_all.update(found)
    if len(bases) > 1:
        raise InputError(f"the adapters are for different base models ({', '.join(sorted(bases))}); export them separately")
    return export_for_serving(found_all, bases.pop(), out, base_folder=base_folder)
