"""Answer building: a generation (or a stream of pieces) and its prompt -> an :class:`~layered.types.Answer`.

What :class:`~layered.pipeline.Pipeline` does after generating: split off reasoning, check
every sentence against the passages shown (``grounding``), read back or attribute the
citations, and flag passages that look like injected instructions. Also the request checks
(the question, ``max_new_tokens``) and the per-request answer length, shared by ``ask``,
``chat`` and their streaming forms.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, cast

from layered.answerability import Answerability, Decision, refusal_naming
from layered.errors import ConfigError, InputError
from layered.prompts.conversation import QUERY_METHODS
from layered.prompts.grounding import (
    attribute_by_overlap, check_sentences, parse_citations, quote_best_passage, sentence_support, split_sentences, to_citation,
)
from layered.prompts.injection import injection_suspects
from layered.prompts.reasoning import split_reasoning, stream_answer_only
from layered.protocols import Timed, provides
from layered.types import Answer, Citation, Generation, Message, PieceStream, Prompt

DEFAULT_REFUSAL = "I could not find this in my sources, so I cannot answer it."
#: The ``Pipeline(grounding=...)`` modes: mark unsupported sentences, drop them, or skip the check.
GROUNDING = ("mark", "drop", "off")


class AnswerStream(PieceStream):
    """A streamed answer: iterate for its text pieces; ``metadata`` (filled before the first
    piece) carries what :class:`~layered.types.Answer` metadata would; ``close()`` stops the
    generator's decoding loop."""

    def __init__(self, pieces: Iterator[str], metadata: dict[str, Any]) -> None:
        super().__init__(pieces)
        self.metadata = metadata
        #: Every passage in the prompt (known before the first piece) and, once the stream
        #: has ended, the ones the answer cites, as in :class:`~layered.types.Answer`.
        self.sources: tuple[Citation, ...] = ()
        self.citations: tuple[Citation, ...] = ()


@dataclass(frozen=True)
class Turn:
    """One checked request, ready to generate: the retrieval query, the packed prompt and the
    generator options (the adapter chosen, the answer length)."""

    query: str
    prompt: Prompt
    #: The query differs from the user's last question (a follow-up made standalone).
    rewritten: bool
    #: No passage cleared ``min_score``: the pipeline refuses instead of generating.
    refused: bool
    #: The prompt asks for reasoning before the answer (kept out of the answer text).
    reasoning: bool = False
    #: ``{"adapter": name}`` when the request or the router named one, else nothing (the default).
    adapter: dict[str, Any] = field(default_factory=dict)
    #: The adapter that answers, as ``answer.metadata["adapter"]`` reports it.
    answered_by: str | None = None
    length: dict[str, Any] = field(default_factory=dict)
    #: The answerability decision (``Pipeline(abstain=...)``), or None without one.
    decision: Decision | None = None
    #: What a refused request is answered with.
    refusal: str = DEFAULT_REFUSAL

    def refused_metadata(self) -> dict[str, Any]:
        """The metadata of a refused answer: ``refused``, and the decision when there was one."""
        return {"refused": True, "adapter": None, **self.decided()}

    def decided(self) -> dict[str, Any]:
        return {} if self.decision is None else {"answerability": self.decision.to_dict()}

    @property
    def options(self) -> dict[str, Any]:
        """The keywords for ``generator.generate``/``stream``."""
        return {**self.adapter, **self.length}


def check_settings(*, k: int, grounding: str, history_query: str, abstain: Any = None) -> None:
    """A pipeline's answering settings, or one :class:`ConfigError` line."""
    if abstain is not None and not isinstance(abstain, Answerability):
        raise ConfigError(f"abstain must be an Answerability (layered.answerability), got {type(abstain).__name__}")
    if history_query not in QUERY_METHODS:
        raise ConfigError(f"history_query must be one of {', '.join(QUERY_METHODS)}, not {history_query!r}")
    if grounding not in GROUNDING:
        raise ConfigError(f"grounding must be one of {', '.join(GROUNDING)}, not {grounding!r}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")


def one_turn(question: Any) -> tuple[Message, ...]:
    """``question`` as a one-message conversation, checked."""
    check_question(question)
    return (Message("user", question),)


def check_question(question: Any) -> None:
    if not isinstance(question, str):
        raise InputError(f"the question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise InputError("the question is empty; ask something")


def check_max_new_tokens(n: Any) -> None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise InputError(f"max_new_tokens must be a positive integer, got {n!r}")


def answer_length(prompt: Prompt, requested: int | None = None) -> dict[str, Any]:
    """The answer budget as generator options: the smaller of the prompt's own (e.g. per
    audience) and the request's; nothing when neither sets one."""
    caps = [int(n) for n in (prompt.metadata.get("max_new_tokens"), requested) if n is not None]
    return {"max_new_tokens": min(caps)} if caps else {}


def ground(question: str, text: str, prompt: Prompt, mode: str) -> tuple[str, dict[str, Any]]:
    """Check ``text`` sentence by sentence against the prompt's passages (see ``Pipeline(grounding=...)``)."""
    checks = sentence_support(text, prompt.context)
    unsupported = [c.text for c in checks if not c.supported]
    checked = [c for c in checks if c.checked]
    report: dict[str, Any] = {"mode": mode, "sentences": len(checked), "supported": sum(c.supported for c in checked),
                              "unsupported": unsupported, "fallback": False}
    if mode == "drop":
        if not unsupported or any(c.supported for c in checked):
            # the kept sentences, one space apart: exactly what a stream shows (see stream_grounded)
            text = " ".join(c.text for c in checks if c.supported)
        else:  # nothing the model wrote is in the passages: quote the best one instead of inventing
            quote = quote_best_passage(question, prompt.context)
            if quote is not None:
                text, report["fallback"] = quote[0], True
    return text, report


#: The prompt's own delimiters (``<passage id="1">``, ``</references>``): a model that echoes one does not show it.
_DELIMITER = re.compile(r"</?\s*(?:passage|references)\b[^<>]{0,40}>", re.IGNORECASE)


def strip_delimiters(text: str) -> str:
    """``text`` without the prompt's passage delimiters (see :data:`_DELIMITER`)."""
    return _DELIMITER.sub("", text) if "<" in text else text


def stream_without_delimiters(pieces: Iterable[str]) -> Iterator[str]:
    """``pieces`` with the prompt's delimiters removed as :func:`strip_delimiters` removes them from the whole
    text: from a ``<`` on, text is held until it closes (or cannot be a delimiter any more)."""
    held = ""
    for piece in pieces:
        held += piece
        cut = held.rfind("<")
        if cut == -1 or ">" in held[cut:] or len(held) - cut > 64:
            out, held = strip_delimiters(held), ""
        else:
            out, held = strip_delimiters(held[:cut]), held[cut:]
        if out:
            yield out
    if held:
        yield strip_delimiters(held)


_BARE_CITATION = re.compile(r"\[[\d,\s]*\]?\Z")


def _stable(parts: list[str]) -> int:
    """How many of ``parts`` (the sentences of an answer still being written) more text cannot change:
    all but the last, and not the one before a bare citation (``[1`` or ``[1]``: it joins that sentence
    once the next one starts)."""
    if len(parts) < 2:
        return 0
    return len(parts) - (2 if _BARE_CITATION.match(parts[-1]) else 1)


def stream_grounded(question: str, pieces: Iterable[str], prompt: Prompt, *, refusal: str | None = None) -> Iterator[str]:
    """``pieces`` of an answer, re-cut into whole sentences, holding back what ``ground(..., "drop")``
    would drop: a sentence the passages do not support never reaches the reader, and the text shown
    is the text :func:`ground` returns for the whole answer (a fallback quote when nothing is supported).

    Sentences too short to judge wait until a supported sentence follows (or the answer ends without
    an unsupported one), as :func:`ground` keeps them only then. When the first sentence is the
    ``refusal`` (:func:`is_refusal`), the refusal naming the passages is shown and decoding stops.
    """
    text, done = "", 0
    pending: list[str] = []
    shown = supported = dropped = False

    def emit(sentences: list[str]) -> Iterator[str]:
        nonlocal shown
        for sentence in sentences:
            yield (" " if shown else "") + sentence
            shown = True

    def consider(sentences: list[str]) -> Iterator[str]:
        nonlocal supported, dropped
        for check in check_sentences(sentences, prompt.context):
            if not check.checked:
                if supported:
                    yield from emit([check.text])
                else:
                    pending.append(check.text)
            elif check.supported:
                supported = True
                yield from emit([*pending, check.text])
                pending.clear()
            else:
                dropped = True

    for piece in pieces:
        text += piece
        parts = split_sentences(text)
        stable = _stable(parts)
        if refusal and done == 0 and stable and is_refusal(parts[0], refusal):
            yield refusal_naming(prompt.context, lead=refusal)
            return
        yield from consider(parts[done:stable])
        done = max(done, stable)
    if refusal and done == 0 and is_refusal(text, refusal):
        yield refusal_naming(prompt.context, lead=refusal)
        return
    yield from consider(split_sentences(text)[done:])
    if dropped and not supported:
        quote = quote_best_passage(question, prompt.context)
        if quote is not None:
            yield from emit([quote[0]])
            return
    yield from emit(pending)


def _first_words(text: str) -> list[str]:
    parts = split_sentences(text)
    return re.findall(r"[a-z0-9]+", parts[0].lower()) if parts else []


def is_refusal(text: str, refusal: str) -> bool:
    """``text`` opens with the first sentence of ``refusal`` (a generator trained to abstain, e.g. by
    ``fit(abstain_share=...)``, writes the pipeline's refusal): decided on the first sentence alone,
    so a stream can tell as soon as that sentence is complete."""
    want = _first_words(refusal)
    return bool(want) and _first_words(text)[: len(want)] == want


def sources(prompt: Prompt) -> tuple[Citation, ...]:
    """Every passage in the prompt, numbered as the model saw them."""
    return tuple(to_citation(n, h) for n, h in enumerate(prompt.context, start=1))


def build_answer(
    question: str, prompt: Prompt, generation: Any, *, reasoning: bool = False, adapter: str | None = None, grounding: str = "off",
    refusal: str | None = None,
) -> Answer:
    """The :class:`Answer` for ``generation``: reasoning split off, grounding checked, citations read back.
    A generation that writes ``refusal`` (:func:`is_refusal`) is a refusal (``metadata["refused_by"] == "generator"``)
    naming what the passages shown were about."""
    text = generation.text
    metadata: dict[str, Any] = {"citation_mode": "model", "adapter": adapter}
    if reasoning:
        metadata["reasoning"], text = split_reasoning(text)
    text = strip_delimiters(text)
    if refusal and prompt.context and is_refusal(text, refusal):
        metadata.update(refused=True, refused_by="generator")
        return Answer(text=refusal_naming(prompt.context, lead=refusal), sources=sources(prompt), generation=generation, metadata=metadata)
    if grounding != "off" and prompt.context:
        text, metadata["grounding"] = ground(question, text, prompt, grounding)
    citations, invalid = parse_citations(text, prompt.context)
    if not citations and prompt.context:
        citations = attribute_by_overlap(text, prompt.context)
        metadata["citation_mode"] = "overlap"
    if invalid:
        metadata["invalid_citations"] = invalid
    timing = generation.timing
    if timing:
        metadata["timing"] = dict(timing)
    suspects = injection_suspects(prompt.context)
    if suspects:
        metadata["injection_suspects"] = suspects
    return Answer(text=text, citations=tuple(citations), sources=sources(prompt), generation=generation, metadata=metadata)


def answer_turn(turn: Turn, generation: Any, *, grounding: str) -> Answer:
    """The answer to ``turn`` (``generation`` is None when it is refused); with the standalone
    query in ``metadata["query"]`` when it differs from the question."""
    if turn.refused:
        return Answer(text=turn.refusal, metadata=turn.refused_metadata())
    answer = build_answer(turn.query, turn.prompt, generation, reasoning=turn.reasoning, adapter=turn.answered_by, grounding=grounding,
                          refusal=turn.refusal)
    extra = {**turn.decided(), **({"query": turn.query} if turn.rewritten else {})}
    return dataclasses.replace(answer, metadata={**answer.metadata, **extra}) if extra else answer


def stream_answer(turn_of: Callable[[], Turn], stream: Callable[..., Iterable[str]], *, grounding: str) -> AnswerStream:
    """The streamed answer to the request ``turn_of()`` prepares (when first iterated), its
    pieces from ``stream(prompt, **options)`` (a generator's ``stream``).

    The reader sees what :meth:`~layered.pipeline.Pipeline.ask` would return: with ``grounding="drop"``
    the pieces are re-cut into sentences and unsupported ones are held back (:func:`stream_grounded`);
    with ``"mark"`` they pass as generated and are marked in the metadata. Citations and the metadata
    of a whole answer follow once the last piece is out.
    """
    metadata: dict[str, Any] = {}
    result = AnswerStream(iter(()), metadata)

    def pieces() -> Iterator[str]:
        turn = turn_of()
        result.sources = sources(turn.prompt)
        suspects = injection_suspects(turn.prompt.context)
        if suspects:
            metadata["injection_suspects"] = suspects
        if turn.rewritten:
            metadata["query"] = turn.query
        if turn.refused:
            metadata.update(turn.refused_metadata())
            yield turn.refusal
            return
        metadata.update(turn.decided())
        out = stream(turn.prompt, **turn.options)
        raw: list[str] = []

        def recorded() -> Iterator[str]:
            for piece in out:
                raw.append(piece)
                yield piece

        answer_pieces = stream_without_delimiters(stream_answer_only(recorded()) if turn.reasoning else recorded())
        if grounding == "drop" and turn.prompt.context:
            answer_pieces = stream_grounded(turn.query, answer_pieces, turn.prompt, refusal=turn.refusal)
        yield from answer_pieces
        if hasattr(out, "close"):  # a refusal stops reading early: end the decoding loop
            out.close()
        done = build_answer(turn.query, turn.prompt, Generation(text="".join(raw)), reasoning=turn.reasoning,
                            adapter=turn.answered_by, grounding=grounding, refusal=turn.refusal)
        result.citations = done.citations
        metadata.update(done.metadata)
        timing = cast(Timed, out).timing if provides(out, Timed) else None  # generators that measure their requests
        if timing:
            metadata["timing"] = dict(timing)

    result._pieces = pieces()
    return result
