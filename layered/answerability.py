"""Answerability: does some passage shown answer the question? Decided before generating.

Grounding (:mod:`layered.prompts.grounding`) checks that each answer sentence is *in* a passage;
that is not the same as the passage *answering the question*: a small model shown the von
Willebrand page for a question about a VDRL test copies the page faithfully and answers the
wrong question. :class:`Answerability` scores every passage shown for the question and the
pipeline (``Pipeline(abstain=...)``) answers only when the best passage clears the threshold;
otherwise it declines and names what its sources do cover (:func:`refusal_naming`).

Per passage, four signals, each in 0..1 and cheap (one embedder call beyond retrieval):

* ``retrieval``: the retriever's own score for the passage (cosine for dense retrieval);
* ``coverage``: the share of the question's content words found in the passage, each word
  weighted by its rarity (longer words weigh more: a drug name or a test acronym is what a
  dense MiniLM score glosses over), with one-edit misspellings matching;
* ``subject``: the share of the passage's subject words (:func:`subject_of`: its ``subject``,
  ``focus``, ``subflow`` or ``title`` metadata, else its first line) that the question names,
  with the same fuzzy match;
* ``heading``: the cosine similarity of the question and the passage's first line (a MedQuAD
  page's own question, a manual's heading) in the retriever's embedding space: it tells "what are
  the signs of X" from the page on X's treatment, which the word signals cannot.

They are combined by a logistic model, ``p = sigmoid(w . signals + b)``, fitted by
:func:`fit_answerability` on labelled (question, passage) pairs: a passage is positive when it
answers the question. Passages are re-ordered best first (so an adapter that answers from
passage [1] answers from the right one) and those below ``keep`` are dropped from the prompt.

Contract: :meth:`Answerability.decide` is deterministic and pure (no state, no I/O); the
threshold is on the probability scale and documented with the fitted weights where they ship.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from layered.errors import ConfigError
from layered.types import Hit

SIGNALS = ("retrieval", "coverage", "subject", "heading")
_WORD = re.compile(r"[a-z0-9]+")
#: Words too common in questions to say what is asked (beyond grounding's stop words).
_STOP = frozenset(
    "the a an and or of to in on for with by is are was were be been it its this that these those as at from can may might will "
    "would should could have has had not no but if than then they them their there which who what when where how your you our we "
    "he she his her also such other more most some any all each do does did i me my mine am about get got tell know want need "
    "please help hi hello thanks just told like really so very much many there here whats what's anything something someone".split()
)


def _words(text: str) -> list[str]:
    out = []
    for w in _WORD.findall(text.lower()):
        if w in _STOP or len(w) < 3:
            continue
        out.append(w[:-1] if len(w) > 4 and w.endswith("s") else w)
    return out


def _near(a: str, b: str) -> bool:
    """One edit apart (substitution, insertion, deletion or adjacent swap), for words of 5+ letters."""
    if a == b:
        return True
    if min(len(a), len(b)) < 5 or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((i for i in range(len(short)) if short[i] != long[i]), len(short))
    return short[i:] == long[i + 1:]


def _found(word: str, vocabulary: set[str]) -> bool:
    if word in vocabulary:
        return True
    if len(word) < 5:
        return False
    return any(_near(word, v) for v in vocabulary if abs(len(v) - len(word)) <= 1 and (v[:1] == word[:1] or v[-2:] == word[-2:]))


def _weight(word: str) -> float:
    # rarity by length: 3-letter words weigh 1, a 10-letter drug name 3.3 (capped)
    return min(len(word), 12) / 3.0


def subject_of(hit: Hit) -> str:
    """What a passage is about: its ``subject``, ``focus``, ``subflow`` or ``title`` metadata (the first
    present), else its first line."""
    meta = hit.chunk.metadata
    for key in ("subject", "focus", "subflow", "title"):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    first = hit.chunk.text.strip().splitlines()[0] if hit.chunk.text.strip() else ""
    return first[:120]


def first_line(hit: Hit) -> str:
    """The passage's first non-empty line (its heading, or a MedQuAD page's question)."""
    return next((line.strip() for line in hit.chunk.text.splitlines() if line.strip()), "")[:200]


def headings(question: str, hits: Sequence[Hit], embed: Any) -> list[float]:
    """The ``heading`` signal of each hit: cosine of ``question`` and :func:`first_line` under ``embed(texts) -> vectors``."""
    import numpy as np

    if not hits:
        return []
    vectors = np.asarray(embed([question, *(first_line(h) for h in hits)]), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return [max(0.0, min(1.0, float(v @ vectors[0]))) for v in vectors[1:]]


def signals(question: str, hit: Hit, *, heading: float = 0.0) -> dict[str, float]:
    """The signals of ``hit`` for ``question`` (see module docstring), each in 0..1; ``heading`` is computed
    for all hits at once by :func:`headings` and passed in."""
    asked = list(dict.fromkeys(_words(question)))
    passage = set(_words(hit.chunk.indexed_text))
    total = sum(_weight(w) for w in asked)
    coverage = sum(_weight(w) for w in asked if _found(w, passage)) / total if total else 0.0
    subject = list(dict.fromkeys(_words(subject_of(hit))))
    asked_set = set(asked)
    subject_share = sum(_found(w, asked_set) for w in subject) / len(subject) if subject else 0.0
    return {"retrieval": max(0.0, min(1.0, float(hit.score))), "coverage": coverage, "subject": subject_share, "heading": heading}


@dataclass(frozen=True)
class Decision:
    """The answerability of one question: ``answerable`` when the best passage's probability
    ``score`` reaches ``threshold``; ``order`` the passages (0-based, as retrieved) kept for the
    prompt, best first; ``scores`` every passage's probability, as retrieved."""

    answerable: bool
    score: float
    threshold: float
    order: tuple[int, ...]
    scores: tuple[float, ...]
    signals: tuple[Mapping[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"answerable": self.answerable, "score": round(self.score, 4), "threshold": self.threshold,
                "scores": [round(s, 4) for s in self.scores], "kept": list(self.order)}


@dataclass(frozen=True)
class Answerability:
    """A fitted answerability decision (see module docstring).

    ``weights`` map each of :data:`SIGNALS` to its coefficient, ``bias`` the intercept;
    ``threshold`` (probability) decides answer vs decline; passages below ``keep`` (default: the
    threshold) are left out of the prompt when the question is answered; ``reorder`` puts the
    best passage first. ``report`` records how the numbers were fitted (data hash, metrics).
    """

    weights: Mapping[str, float]
    bias: float
    threshold: float = 0.5
    keep: float | None = None
    reorder: bool = True
    report: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.weights) != set(SIGNALS):
            raise ConfigError(f"answerability weights must name exactly {', '.join(SIGNALS)}; got {', '.join(sorted(self.weights))}")
        for name, value in (("threshold", self.threshold), ("keep", self.keep)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"answerability {name} is a probability in 0..1, got {value}")

    def probability(self, features: Mapping[str, float]) -> float:
        z = self.bias + sum(self.weights[s] * features[s] for s in SIGNALS)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    @property
    def needs_embedder(self) -> bool:
        """The decision weighs the ``heading`` signal, which needs the retriever's embedder."""
        return self.weights["heading"] != 0.0

    def decide(self, question: str, hits: Sequence[Hit], *, embed: Any = None) -> Decision:
        """Score every hit for ``question``; answerable when the best reaches :attr:`threshold`.
        ``embed`` (``texts -> vectors``, the retriever's embedder) is needed when :attr:`needs_embedder`."""
        if self.needs_embedder and embed is None and hits:
            raise ConfigError("this answerability decision weighs passage headings and needs the retriever's embedder (embed=...)")
        near = headings(question, hits, embed) if embed is not None and self.needs_embedder else [0.0] * len(hits)
        feats = tuple(signals(question, h, heading=x) for h, x in zip(hits, near))
        scores = tuple(self.probability(f) for f in feats)
        ranked = sorted(range(len(hits)), key=lambda i: -scores[i]) if self.reorder else list(range(len(hits)))
        best = max(scores, default=0.0)
        keep = self.threshold if self.keep is None else self.keep
        order = tuple(i for i in ranked if scores[i] >= keep) or tuple(ranked[:1])
        return Decision(answerable=bool(hits) and best >= self.threshold, score=best, threshold=self.threshold, order=order,
                        scores=scores, signals=feats)

    def apply(self, question: str, hits: Sequence[Hit], embedder: Any = None) -> tuple[list[Hit], Decision]:
        """``(hits for the prompt, decision)``: when answerable, the hits in :attr:`Decision.order` (best first with
        :attr:`reorder`, none below :attr:`keep`); else as given. ``embedder``: the retriever's (its ``embed``)."""
        decision = self.decide(question, hits, embed=None if embedder is None else embedder.embed)
        return ([hits[i] for i in decision.order] if decision.answerable else list(hits)), decision

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weights": dict(self.weights), "report": dict(self.report)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Answerability":
        known = {"weights", "bias", "threshold", "keep", "reorder", "report"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown answerability field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(weights={k: float(v) for k, v in dict(data["weights"]).items()}, bias=float(data["bias"]),
                       threshold=float(data.get("threshold", 0.5)), keep=None if data.get("keep") is None else float(data["keep"]),
                       reorder=bool(data.get("reorder", True)), report=dict(data.get("report") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"malformed answerability config ({e})") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "Answerability":
        """Load one saved as JSON (:meth:`to_dict`; a ``rows`` list beside it, the labelled rows a calibration
        was fitted on, is not part of the decision)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read an answerability config ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: an answerability config is a JSON object")
        data.pop("rows", None)
        return cls.from_dict(data)


def fit_answerability(
    rows: Iterable[tuple[Mapping[str, float], bool]], *, l2: float = 1e-2, steps: int = 500,
) -> tuple[dict[str, float], float]:
    """Logistic regression of ``(signals, label)`` rows (Newton's method, L2 ``l2``): ``(weights, bias)``.

    Deterministic: the same rows give the same numbers on every machine (float64 numpy).
    """
    import numpy as np

    data = list(rows)
    if not data or len({bool(y) for _, y in data}) < 2:
        raise ConfigError("fitting answerability needs both answering and non-answering passages")
    x = np.array([[f[s] for s in SIGNALS] + [1.0] for f, _ in data], dtype=np.float64)
    y = np.array([1.0 if label else 0.0 for _, label in data])
    w = np.zeros(x.shape[1])
    reg = np.eye(x.shape[1]) * l2
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -60, 60)))
        grad = x.T @ (p - y) + reg @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return {s: round(float(w[i]), 6) for i, s in enumerate(SIGNALS)}, round(float(w[-1]), 6)


def refusal_naming(hits: Sequence[Hit], *, lead: str, limit: int = 3) -> str:
    """A refusal that says what the sources found do cover: ``lead`` then their subjects."""
    subjects = list(dict.fromkeys(subject_of(h) for h in hits if subject_of(h)))[:limit]
    if not subjects:
        return lead
    listed = "; ".join(subjects)
    return f"{lead} The closest passages I found are about: {listed}."


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` fitted: the decision, the labelled rows it was fitted on (one per
    question and passage shown: ``question``, ``chunk_id``, ``doc_id``, the signals, ``label``) and
    the threshold sweep on the same questions."""

    answerability: Answerability
    rows: list[dict[str, Any]]
    sweep: list[dict[str, float]]


def _question_outcomes(model: Answerability, groups: Sequence[tuple[bool, list[tuple[Mapping[str, float], bool]]]],
                       threshold: float) -> dict[str, float]:
    """Per threshold: the share of answerable questions whose best passage passes and answers,
    and the share of unanswerable ones that pass anyway."""
    right = wrong = n_yes = n_no = 0
    for answerable, passages in groups:
        scores = [model.probability(f) for f, _ in passages]
        best = max(range(len(scores)), key=scores.__getitem__) if scores else None
        passes = best is not None and scores[best] >= threshold
        if answerable:
            n_yes += 1
            right += passes and passages[best][1]  # type: ignore[index]
        else:
            n_no += 1
            wrong += passes
    return {"threshold": threshold, "answered_right": right / n_yes if n_yes else 0.0,
            "answered_unanswerable": wrong / n_no if n_no else 0.0}


def calibrate(
    retrieve: Any, examples: Sequence[Any], *, embed: Any, max_answered_unanswerable: float = 0.1, report: Mapping[str, Any] | None = None,
    reorder: bool = True, keep: float | None = None,
) -> Calibration:
    """Fit an :class:`Answerability` on judged ``examples`` (``metadata["answerable"]`` and the relevant
    ``metadata["doc_ids"]``), retrieving each question's passages with ``retrieve(question) -> hits``
    (what the pipeline would show: e.g. ``pipe.retrieve``) and ``embed`` the retriever's embedder
    (``texts -> vectors``, for the ``heading`` signal); see :func:`calibrate_rows`.
    """
    rows: list[dict[str, Any]] = []
    for e in examples:
        relevant = set(e.metadata.get("doc_ids") or ())
        hits = retrieve(e.question)
        if not hits:  # nothing retrieved: the question still counts (it cannot be answered)
            rows.append({"question": e.question, "answerable": bool(e.metadata["answerable"]), "chunk_id": None})
        for hit, near in zip(hits, headings(e.question, hits, embed)):
            rows.append({"question": e.question, "answerable": bool(e.metadata["answerable"]), "chunk_id": hit.chunk.id,
                         "doc_id": hit.chunk.doc_id, **signals(e.question, hit, heading=near), "label": hit.chunk.doc_id in relevant})
    return calibrate_rows(rows, max_answered_unanswerable=max_answered_unanswerable, report=report, reorder=reorder, keep=keep)


def calibrate_rows(
    rows: Sequence[Mapping[str, Any]], *, max_answered_unanswerable: float = 0.1, report: Mapping[str, Any] | None = None,
    reorder: bool = True, keep: float | None = None,
) -> Calibration:
    """Fit an :class:`Answerability` on labelled rows (one per question and passage shown: ``question``,
    ``answerable``, the :data:`SIGNALS`, and ``label``: the passage's document answers it; a row with
    ``chunk_id`` None is a question nothing was retrieved for). Deterministic, so a shipped decision is
    reproduced from its rows.

    The threshold is the one that answers the most answerable questions from a relevant passage while
    answering at most ``max_answered_unanswerable`` of the unanswerable ones (ties: the higher
    threshold). Tune on a split you never report on. ``reorder`` and ``keep`` are stored in the decision
    as given (a pipeline whose adapter was trained on the retriever's order keeps it: ``reorder=False, keep=0``).
    """
    groups: dict[str, tuple[bool, list[tuple[Mapping[str, float], bool]]]] = {}
    for row in rows:
        answerable, passages = groups.setdefault(str(row["question"]), (bool(row["answerable"]), []))
        if row.get("chunk_id") is not None:
            passages.append(({s: float(row[s]) for s in SIGNALS}, bool(row["label"])))
    weights, bias = fit_answerability((f, y) for _, ps in groups.values() for f, y in ps)
    model = Answerability(weights=weights, bias=bias)
    sweep = [_question_outcomes(model, list(groups.values()), t / 100) for t in range(1, 100)]
    allowed = [s for s in sweep if s["answered_unanswerable"] <= max_answered_unanswerable] or sweep[-1:]
    best = max(allowed, key=lambda s: (s["answered_right"], s["threshold"]))
    fitted = Answerability(weights=weights, bias=bias, threshold=best["threshold"], reorder=reorder, keep=keep,
                           report={**dict(report or {}), "questions": len(groups), "passages": sum(len(p) for _, p in groups.values()),
                                   "max_answered_unanswerable": max_answered_unanswerable, "on_tuning_questions": best})
    return Calibration(answerability=fitted, rows=[dict(r) for r in rows], sweep=sweep)
