"""Training data preparation: load, clean, redact, split (leakage-safe), report.

* :func:`load_examples` reads JSONL/CSV of question/answer, instruction/response,
  prompt/completion or input/output pairs, or chat ``messages``.
* :func:`clean` normalises whitespace and drops empty, over-long, exact-duplicate and
  near-duplicate rows, counting each.
* :func:`redact` replaces e-mail addresses, phone numbers and long digit ids with tags.
* :func:`split` assigns whole groups (a key such as the source document or intent, and
  always whole near-duplicate clusters) to train/validation/test, seeded, so near-identical
  rows never straddle splits.
* :func:`data_report` prints counts and a length histogram before training.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from layered.errors import DocumentLoadError, EmptyDatasetError, InputError, SourceNotFoundError
from layered.jsonl import records
from layered.tuning.dedup import near_duplicate_groups
from layered.prompts.conversation import example_from_messages
from layered.types import Example

PAIRS = (("question", "answer"), ("instruction", "response"), ("prompt", "completion"), ("input", "output"))


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SourceNotFoundError(f"{path}: no such file")
    gzipped = path.name.lower().endswith(".jsonl.gz")
    if gzipped:
        import gzip

        with gzip.open(path, "rt", encoding="utf-8") as f:
            text = f.read()
    else:
        text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl" or gzipped:
        return [row for _, row in records(text.splitlines(), str(path))]
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines(keepends=True)))
    raise DocumentLoadError(f"{path}: training data must be .jsonl, .jsonl.gz or .csv")


def columns(path: str | Path) -> list[str]:
    """The column names of a JSONL/CSV dataset (its first row's keys)."""
    rows = _rows(Path(path))
    if not rows:
        raise EmptyDatasetError(f"{path}: the dataset is empty")
    return list(rows[0])


def load_examples(
    path: str | Path, *, question_field: str | None = None, answer_field: str | None = None, keep: Sequence[str] = (),
) -> list[Example]:
    """Read examples; ``keep`` lists extra columns to carry as metadata (e.g. a split key).

    Chat rows (``{"messages": [...]}``, ending with the assistant's answer) become multi-turn
    examples: the last user turn is the question, the turns before it ``history``
    (:func:`~layered.prompts.conversation.example_from_messages`), trained as ``chat`` serves them.
    """
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise EmptyDatasetError(f"{path}: the dataset is empty")
    columns = list(rows[0])
    if question_field or answer_field:
        pair = (question_field or "question", answer_field or "answer")
    elif "messages" in columns:
        pair = ("messages", "messages")
    else:
        pair = next((p for p in PAIRS if p[0] in columns and p[1] in columns), None)  # type: ignore[assignment]
        if pair is None:
            raise InputError(f"{path}: cannot find question/answer columns in {columns}; pass question_field= and answer_field=")
    for name in (*pair, *keep):
        if name not in columns:
            raise InputError(f"{path}: no column {name!r} (columns: {', '.join(columns)})")
    out = []
    for row in rows:
        if pair[0] == "messages":
            try:
                out.append(example_from_messages(row["messages"], metadata={k: row[k] for k in keep}))
            except InputError as e:
                raise InputError(f"{path}: row {len(out) + 1}: {e}") from None
        else:
            question, answer = str(row[pair[0]] or ""), str(row[pair[1]] or "")
            out.append(Example(question=question, answer=answer, metadata={k: row[k] for k in keep}))
    return out


@dataclass(frozen=True)
class CleanReport:
    kept: int
    empty: int = 0
    too_long: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0

    def __str__(self) -> str:
        return (f"kept {self.kept}; dropped {self.empty} empty, {self.too_long} over-long, "
                f"{self.exact_duplicates} exact and {self.near_duplicates} near duplicates")


def _squash(text: str) -> str:
    return re.sub(r"[ \t]+", " ", re.sub(r"\n{3,}", "\n\n", text.replace("\r\n", "\n"))).strip()


def clean(examples: Iterable[Example], *, max_chars: int = 6000, near_duplicate_threshold: float | None = 0.9) -> tuple[list[Example], CleanReport]:
    """Normalise whitespace; drop empty, over-long (question + answer > ``max_chars``), exact
    duplicates and (unless the threshold is None) near duplicates, keeping the first of each."""
    counts = {"empty": 0, "too_long": 0, "exact_duplicates": 0, "near_duplicates": 0}
    seen: set[tuple[str, str]] = set()
    kept: list[Example] = []
    for ex in examples:
        ex = replace(ex, question=_squash(ex.question), answer=_squash(ex.answer))
        key = (ex.question.lower(), ex.answer.lower())
        if not ex.question or not ex.answer:
            counts["empty"] += 1
        elif len(ex.question) + len(ex.answer) > max_chars:
            counts["too_long"] += 1
        elif key in seen:
            counts["exact_duplicates"] += 1
        else:
            seen.add(key)
            kept.append(ex)
    if near_duplicate_threshold is not None and kept:
        groups = near_duplicate_groups([f"{e.question}\n{e.answer}" for e in kept], threshold=near_duplicate_threshold)
        firsts: set[int] = set()
        unique = []
        for ex, g in zip(kept, groups):
            if g in firsts:
                counts["near_duplicates"] += 1
            else:
                firsts.add(g)
                unique.append(ex)
        kept = unique
    return kept, CleanReport(kept=len(kept), **counts)


_REDACTIONS = (
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("PHONE", re.compile(r"(?<![\w])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{3}[\s.-]\d{3,4}(?:[\s.-]\d{3,4})?(?![\w])")),
    ("ID", re.compile(r"\b\d{9,}\b")),
)


def redact(examples: Iterable[Example]) -> tuple[list[Example], dict[str, int]]:
    """Replace e-mails, phone numbers and digit runs of 9+ with ``[EMAIL]``, ``[PHONE]``, ``[ID]``."""
    counts = {name: 0 for name, _ in _REDACTIONS}

    def scrub(text: str) -> str:
        for name, pattern in _REDACTIONS:
            text, n = pattern.subn(f"[{name}]", text)
            counts[name] += n
        return text

    return [replace(ex, question=scrub(ex.question), answer=scrub(ex.answer)) for ex in examples], counts


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example] = field(default_factory=list)


def split(
    examples: Sequence[Example], *, by: str | None = None, validation: float = 0.1, test: float = 0.1, seed: int = 0,
    near_duplicate_threshold: float = 0.8,
) -> Splits:
    """Seeded split by whole groups (see module docstring). ``by`` names a metadata key.

    Raises :class:`EmptyDatasetError` when there are too few groups to give every requested
    split at least one (ask for ``validation=0`` or ``test=0`` to skip one).
    """
    if not examples:
        raise EmptyDatasetError("no examples to split")
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise InputError(f"validation ({validation}) and test ({test}) must be fractions summing to less than 1")
    if by is not None and any(by not in e.metadata for e in examples):
        raise InputError(f"some examples have no {by!r} metadata to split by; load it with keep=[{by!r}]")
    clusters = near_duplicate_groups([f"{e.question}\n{e.answer}" for e in examples], threshold=near_duplicate_threshold)
    # Union of key groups and near-duplicate clusters: both must stay on one side.
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for e, c in zip(examples, clusters):
        a, b = find(("dup", c)), find(("key", e.metadata[by]) if by else ("dup", c))
        if a != b:
            parent[b] = a
    group_of = [find(("dup", c)) for c in clusters]
    groups = sorted(set(group_of), key=repr)
    random.Random(seed).shuffle(groups)
    wanted = [s for s, f in (("validation", validation), ("test", test)) if f > 0]
    if len(groups) < 1 + len(wanted):
        raise EmptyDatasetError(
            f"{len(groups)} group(s) cannot fill train and {' and '.join(wanted)}; add data or pass validation=0 / test=0"
        )
    sizes: dict[Any, int] = {}
    for g in group_of:
        sizes[g] = sizes.get(g, 0) + 1
    # Fill validation, then test, with whole shuffled groups up to their share of the rows;
    # every requested split gets at least one group and train keeps at least one.
    assign: dict[Any, str] = {}
    i = 0
    for k, side in enumerate(wanted):
        target, filled = (validation if side == "validation" else test) * len(examples), 0
        still_needed = len(wanted) - k - 1
        while (filled == 0 or filled < target) and len(groups) - i > still_needed + 1:
            assign[groups[i]] = side
            filled += sizes[groups[i]]
            i += 1
    parts: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for e, g in zip(examples, group_of):
        parts[assign.get(g, "train")].append(e)
    return Splits(train=parts["train"], validation=parts["validation"], test=parts["test"])


def data_report(examples: Sequence[Example], *, title: str = "data", bins: int = 8) -> str:
    """Counts and a text histogram of example lengths (question + answer, in words)."""
    if not examples:
        return f"{title}: 0 examples"
    lengths = [len(e.question.split()) + len(e.answer.split()) for e in examples]
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min((n - lo) // width, bins - 1)] += 1
    top = max(counts)
    lines = [f"{title}: {len(examples)} examples, words per example min {lo} / median {sorted(lengths)[len(lengths) // 2]} / max {hi}"]
    for i, c in enumerate(counts):
        a = lo + i * width
        lines.append(f"  {a:>5}-{a + width - 1:<5} {'#' * max(1 if c else 0, round(30 * c / top)):<30} {c}")
    return "\n".join(lines)
