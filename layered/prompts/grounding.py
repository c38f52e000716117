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
