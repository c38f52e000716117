"""The ``layered tune`` workflow: a recipe or data file, a pipeline, a tuned pipeline saved.

:func:`tune_config` reads the recipe (a ``.toml``/``.json`` :class:`~layered.tuning.config.TuneConfig`
with a ``data`` key) or takes the data file as it is, so a bad configuration fails before any
process starts; :func:`run_tune` loads the examples (optionally redacted), the pipeline (a
saved folder, or a bundled assistant without its adapters, from the demo's cache when
intact), fits it and saves the tuned pipeline. Under ``torchrun`` (``--nproc``) every rank
runs it: rank 0 loads first (building any shared cache alone), reports and saves. The CLI
command is a thin wrapper around these two functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from layered.errors import InputError
from layered.tuning import launch
from layered.tuning.config import TuneConfig

log = logging.getLogger("layered")


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    """What ``layered tune`` was asked for beyond the config (see its ``--help`` for each option)."""

    pipeline: str  # a saved pipeline folder, or a bundled assistant's name
    out: str | None = None
    run_dir: str | None = None
    question_field: str | None = None
    answer_field: str | None = None
    redact: bool = False
    resume: bool = False
    cache_dir: str | None = None


def tune_config(data: str | Path, *, method: str | None = None, steps: int | None = None) -> tuple[TuneConfig, Path]:
    """The :class:`TuneConfig` and the data file: from a recipe when ``data`` is one, with
    ``method`` and ``steps`` overriding it."""
    from layered.tuning.fit import read_recipe

    options: dict[str, object] = {}
    data = Path(data)
    if data.suffix.lower() in (".toml", ".json"):
        options, data = read_recipe(data)
    if method:
        options["method"] = method
    if steps:
        options["max_steps"] = steps
    return TuneConfig(**options), data  # type: ignore[arg-type]


def run_tune(
    config: TuneConfig, data: Path, options: TuneOptions, *, load: Callable[[str], Any], progress: bool = True,
) -> Path | None:
    """Fit the pipeline ``options.pipeline`` (a folder opened with ``load``) on ``data``; the
    saved tuned pipeline's folder (None on ranks other than 0, which save nothing)."""
    from layered.artifacts import check_replaceable
    from layered.pipelines import BUNDLED, assistant, cache_folder
    from layered.tuning.data import data_report, redact
    from layered.tuning.fit import recipe_examples

    dp = launch.data_parallel()  # None in one process
    main_rank = dp is None or dp.is_main
    if not main_rank:
        logging.getLogger("layered").setLevel(logging.WARNING)  # one rank reports
    examples = recipe_examples(data, question_field=options.question_field, answer_field=options.answer_field)
    if options.redact:
        examples, counts = redact(examples)
        log.info("redacted: %s", ", ".join(f"{n} {k}" for k, n in counts.items()))
    log.info("%s", data_report(examples, title=str(data.name)))
    if options.pipeline in BUNDLED and not options.out:
        raise InputError(f"--pipeline {options.pipeline} (the bundled assistant) needs --out DIR for the tuned pipeline")
    if dp is not None and not main_rank:
        dp.barrier()  # rank 0 loads first, building any shared cache (a bundled assistant's index) alone
    if options.pipeline in BUNDLED:
        # the bundled assistant without adapters (transformers), from the demo's cache when intact
        cache = cache_folder(options.pipeline, options.cache_dir)
        pipe = assistant(options.pipeline).load_or_build(cache, progress=progress and main_rank, adapter=False)[0]
    else:
        pipe = load(options.pipeline)
    if dp is not None and main_rank:
        dp.barrier()
    out = Path(options.out or options.pipeline)
    check_replaceable(out)  # before training, not after
    run_dir = Path(options.run_dir) if options.run_dir else out.with_name(out.name + ".run")
    fit = pipe.fit(examples, config=config, out_dir=run_dir, resume=options.resume, progress=progress and main_rank)
    if not main_rank:  # rank 0 saves the tuned pipeline
        launch.finish()
        return None
    path: Path = pipe.save(out)
    launch.finish()
    losses = ", ".join(f"step {s}: {v:.3f}" for s, v in fit.val_losses)
    log.info("validation loss per answer token: %s", losses)
    log.info("%d steps in %.0fs (%.0f tokens/s); metrics and loss curve in %s", fit.steps, fit.seconds, fit.tokens_per_second, run_dir)
    log.info("tuned pipeline (adapter in generator/adapters/) saved to %s", path)
    return path
