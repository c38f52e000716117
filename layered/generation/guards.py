"""Decoding guards: stop a looping generation early and end every answer on a whole sentence.

Small models loop ("... the arm, the leg, the arm, the leg ...") or run into the token limit
mid-sentence. Both backends pass their text through one :class:`DecodingGuard`, so serving,
streaming and evaluation see the same answers:

* while decoding, :meth:`DecodingGuard.looping` says when the text has started to repeat a
  word ``ngram`` it already produced (the generator stops pulling tokens there);
* afterwards, :meth:`DecodingGuard.finish` cuts the text before the first repeat and, when
  the text was cut (a repeat or the token limit), back to its last complete sentence.

:func:`degenerate` is the evaluation's view of the same two failures: a repeated word
4-gram, or an answer that stops mid-sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

_WORD = re.compile(r"\w+", re.UNICODE)
#: A sentence ends at . ! ? (optionally followed by a closing quote, bracket or a citation
#: such as ``[2]``) before whitespace or the end of the text; a line ends a list item.
#: A bare list number ("6.") opening a line is not a sentence.
_SENTENCE_END = re.compile(
    r"(?<!\n\d)(?<!\n\d\d)(?<!^\d)(?<!^\d\d)[.!?](?:[\"')\]]|\s*\[\d+(?:\s*,\s*\d+)*\])*(?=\s|$)"
    r"|(?<!\n\d\.)(?<!\n\d\d\.)[^\s](?=\n)"
)


def _first_repeat(text: str, n: int) -> int | None:
    """Character offset where a word ``n``-gram that occurred earlier in ``text`` starts again."""
    words = list(_WORD.finditer(text.lower()))
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(m.group() for m in words[i:i + n])
        if gram in seen:
            return words[i].start()
        seen.add(gram)
    return None


def last_sentence_end(text: str) -> int:
    """Offset just past the last complete sentence in ``text`` (0 when there is none)."""
    end = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
    return end


def ends_mid_sentence(text: str) -> bool:
    """True when ``text`` does not end on a sentence end (list items and headings end lines too)."""
    stripped = text.rstrip()
    if not stripped:
        return False
    return last_sentence_end(stripped) != len(stripped) and not stripped.endswith(":")


def degenerate(text: str, *, ngram: int = 4) -> bool:
    """The evaluation's degeneration check: a repeated word ``ngram`` or a cut-off last sentence."""
    return _first_repeat(text, ngram) is not None or ends_mid_sentence(text)


@dataclass(frozen=True)
class DecodingGuard:
    """Loop and length guard shared by every generator backend (see module docstring).

    ``ngram``: a word n-gram repeated inside one answer marks a loop (None: no loop check).
    ``whole_sentences``: a cut answer ends on its last complete sentence (or line), and
    :meth:`stream` yields whole sentences; False streams the raw pieces and keeps cut tails.
    Contract of :meth:`finish`: the result is a prefix of ``text`` (stripped), never empty
    when ``text`` has words, and ends on a complete sentence whenever ``text`` was cut (with
    ``whole_sentences``).
    """

    ngram: int | None = 4
    whole_sentences: bool = True

    def looping(self, text: str) -> bool:
        """Whether decoding should stop now: ``text`` repeats one of its own ``ngram``-grams."""
        return self.ngram is not None and _first_repeat(text, self.ngram) is not None

    def finish(self, text: str, *, cut: bool = False, keep: int = 0) -> tuple[str, bool]:
        """``(answer, trimmed)``: ``text`` without its loop and without a dangling last sentence.

        ``cut`` says the generator stopped before the model ended (token limit, loop stop).
        The unfinished tail is dropped only when a complete sentence remains before it.
        ``keep`` characters (already streamed to a client) are never taken back.
        """
        out, trimmed = text.strip(), False
        repeat = _first_repeat(out, self.ngram) if self.ngram is not None else None
        if repeat is not None:
            out, trimmed, cut = out[:max(repeat, keep)].rstrip(), True, True
        if cut and self.whole_sentences and ends_mid_sentence(out):
            end = last_sentence_end(out)
            if end > 0 and end >= keep:
                out, trimmed = out[:end].rstrip(), True
        if not out:  # the loop started at the first word: keep the text as generated
            return text.strip(), False
        return out, trimmed

    def stream(self, pieces: Iterable[str], *, cut: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """Guard a generator's raw text pieces; yields the answer a whole sentence at a time.

        Stops pulling from ``pieces`` (and closes it, so the generator stops decoding) as soon
        as the text loops. ``cut()`` is asked at the end whether the generator hit its token
        limit. Joining what this yields gives exactly :meth:`finish` of the text (so a stream
        and a non-streamed answer are the same text); ``self.trimmed`` is not kept: compare
        the joined text with the raw one if needed.
        """
        text, sent, looped = "", 0, False
        source = iter(pieces)
        try:
            for piece in source:
                text = (text + piece).lstrip() if not text else text + piece
                if self.looping(text):
                    looped = True
                    break
                end = last_sentence_end(text) if self.whole_sentences else len(text.rstrip())
                if end > sent:
                    yield text[sent:end]
                    sent = end
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        final, _ = self.finish(text, cut=looped or cut(), keep=sent)
        if len(final) > sent:
            yield final[sent:]
