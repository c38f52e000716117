"""The ``layered compare`` workflow: a task, a tuned adapter, the strategy comparison, the report.

A task is a bundled assistant (``medical``, ``support``: its cached pipeline, its held-out
splits and its *shipped* adapter, trained on the training split only) or a saved pipeline
folder with question/answer data (cleaned, then split 80/10/10 with seed 0). Without an
adapter to compare (or with ``search``/``retrain``) one is trained on the training split: a
short LoRA run, or auto-PEFT (a small grid of LoRA ranks and learning rates, the lowest
validation loss kept). The comparison itself is :func:`layered.evaluation.comparison.compare`;
this module prepares its inputs and writes ``comparison.md``, ``comparison.json`` and
``comparison.png``. The CLI command is a thin wrapper around :func:`run_compare`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from layered.errors import InputError
from layered.evaluation.comparison import StrategyResult, bar_chart, compare, markdown_table
from layered.types import Example

log = logging.getLogger(__name__)

SHIPPED_ADAPTERS = {"medical": "medical", "support": "policy"}  # bundled task -> the adapter it ships


@dataclass(frozen=True, kw_only=True)
class CompareOptions:
    """What ``layered compare`` was asked for (see its ``--help`` for each option)."""

    task: str  # "medical", "support", or a saved pipeline folder (with ``data``)
    data: str | Path | None = None
    test: int = 30
    shots: int = 2
    steps: int = 40
    search: bool = False
    retrain: bool = False
    max_new_tokens: int | None = None
    backend: Literal["llamacpp", "transformers"] | None = None
    audience: str | None = None
    out: str | Path | None = None
    cache_dir: str | Path | None = None


@dataclass(frozen=True)
class CompareRun:
    """One comparison: the rows, their Markdown table, and the adapter the last row used."""

    results: list[StrategyResult]
    table: str
    adapter: str
    test_questions: int
    search: Any = None  # the auto-PEFT SearchResult, when ``search`` trained the adapter


def run_compare(options: CompareOptions, *, progress: bool = False) -> CompareRun:
    """Run the comparison ``options`` describe; with ``out``, write its report files there
    (and the training runs under ``out/runs``), else train in a scratch folder removed afterwards."""
    if options.out is None:
        with tempfile.TemporaryDirectory(prefix="layered-compare-") as scratch:
            return _run(options, None, Path(scratch), progress)
    out = Path(options.out)
    return _run(options, out, out / "runs", progress)


def load_task(options: CompareOptions, *, progress: bool = False) -> tuple[Any, Any, str | None]:
    """``(pipeline, splits, adapter)`` for ``options.task``; adapter None means: train one.

    The bundled tasks compare their *shipped* adapters (trained on their training splits only);
    ``search`` or ``retrain`` trains new ones instead.
    """
    from layered.pipelines import BUNDLED, assistant, cache_folder

    if options.task in BUNDLED:
        module = assistant(options.task)
        train_new = options.search or options.retrain
        cache = cache_folder(options.task, options.cache_dir)
        pipe, _ = module.load_or_build(cache, progress=progress, adapter=not train_new)
        parts = module.splits() if options.task == "medical" else module.policy_splits()
        return pipe, parts, None if train_new else SHIPPED_ADAPTERS[options.task]
    if not options.data:
        raise InputError(f"{options.task!r} is not a bundled task ({', '.join(BUNDLED)}); a pipeline folder needs --data")
    from layered.pipeline import Pipeline

    pipe = Pipeline.load(options.task)
    examples = _judged_examples(options.data)
    adapter = getattr(pipe.generator, "default_adapter", None)
    if adapter is not None:
        log.warning("comparing the pipeline's own adapter %r as it is: the scores are fair only if it never trained "
                    "on this data's test split (split 80/10/10 with seed 0)", adapter)
    from layered.tuning.data import split

    return pipe, split(examples, validation=0.1, test=0.1, seed=0), adapter


def _judged_examples(path: str | Path) -> list[Example]:
    """Cleaned question/answer pairs; a ``doc_ids`` column becomes each example's relevance judgement."""
    from layered.tuning.data import clean, columns, load_examples

    keep = ["doc_ids"] if "doc_ids" in columns(path) else []
    examples, report = clean(load_examples(path, keep=keep))
    log.info("cleaning: %s", report)
    if keep:
        examples = [dataclasses.replace(e, metadata={"doc_ids": _id_list(e.metadata["doc_ids"])}) for e in examples]
    return examples


def _id_list(value: Any) -> list[str]:
    """Document ids from JSONL (a list) or CSV (a comma-separated string)."""
    return [str(v) for v in value] if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]


def _train_adapter(pipe: Any, splits: Any, options: CompareOptions, runs: Path, progress: bool) -> tuple[Any, Any]:
    """``(pipeline with a "default" adapter, search result or None)``, trained on the training split."""
    from layered.tuning.config import short_lora
    from layered.tuning.search import base_copy, search_lora

    config, val = short_lora(options.steps), splits.validation[:24]
    if options.search:
        search = search_lora(lambda: base_copy(pipe), splits.train, val, config=config, out_dir=runs / "search",
                             progress=progress)
        log.info("auto-PEFT:\n%s", search.markdown_table())
        return search.pipeline, search
    report = pipe.fit(splits.train, val=val, config=config, out_dir=runs / "adapter", progress=progress,
                      check_forgetting=False)
    log.info("adapter: validation loss %.3f -> %.3f", report.val_losses[0][1], report.val_losses[-1][1])
    return pipe, None


def _run(options: CompareOptions, out: Path | None, runs: Path, progress: bool) -> CompareRun:
    from layered.pipelines import BUNDLED

    pipe, splits, adapter = load_task(options, progress=progress)
    if options.max_new_tokens is not None:
        pipe.generator.max_new_tokens = options.max_new_tokens  # validated by the generator (AnswerBudget)
    test = splits.test[: options.test]
    log.info("%d training, %d validation, %d test examples (answering %d)", len(splits.train), len(splits.validation),
             len(splits.test), len(test))
    search = None
    if adapter is None:
        pipe, search = _train_adapter(pipe, splits, options, runs, progress)
        adapter = "default"
    backend = options.backend or ("llamacpp" if options.task in BUNDLED else None)
    if backend:
        pipe = pipe.serve_with(backend, adapter_dir=runs / "gguf")
    variables = {"audience": options.audience} if options.audience else {}
    results = compare(pipe, test, few_shot_pool=splits.train[:2000], adapter=adapter, shots=options.shots,
                      variables=variables, progress=progress)
    run = CompareRun(results=results, table=markdown_table(results), adapter=adapter, test_questions=len(test), search=search)
    if out:
        write_report(out, run, options, generator=pipe.generator)
    return run


def write_report(out: Path, run: CompareRun, options: CompareOptions, *, generator: Any) -> None:
    """``comparison.md`` (the table, and the auto-PEFT trials), ``comparison.json`` and ``comparison.png`` in ``out``."""
    from layered.artifacts import atomic_write_bytes, atomic_write_json

    search = run.search
    text = f"{run.table}\n" + (f"\nAuto-PEFT (validation loss per answer token):\n\n{search.markdown_table()}\n" if search else "")
    atomic_write_bytes(out / "comparison.md", text.encode())
    atomic_write_json(out / "comparison.json", {
        "task": options.task, "test_questions": run.test_questions, "shots": options.shots, "steps": options.steps,
        "max_new_tokens": generator.max_new_tokens, "backend": getattr(generator, "kind", None), "audience": options.audience,
        "adapter": run.adapter, "results": [r.to_dict() for r in run.results],
        "search": None if search is None else [vars(t) for t in search.trials],
    })
    title = f"layered compare {Path(options.task).name}: {run.test_questions} held-out questions"
    bar_chart(run.results, out / "comparison.png", title=title)
    log.info("wrote %s/comparison.md, comparison.json and comparison.png", out)
