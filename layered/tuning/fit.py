"""``Pipeline.fit``: tune the generator on exactly the prompts the pipeline serves."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Sequence

from layered.adapters import runtime
from layered.adapters.names import DEFAULT
from layered.errors import ConfigError, ContextOverflowError, EmptyDatasetError, InputError
from layered.tuning.config import TuneConfig
from layered.tuning.data import split
from layered.tuning.formatting import Features, format_example
from layered.adapters.methods import count_parameters
from layered.tuning.trainer import TrainReport, evaluate_loss, train, uses_bf16
from layered.prompts.conversation import example_from_messages
from layered.protocols import TrainablePipeline, Tunable, missing, provides
from layered.types import Example

log = logging.getLogger(__name__)


def abstention_picks(examples: Sequence[Example], share: float, *, seed: int) -> set[int]:
    """Which ``examples`` (positions) become abstention examples: a seeded ``share`` of those that name
    their answering documents (``metadata["doc_ids"]``)."""
    if not 0.0 <= share < 1.0:
        raise InputError(f"abstain_share is the share of examples trained to decline, in [0, 1); got {share}")
    judged = [i for i, e in enumerate(examples) if e.metadata.get("doc_ids")]
    if share and not judged:
        raise InputError("abstain_share needs examples that name the documents answering them (metadata['doc_ids'])")
    picks = set(random.Random(f"abstain:{seed}").sample(judged, round(share * len(judged)))) if share else set()
    if picks:
        log.info("%d of %d training examples are abstention examples (answering passage left out)", len(picks), len(examples))
    return picks


def _features(pipeline: TrainablePipeline, examples: Sequence[Example], *, distractors: int, what: str,
              abstain: set[int] | None = None, user: Any = None) -> list[Features]:
    out, too_long = [], []
    for i, ex in enumerate(examples):
        try:
            out.append(format_example(pipeline, ex, distractors=distractors, pool=examples, abstain=i in (abstain or ()), user=user))
        except ContextOverflowError:
            too_long.append(ex)
    if too_long:
        raise ContextOverflowError(
            f"{len(too_long)} {what} example(s) do not fit the {pipeline.generator.context_window}-token window with their "
            f"answer (first: {too_long[0].question[:50]!r}); drop them with clean(max_chars=...) before fitting"
        )
    return out


def _as_example(item: Any) -> Example:
    """An :class:`Example` as given, or one from a ``{"messages": [...]}`` chat ending with the answer."""
    if isinstance(item, Example):
        return item
    if isinstance(item, dict) and "messages" in item:
        return example_from_messages(item["messages"], variables=item.get("variables"), metadata=item.get("metadata"))
    raise InputError(f"a training example must be an Example or a {{'messages': [...]}} chat, not {type(item).__name__}")


def _tunable(generator: Any) -> Any:
    """``generator``, when it can be fine-tuned now (a transformers generator without an adapter)."""
    if not provides(generator, Tunable):
        raise ConfigError(f"{type(generator).__name__} cannot be fine-tuned (it has no {missing(generator, Tunable)[0]}); "
                          "use the transformers generator")
    if generator.adapters:
        raise ConfigError("this generator already carries an adapter; load the base pipeline to train another")
    return generator


def _held_out(train: list[Example], val: list[Example] | None, *, seed: int) -> tuple[list[Example], list[Example]]:
    """The training and validation examples: without ``val``, 10% of ``train`` (whole near-duplicate groups)."""
    if not train:
        raise EmptyDatasetError("no training examples")
    if val is None:
        parts = split(list(train), validation=0.1, test=0.0, seed=seed)
        train, val = parts.train, parts.validation
        log.info("held out %d of the training examples for validation", len(val))
    if not val:
        raise EmptyDatasetError("the validation set is empty; pass val=[...] with at least one example")
    return train, val


def _lineage(report: TrainReport, user: Any, features: Sequence[Features]) -> None:
    """Record in ``report`` whom training ran as (``access_scope``; ``["*"]``: public documents only) and every
    document whose passages were in a training or validation prompt (``documents``)."""
    report.access_scope = list(user.principals()) if user is not None else ["*"]
    report.documents = sorted({d for f in features for d in f.documents})


def _pad_id(tokenizer: Any) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise InputError("the tokenizer has neither a pad nor an end-of-sequence token")
    return int(pad_id)


def fit_pipeline(
    pipeline: TrainablePipeline,
    train_examples: Sequence[Example],
    *,
    val: Sequence[Example] | None = None,
    config: TuneConfig | None = None,
    out_dir: str | Path = "layered-fit",
    resume: bool = False,
    distractors: int = 0,
    progress: bool = True,
    check_forgetting: bool = True,
    stop_after: int | None = None, name: str = DEFAULT,
    abstain_share: float = 0.0, user: Any = None,  # RAFT-style abstention; the principal training runs as
) -> TrainReport:
    """Format, check, attach the method's adapter (as ``name``) and train (:meth:`layered.Pipeline.fit`).

    ``train_examples`` are formatted exactly as the pipeline's ``ask`` serves them. ``config``
    is a :class:`~layered.tuning.config.TuneConfig` (LoRA by default). The pipeline answers
    with the adapter (named ``name``, ``"default"`` unless given) afterwards and its ``save``
    stores it. Returns the training report (``val_losses[0]`` is before training).

    Every input problem (no examples, an empty validation split, an example longer than the
    window) is raised before the model is touched. Without ``val``, 10% of the training
    examples (whole near-duplicate groups) are held out for validation. With
    ``check_forgetting``, the report's ``forgetting`` holds the perplexity of the base and
    the tuned model on shipped general text (see :mod:`layered.evaluation.perplexity`).

    ``abstain_share`` (:func:`abstention_picks`) is served without its answering documents, trained to answer ``refusal``;
    ``user``: None trains on public documents only (:func:`_lineage`).
    """
    config = config or TuneConfig()
    runtime.check_can_add(name, config.method, {})  # a bad name is refused before any work
    train_examples = [_as_example(e) for e in train_examples]
    val = None if val is None else [_as_example(e) for e in val]
    generator = _tunable(pipeline.generator)
    train_examples, val = _held_out(train_examples, val, seed=config.seed)
    train_set = _features(pipeline, train_examples, distractors=distractors, what="training",
                          abstain=abstention_picks(train_examples, abstain_share, seed=config.seed), user=user)
    val_set = _features(pipeline, val, distractors=0, what="validation", user=user)
    tokenizer = generator.tokenizer
    pad_id = _pad_id(tokenizer)
    if check_forgetting:
        from layered.evaluation.perplexity import general_text, perplexity

        base_ppl = perplexity(generator.model, tokenizer, general_text())
    model = generator.attach_adapter(config, name)
    trainable, total = count_parameters(model)
    log.info("%s: %d trainable of %d parameters (%.2f%%)", config.method, trainable, total, 100 * trainable / total)
    before = evaluate_loss(model, val_set, pad_id=pad_id, batch_size=config.batch_size, bf16=uses_bf16(config))
    report = train(model, train_set, val_set, config, out_dir=out_dir, pad_id=pad_id, resume=resume, progress=progress,
                   stop_after=stop_after)
    model.eval()
    report.val_losses.insert(0, (0, before))
    _lineage(report, user, [*train_set, *val_set])
    if check_forgetting:
        from layered.evaluation.perplexity import ForgettingReport

        report.forgetting = ForgettingReport(base=base_ppl, tuned=perplexity(model, tokenizer, general_text()))
        log.info("%s", report.forgetting)
    return report


def read_recipe(path: str | Path) -> tuple[dict[str, Any], Path]:
    """A recipe file (``.toml`` or ``.json``: TuneConfig fields plus ``data``) as ``(options, data path)``.

    ``data`` is resolved relative to the recipe's folder.
    """
    import json

    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            options = dict(tomllib.loads(raw))
        else:
            options = dict(json.loads(raw))
    except ValueError as e:
        raise ConfigError(f"{path}: cannot parse the recipe ({str(e).splitlines()[0]})") from None
    if "data" not in options:
        raise ConfigError(f"{path}: a tuning recipe needs a 'data' key naming the examples file")
    return options, (path.parent / str(options.pop("data"))).resolve()


def recipe_examples(data: str | Path, *, question_field: str | None = None, answer_field: str | None = None) -> list[Example]:
    """The examples a recipe trains on: ``data`` loaded and cleaned exactly as ``layered tune`` does."""
    from layered.tuning.data import clean, load_examples

    examples, report = clean(load_examples(data, question_field=question_field, answer_field=answer_field))
    log.info("cleaning: %s", report)
    return examples
