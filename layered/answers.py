"""Answer building: a generation (or a stream of pieces) and its prompt -> an :class:`~layered.types.Answer`.

What :class:`~layered.pipeline.Pipeline` does after generating: split off reasoning, check
every sentence against the passages shown (``grounding``), read back or attribute the
citations, and flag passages that look like injected instructions. Also the request checks
(the question, ``max_new_tokens``) and the per-request answer length, shared by ``ask``,
``chat`` and their streaming forms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, cast

from layered.errors import ConfigError, InputError
from layered.prompts.conversation import QUERY_METHODS
from layered.prompts.grounding import (
    attribute_by_overlap, parse_citations, quote_best_passage, sentence_support, to_citation,
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

    @property
    def options(self) -> dict[str, Any]:
        """The keywords for ``generator.generate``/``stream``."""
        return {**self.adapter, **self.length}


def check_settings(*, k: int, grounding: str, history_query: str) -> None:
    """A pipeline's answering settings, or one :class:`ConfigError` line."""
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
    if mode == "drop" and unsupported:
        if any(c.supported for c in checked):
            text = " ".join(c.text for c in checks if c.supported)
        else:  # nothing the model wrote is in the passages: quote the best one instead of inventing
            quote = quote_best_passage(question, prompt.context)
            if quote is not None:
                text, report["fallback"] = quote[0], True
    return text, report


def sources(prompt: Prompt) -> tuple[Citation, ...]:
    """Every passage in the prompt, numbered as the model saw them."""
    return tuple(to_citation(n, h) for n, h in enumerate(prompt.context, start=1))


def build_answer(
    question: str, prompt: Prompt, generation: Any, *, reasoning: bool = False, adapter: str | None = None, grounding: str = "off",
) -> Answer:
    """The :class:`Answer` for ``generation``: reasoning split off, grounding checked, citations read back."""
    text = generation.text
    metadata: dict[str, Any] = {"citation_mode": "model", "adapter": adapter}
    if reasoning:
        metadata["reasoning"], text = split_reasoning(text)
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


def answer_turn(turn: Turn, generation: Any, *, refusal: str, grounding: str) -> Answer:
    """The answer to ``turn`` (``generation`` is None when it is refused); with the standalone
    query in ``metadata["query"]`` when it differs from the question."""
    if turn.refused:
        return Answer(text=refusal, metadata={"refused": True, "adapter": None})
    answer = build_answer(turn.query, turn.prompt, generation, reasoning=turn.reasoning, adapter=turn.answered_by, grounding=grounding)
    return dataclasses.replace(answer, metadata={**answer.metadata, "query": turn.query}) if turn.rewritten else answer


def stream_answer(turn_of: Callable[[], Turn], stream: Callable[..., Iterable[str]], *, refusal: str, grounding: str) -> AnswerStream:
    """The streamed answer to the request ``turn_of()`` prepares (when first iterated), its
    pieces from ``stream(prompt, **options)`` (a generator's ``stream``).

    Grounding only marks here (streamed text cannot be taken back); citations and the
    metadata of a whole answer follow once the last piece is out.
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
            metadata["refused"] = True
            yield refusal
            return
        out = stream(turn.prompt, **turn.options)
        text: list[str] = []
        for piece in stream_answer_only(out) if turn.reasoning else out:
            text.append(piece)
            yield piece
        done = build_answer(turn.query, turn.prompt, Generation(text="".join(text)),
                            adapter=turn.answered_by, grounding="off" if grounding == "off" else "mark")
        result.citations = done.citations
        metadata.update(done.metadata)
        timing = cast(Timed, out).timing if provides(out, Timed) else None  # generators that measure their requests
        if timing:
            metadata["timing"] = dict(timing)

    result._pieces = pieces()
    return result
