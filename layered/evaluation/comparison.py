"""The strategy comparison: prompting vs few-shot vs RAG vs RAG + a tuned adapter, measured.

All strategies share the pipeline's parts (one base model, one retriever, one prompt), so
each row isolates what a layer adds:

* ``prompt-only``: the pipeline's prompt, no passages, no examples, base model (zero-shot);
* ``few-shot``: the same plus ``shots`` worked examples from the *training* split, picked
  per question by similarity in the retriever's vector space (base model);
* ``rag``: retrieved passages, zero-shot, base model;
* ``rag+adapter``: retrieved passages answered by the tuned adapter;
* ``rag+abstain`` and ``rag+adapter+abstain``: the same behind the pipeline's answerability
  decision (``Pipeline(abstain=...)``), which declines when no passage answers; the plain rows
  run without it, so the table shows what the decision adds.

Per strategy (see :class:`StrategyResult`): retrieval hit rate and MRR of the passages in the
prompt, token F1 and ROUGE-L against the reference answer, citation precision, refusals,
latency and cost in tokens. Retrieval metrics and citation precision need relevance
judgements: an example lists its relevant document ids in ``metadata["doc_ids"]``; without
them those columns are ``None`` (shown as n/a).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from layered.adapters import BASE
from layered.errors import ConfigError, InputError
from layered.evaluation.metrics import mrr_at_k, rouge_l, token_f1
from layered.generation.guards import degenerate
from layered.protocols import AnsweringPipeline
from layered.types import Answer, Example

STRATEGIES = ("prompt-only", "few-shot", "rag", "rag+adapter", "rag+abstain", "rag+adapter+abstain")
#: The strategies compared by default: the last two only for a pipeline with an answerability decision.
PLAIN = STRATEGIES[:4]


@dataclass(frozen=True)
class StrategyResult:
    """Means over the test questions (rates in 0..1; ``None``: not applicable or not judged).

    ``recall`` is the share of questions with a relevant document among the prompt's
    passages; ``mrr`` the mean reciprocal rank of the first one. ``citation_precision`` is
    the share of all citations the answers show (cited by the model, or attributed by
    overlap when it cites none) that point to a relevant document. ``grounded`` is the share of
    the generated answer sentences that the passages shown support (checked before unsupported
    ones are dropped; None without passages or without the check); ``fallback`` the share of
    answers that quote a passage because no generated sentence was supported. ``degenerate``
    is the share of answers (refusals excluded) that repeat a word 4-gram or stop
    mid-sentence, as printed. ``latency_s`` is the mean and ``latency_p50_s`` the median wall
    time of one ``ask`` (retrieval + generation); ``prompt_tokens`` and ``completion_tokens``
    are the mean tokens in and out (the cost).
    """

    strategy: str
    questions: int
    token_f1: float
    rouge_l: float
    recall: float | None
    mrr: float | None
    citation_precision: float | None
    refused: float
    latency_s: float
    prompt_tokens: float
    completion_tokens: float
    grounded: float | None = None
    fallback: float | None = None
    degenerate: float = 0.0
    latency_p50_s: float = 0.0
    #: Right or silent, for examples that say ``metadata["answerable"]``: the share of answerable questions
    #: answered with a citation of a relevant document; the share of unanswerable ones answered anyway;
    #: and how many refusals were of unanswerable questions (precision) and of them were refused (recall).
    answered_right: float | None = None
    answered_unanswerable: float | None = None
    refusal_precision: float | None = None
    refusal_recall: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def strategy_setups(
    pipe: AnsweringPipeline, *, few_shot_pool: Sequence[Example] = (), adapter: str | None = None, shots: int = 2,
    strategies: Sequence[str] | None = None,
) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Each strategy as ``(pipeline, ask options)``, sharing ``pipe``'s generator and retriever.

    ``adapter`` names the tuned adapter for ``rag+adapter`` (None: the generator's default
    adapter); the other strategies ask for the base model. The prompt's own few-shot
    examples are removed everywhere except ``few-shot``, where ``few_shot_pool`` replaces them.
    """
    from layered.prompts.template import ChatPromptTemplate, FewShotExample

    if strategies is None:  # every row that applies
        strategies = STRATEGIES if pipe.abstain is not None else PLAIN
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if not isinstance(pipe.prompt, ChatPromptTemplate):
        raise ConfigError(f"the comparison varies a ChatPromptTemplate; this pipeline's prompt is a {type(pipe.prompt).__name__}")
    needs_retriever = {"rag", "rag+adapter"} & set(strategies)
    if needs_retriever and pipe.retriever is None:
        raise ConfigError(f"{' and '.join(sorted(needs_retriever))} need a pipeline with a retriever")
    tuned = adapter or getattr(pipe.generator, "default_adapter", None)
    if "rag+adapter" in strategies and (tuned is None or tuned not in getattr(pipe.generator, "adapters", {})):
        raise ConfigError("rag+adapter needs a tuned adapter on the generator: fit the pipeline or add_adapter() first")
    if "few-shot" in strategies and not few_shot_pool:
        raise InputError("few-shot needs a pool of training examples to choose the shots from")
    zero_shot = pipe.prompt.model_copy(update={"examples": []})
    pool = [FewShotExample(question=e.question, answer=e.answer) for e in few_shot_pool]
    few_shot = pipe.prompt.model_copy(update={"examples": pool, "shots": shots, "few_shot": "semantic"})
    # Base-model rows name "base" only when the generator has adapters to switch off.
    base = {"adapter": BASE} if getattr(pipe.generator, "adapters", None) else {}

    abstain = pipe.abstain
    if abstain is None and {"rag+abstain", "rag+adapter+abstain"} & set(strategies):
        raise ConfigError("the +abstain strategies need a pipeline with an answerability decision (Pipeline(abstain=...))")

    def variant(prompt: Any, *, refuse: bool, decide: bool = False) -> Any:
        return pipe.replace(prompt=prompt, router=None, min_score=pipe.min_score if refuse else None, abstain=abstain if decide else None)

    setups: dict[str, tuple[Any, dict[str, Any]]] = {
        # k=0: no passages. The retriever stays so few-shot selection can use its embedder.
        "prompt-only": (variant(zero_shot, refuse=False), {**base, "k": 0}),
        "few-shot": (variant(few_shot, refuse=False), {**base, "k": 0}),
        "rag": (variant(zero_shot, refuse=True), dict(base)),
        "rag+adapter": (variant(zero_shot, refuse=True), {"adapter": tuned}),
        "rag+abstain": (variant(zero_shot, refuse=True, decide=True), dict(base)),
        "rag+adapter+abstain": (variant(zero_shot, refuse=True, decide=True), {"adapter": tuned}),
    }
    return {name: setups[name] for name in strategies}


def score_answers(
    answers: Sequence[Answer], examples: Sequence[Example], seconds: Sequence[float], *, strategy: str, retrieved: bool,
) -> StrategyResult:
    """Aggregate one strategy's answers to ``examples`` (same order) into a :class:`StrategyResult`."""
    if len(answers) != len(examples) or len(seconds) != len(examples):
        raise InputError("answers, examples and timings must line up one to one")
    judged = bool(examples) and all(e.metadata.get("doc_ids") for e in examples)
    hits, ranks, cited, relevant_cited = 0, [], 0, 0
    for answer, example in zip(answers, examples):
        if not judged:
            continue
        relevant = set(example.metadata["doc_ids"])
        # Sources are the prompt's passages in order: the rank counts passages, not documents.
        reciprocal = mrr_at_k([s.doc_id for s in answer.sources], dict.fromkeys(relevant, 1), len(answer.sources))
        hits += reciprocal > 0
        ranks.append(reciprocal)
        cited += len(answer.citations)
        relevant_cited += sum(c.doc_id in relevant for c in answer.citations)
    n = len(examples)
    silent = _right_or_silent(answers, examples)
    usage = [a.generation for a in answers]
    checks = [a.metadata["grounding"] for a in answers if "grounding" in a.metadata]
    sentences = sum(c["sentences"] for c in checks)
    answered = [a for a in answers if not a.metadata.get("refused")]
    return StrategyResult(
        strategy=strategy,
        questions=n,
        token_f1=statistics.fmean(token_f1(a.text, e.answer) for a, e in zip(answers, examples)),
        rouge_l=statistics.fmean(rouge_l(a.text, e.answer) for a, e in zip(answers, examples)),
        recall=hits / n if judged and retrieved else None,
        mrr=statistics.fmean(ranks) if judged and retrieved else None,
        citation_precision=relevant_cited / cited if judged and retrieved and cited else None,
        refused=sum(bool(a.metadata.get("refused")) for a in answers) / n,
        latency_s=statistics.fmean(seconds),
        prompt_tokens=statistics.fmean(g.prompt_tokens if g else 0 for g in usage),
        completion_tokens=statistics.fmean(g.completion_tokens if g else 0 for g in usage),
        grounded=sum(c["supported"] for c in checks) / sentences if sentences else None,
        fallback=sum(bool(c["fallback"]) for c in checks) / len(checks) if checks else None,
        degenerate=sum(degenerate(a.text) for a in answered) / len(answered) if answered else 0.0,
        latency_p50_s=statistics.median(seconds),
        **silent,
    )


def _right_or_silent(answers: Sequence[Answer], examples: Sequence[Example]) -> dict[str, float | None]:
    """The right-or-silent rates of :class:`StrategyResult` (empty when examples do not say ``answerable``)."""
    if not examples or any("answerable" not in e.metadata for e in examples):
        return {}
    pairs = list(zip(answers, examples))
    answerable = [(a, e) for a, e in pairs if e.metadata["answerable"]]
    unanswerable = [a for a, e in pairs if not e.metadata["answerable"]]
    refused = [e for a, e in pairs if a.metadata.get("refused")]

    def right(a: Answer, e: Example) -> bool:
        return not a.metadata.get("refused") and bool({c.doc_id for c in a.citations} & set(e.metadata.get("doc_ids") or ()))

    declined_right = sum(not e.metadata["answerable"] for e in refused)
    return {
        "answered_right": sum(right(a, e) for a, e in answerable) / len(answerable) if answerable else None,
        "answered_unanswerable": sum(not a.metadata.get("refused") for a in unanswerable) / len(unanswerable) if unanswerable else None,
        "refusal_precision": declined_right / len(refused) if refused else None,
        "refusal_recall": declined_right / len(unanswerable) if unanswerable else None,
    }


def evaluate_pipeline(
    pipe: AnsweringPipeline, examples: Sequence[Example], *, label: str = "pipeline", variables: Mapping[str, Any] | None = None,
    progress: Any = False, **ask_options: Any,
) -> StrategyResult:
    """Answer each example with ``pipe.ask(question, **ask_options, **variables)`` and score the answers
    (:meth:`layered.Pipeline.evaluate`).

    The :class:`StrategyResult` holds token F1 and ROUGE-L against the reference answers,
    retrieval hit rate / MRR and citation precision when examples list their relevant
    ``metadata["doc_ids"]``, refusals, latency and tokens. Run it before and after ``fit``
    (with ``adapter="base"`` and without) to see what tuning changed; ``layered compare``
    puts it beside prompt-only and few-shot answers.

    ``progress`` is a bool or an open tqdm bar to advance. Each example's own
    ``variables`` win over ``variables``.
    """
    if not examples:
        raise InputError("the evaluation needs at least one example")
    from tqdm.auto import tqdm

    bar = progress if hasattr(progress, "update") else tqdm(total=len(examples), desc=label, unit="answer", disable=not progress)
    answers, seconds = [], []
    for example in examples:
        t = time.perf_counter()
        answers.append(pipe.ask(example.question, **ask_options, **{**(variables or {}), **example.variables}))
        seconds.append(time.perf_counter() - t)
        bar.update()
    if bar is not progress:
        bar.close()
    retrieved = pipe.retriever is not None and ask_options.get("k") != 0
    return score_answers(answers, examples, seconds, strategy=label, retrieved=retrieved)


def compare(
    pipe: AnsweringPipeline, test: Sequence[Example], *, few_shot_pool: Sequence[Example] = (), adapter: str | None = None,
    shots: int = 2, strategies: Sequence[str] | None = None, variables: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> list[StrategyResult]:
    """Answer every ``test`` question with every strategy and score the answers (see module docstring).

    ``test`` must be held out from whatever trained the adapter and from ``few_shot_pool``;
    each example's ``variables`` (and then ``variables``) fill the prompt.
    """
    if not test:
        raise InputError("the comparison needs at least one test example")
    from tqdm.auto import tqdm

    setups = strategy_setups(pipe, few_shot_pool=few_shot_pool, adapter=adapter, shots=shots, strategies=strategies)
    with tqdm(total=len(test) * len(setups), desc="compare", unit="answer", disable=not progress) as bar:
        return [evaluate_pipeline(variant, test, label=name, variables=variables, progress=bar, **options)
                for name, (variant, options) in setups.items()]


COLUMNS = (
    ("strategy", "strategy", "{}"), ("token_f1", "token F1", "{:.3f}"), ("rouge_l", "ROUGE-L", "{:.3f}"),
    ("recall", "hit@k", "{:.3f}"), ("mrr", "MRR", "{:.3f}"), ("citation_precision", "citation precision", "{:.3f}"),
    ("grounded", "grounded", "{:.0%}"), ("fallback", "fallback", "{:.0%}"), ("degenerate", "degenerate", "{:.0%}"),
    ("refused", "refused", "{:.0%}"), ("answered_right", "answered+right", "{:.0%}"),
    ("answered_unanswerable", "answered unanswerable", "{:.0%}"), ("refusal_precision", "refusal P", "{:.0%}"),
    ("refusal_recall", "refusal R", "{:.0%}"), ("latency_s", "latency s", "{:.2f}"), ("latency_p50_s", "p50 s", "{:.2f}"),
    ("prompt_tokens", "prompt tokens", "{:.0f}"),
    ("completion_tokens", "answer tokens", "{:.0f}"),
)


def markdown_table(results: Sequence[StrategyResult]) -> str:
    """One row per strategy; n/a where a metric does not apply or was not judged."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        row = r.to_dict()
        lines.append("| " + " | ".join("n/a" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def bar_chart(results: Sequence[StrategyResult], path: str | Path, *, title: str = "") -> Path:
    """Save a PNG: answer quality (token F1, ROUGE-L, citation precision) per strategy, and latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from layered.artifacts import atomic_path

    names = [r.strategy for r in results]
    quality: dict[str, list[float | None]] = {"token F1": [r.token_f1 for r in results], "ROUGE-L": [r.rouge_l for r in results],
               "citation precision": [r.citation_precision for r in results], "grounded": [r.grounded for r in results]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    x, width = np.arange(len(names)), 0.2
    for i, (label, values) in enumerate(quality.items()):
        bars = left.bar(x + (i - 1.5) * width, [np.nan if v is None else v for v in values], width, label=label)
        left.bar_label(bars, labels=["n/a" if v is None else f"{v:.2f}" for v in values], fontsize=7)
    left.set_xticks(x, names)
    left.set_ylim(0, 1.2)
    left.set_ylabel("score (higher is better)")
    left.legend(fontsize=8, loc="upper left", ncol=4)
    left.set_title("answer quality")
    bars = right.bar(names, [r.latency_s for r in results], color="gray")
    right.bar_label(bars, fmt="%.2f s", fontsize=7)
    right.set_ylabel("seconds per question")
    right.set_title("latency")
    right.tick_params(axis="x", labelsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
