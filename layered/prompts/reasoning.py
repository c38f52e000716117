"""Chain-of-thought kept out of the answer: the model reasons in a tagged block first.

The instruction asks for ``<reasoning>...</reasoning>`` followed by the final answer.
:func:`split_reasoning` returns both parts; the user sees only the answer, the reasoning is
kept in ``Answer.metadata["reasoning"]``. An unclosed block (the model ran out of tokens)
yields an empty answer rather than leaking half a thought.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

OPEN, CLOSE = "<reasoning>", "</reasoning>"
INSTRUCTION = (
    f"First think step by step inside {OPEN}...{CLOSE}. "
    f"Then, after {CLOSE}, write only the final answer for the user."
)
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL | re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str, str]:
    """``(reasoning, answer)`` from a model output that followed :data:`INSTRUCTION`."""
    m = _BLOCK.search(text)
    if m:
        return m.group(1).strip(), (text[: m.start()] + text[m.end():]).strip()
    start = text.lower().find(OPEN)
    if start >= 0:  # opened, never closed: everything after it is reasoning
        return text[start + len(OPEN):].strip(), text[:start].strip()
    return "", text.strip()


def stream_answer_only(pieces: Iterable[str]) -> Iterator[str]:
    """Pass streamed text through, holding back a leading ``<reasoning>`` block.

    Yields the same answer text that :func:`split_reasoning` would return for the joined
    stream when the block comes first (the instructed format).
    """
    buffer, passing, started = "", False, False
    for piece in pieces:
        if passing:
            if not started:  # the answer's leading whitespace is dropped, as split_reasoning does
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece
            continue
        buffer += piece
        head = buffer.lstrip().lower()
        if head.startswith(OPEN):
            end = buffer.lower().find(CLOSE)
            if end >= 0:
                passing = True
                rest = buffer[end + len(CLOSE):].lstrip()
                if rest:
                    started = True
                    yield rest
        elif not OPEN.startswith(head[: len(OPEN)]):  # cannot become a reasoning block
            passing, started = True, bool(buffer.strip())
            if started:
                yield buffer.lstrip()
