"""Grounding: show retrieved chunks to the model as numbered, delimited data; read back [n].

Each passage is wrapped in ``<passage id="n">...</passage>`` inside a ``<references>``
block. Passage text cannot close its delimiter early: any ``<passage``, ``</passage``,
``<references`` or ``</references`` inside the text is defused by replacing its ``<`` with
a look-alike (U+2039), so the model and the citation parser only ever see our own tags.
Chat-template control tokens (``<|im_start|>``, ``[INST]``...) are defused the same way
(:func:`layered.prompts.injection.defuse_control_tokens`; the generator also defuses its own
tokenizer's special tokens in every message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from layered.prompts.injection import defuse_control_tokens
from layered.types import Citation, Hit

_TAG = re.compile(r"<(/?\s*(?:passage|references))", re.IGNORECASE)
_CITE = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "the a an and or of to in on for with by is are was were be been it its this that these those as at from "
    "can may might will would should could have has had not no but if than then they them their there which who "
    "what when where how your you our we he she his her also such other more most some any all each".split()
)


def escape_passage(text: str) -> str:
    """Defuse delimiter tags and chat control tokens inside passage text (see module docstring)."""
    return _TAG.sub(lambda m: "\u2039" + m.group(1), defuse_control_tokens(text))


def format_context(hits: Sequence[Hit]) -> str:
    """The reference block for ``hits``, numbered 1..n in order."""
    parts = ["<references>"]
    for n, hit in enumerate(hits, start=1):
        parts.append(f'<passage id="{n}">\n{escape_passage(hit.chunk.text.strip())}\n</passage>')
    parts.append("</references>")
    return "\n".join(parts)


def to_citation(number: int, hit: Hit) -> Citation:
    c = hit.chunk
    return Citation(number=number, chunk_id=c.id, doc_id=c.doc_id, source=c.source, score=hit.score, text=c.text)


def parse_citations(text: str, context: Sequence[Hit]) -> tuple[list[Citation], list[int]]:
    """Citations ``[n]`` / ``[n, m]`` in ``text``, in order of first mention.

    Returns the valid citations and the numbers that were cited but not in the prompt.
    """
    seen: list[int] = []
    for m in _CITE.finditer(text):
        for part in m.group(1).split(","):
            n = int(part)
            if n not in seen:
                seen.append(n)
    valid = [to_citation(n, context[n - 1]) for n in seen if 1 <= n <= len(context)]
    invalid = [n for n in seen if not 1 <= n <= len(context)]
    return valid, invalid


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOP}


def attribute_by_overlap(text: str, context: Sequence[Hit], *, min_overlap: float = 0.6) -> list[Citation]:
    """Post-hoc attribution for answers that cite nothing themselves.

    Each answer sentence (of at least 4 content words) is credited to the passage that
    contains the largest share of its content words, when that share is ``min_overlap`` or
    more. Returns the credited passages in order of first credit. Small models rarely write
    ``[n]`` reliably; this keeps ``Answer.citations`` evidence-based rather than empty.
    """
    passages = [_content_words(h.chunk.text) for h in context]
    credited: list[int] = []
    for sentence in _SENTENCE.findall(text):
        words = _content_words(sentence)
        if len(words) < 4 or not passages:
            continue
        shares = [len(words & p) / len(words) for p in passages]
        best = max(range(len(shares)), key=shares.__getitem__)
        if shares[best] >= min_overlap and best + 1 not in credited:
            credited.append(best + 1)
    return [to_citation(n, context[n - 1]) for n in credited]


# -- groundedness ------------------------------------------------------------------------------

#: A sentence is supported when at least this share of its content words (lower-cased, plural
#: "s" folded, stop words and words under 3 letters left out) occurs in one passage shown to
#: the model. 0.6 is the overlap ``attribute_by_overlap`` already credits; on the medical
#: assistant's answers it keeps sentences copied or lightly reworded from a passage and flags
#: sentences that only share the topic words (see ``README`` "Grounded or silent").
SUPPORT_THRESHOLD = 0.6
#: Sentences with fewer content words ("Yes.", "See a doctor.") are too short to judge; they are kept.
MIN_CHECKED_WORDS = 3

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])(?:\s*\[\d+(?:\s*,\s*\d+)*\])?\s+(?=[\"'(\[A-Z0-9-])|\n+")


def split_sentences(text: str) -> list[str]:
    """``text`` cut into sentences (a citation ``[n]`` after the full stop stays with its sentence)."""
    out, start = [], 0
    for m in _SENTENCE_SPLIT.finditer(text):
        piece = text[start:m.start() + len(m.group().rstrip())] if m.group().strip() else text[start:m.start()]
        if piece.strip():
            out.append(piece.strip())
        start = m.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def _support_words(text: str) -> set[str]:
    words = _content_words(_CITE.sub(" ", text))
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words}


@dataclass(frozen=True)
class SentenceSupport:
    """One answer sentence and the passage that supports it best.

    ``passage`` is the 1-based number of that passage in the prompt (None: no passage shares
    a word); ``score`` the share of the sentence's content words found in it; ``checked`` is
    False for sentences too short to judge (they count as supported).
    """

    text: str
    supported: bool
    score: float
    passage: int | None
    checked: bool = True


def sentence_support(text: str, context: Sequence[Hit], *, threshold: float = SUPPORT_THRESHOLD) -> list[SentenceSupport]:
    """Check every sentence of ``text`` against the passages in ``context`` (see :data:`SUPPORT_THRESHOLD`)."""
    return check_sentences(split_sentences(text), context, threshold=threshold)


def check_sentences(sentences: Sequence[str], context: Sequence[Hit], *, threshold: float = SUPPORT_THRESHOLD) -> list[SentenceSupport]:
    """:func:`sentence_support` for sentences already cut (each judged whole, never re-split)."""
    passages = [_support_words(h.chunk.text) for h in context]
    out = []
    for sentence in sentences:
        words = _support_words(sentence)
        if len(words) < MIN_CHECKED_WORDS:
            out.append(SentenceSupport(sentence, True, 1.0, None, checked=False))
            continue
        shares = [len(words & p) / len(words) for p in passages]
        best = max(range(len(shares)), key=shares.__getitem__) if shares else None
        score = shares[best] if best is not None else 0.0
        out.append(SentenceSupport(sentence, score >= threshold, round(score, 3), None if not score or best is None else best + 1))
    return out


def quote_best_passage(question: str, context: Sequence[Hit], *, sentences: int = 2) -> tuple[str, int] | None:
    """The fallback answer: the ``sentences`` sentences of the passage that best matches the
    question, in their own order, with the passage's citation; ``(text, passage number)``.

    The passage is the one sharing most content words with the question (ties: the better
    ranked); within it, the sentences sharing most words with the question. None without context.
    """
    if not context:
        return None
    asked = _support_words(question)
    number = max(range(len(context)), key=lambda i: (len(asked & _support_words(context[i].chunk.text)), -i)) + 1
    parts = split_sentences(context[number - 1].chunk.text)
    best = sorted(range(len(parts)), key=lambda i: (-len(asked & _support_words(parts[i])), i))[:sentences]
    quoted = " ".join(parts[i] for i in sorted(best))
    return f"{quoted} [{number}]", number
