"""Auto-PEFT: a small grid search over LoRA rank and learning rate, judged on the validation split.

Each trial tunes a fresh copy of the base pipeline with the same schedule and keeps its final
validation loss (per answer token); the trial with the lowest loss wins and its tuned
pipeline is returned, so the winner is not trained twice. The test split is never seen.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from layered.errors import InputError
from layered.protocols import TrainablePipeline
from layered.tuning.config import TuneConfig
from layered.types import Example

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trial:
    """One configuration tried: its final validation loss and training time."""

    rank: int
    learning_rate: float
    val_loss: float
    seconds: float


@dataclass
class SearchResult:
    """All trials (in the order run), the best one, and the pipeline it tuned."""

    trials: list[Trial]
    best: Trial
    pipeline: TrainablePipeline

    def markdown_table(self) -> str:
        lines = ["| rank | learning rate | validation loss | seconds | chosen |", "|---|---|---|---|---|"]
        for t in self.trials:
            lines.append(f"| {t.rank} | {t.learning_rate:g} | {t.val_loss:.4f} | {t.seconds:.0f} | {'yes' if t is self.best else ''} |")
        return "\n".join(lines)


def base_copy(pipe: TrainablePipeline) -> TrainablePipeline:
    """A pipeline sharing ``pipe``'s retriever, prompt and settings with a fresh, untuned generator of the same model."""
    return pipe.replace(generator=type(pipe.generator).from_config(pipe.generator.config()))


def search_lora(
    make_pipeline: Callable[[], TrainablePipeline],
    train: Sequence[Example],
    val: Sequence[Example],
    *,
    ranks: Sequence[int] = (8, 16),
    learning_rates: Sequence[float] = (5e-4, 2e-3),
    config: TuneConfig | None = None,
    out_dir: str | Path = "layered-search",
    progress: bool = False,
) -> SearchResult:
    """Try every (rank, learning rate) on a fresh pipeline from ``make_pipeline``; keep the best.

    ``config`` gives everything else (steps, batch, target modules); alpha is set to twice
    the rank so the update scale stays comparable across ranks.
    """
    if not val:
        raise InputError("auto-PEFT chooses on the validation split; it is empty")
    if not ranks or not learning_rates:
        raise InputError("auto-PEFT needs at least one rank and one learning rate")
    config = config or TuneConfig()
    trials: list[Trial] = []
    best: tuple[Trial, Any] | None = None
    for rank, lr in itertools.product(ranks, learning_rates):
        pipe = make_pipeline()
        trial_config = config.model_copy(update={"method": "lora", "rank": rank, "alpha": 2.0 * rank, "learning_rate": lr})
        t = time.perf_counter()
        report = pipe.fit(train, val=val, config=trial_config, out_dir=Path(out_dir) / f"rank{rank}-lr{lr:g}",
                          progress=progress, check_forgetting=False)
        trial = Trial(rank=rank, learning_rate=lr, val_loss=report.val_losses[-1][1], seconds=time.perf_counter() - t)
        log.info("auto-PEFT: rank %d, lr %g -> validation loss %.4f (%.0fs)", rank, lr, trial.val_loss, trial.seconds)
        trials.append(trial)
        if best is None or trial.val_loss < best[0].val_loss:
            best = (trial, pipe)  # the losers' models are dropped here, one at a time
    assert best is not None
    return SearchResult(trials=trials, best=best[0], pipeline=best[1])
