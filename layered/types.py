"""Frozen value types passed between the roles of a pipeline.

All types are immutable dataclasses of plain values, so they can be logged, compared and
serialised to JSON (``to_dict``/``from_dict``) without pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal, Mapping

from layered.errors import InputError

Role = Literal["system", "user", "assistant"]

#: The metadata key that holds a document's access list, and the principal meaning everyone.
ACCESS_KEY = "access"
PUBLIC = "*"
#: The principal kinds an access list may name (besides ``"*"``).
PRINCIPAL_KINDS = ("user", "group")


def checked_access(value: Any) -> list[str]:
    """``value`` as an access list, or one :class:`~layered.errors.InputError` line.

    An access list is a list (or tuple) of principals: ``"*"`` (everyone), ``"user:<id>"`` or
    ``"group:<name>"``, each a printable string with no surrounding spaces; an empty list lets
    no user see the document. Anything else is refused, so a typo can never publish a document:
    ``None`` (JSON ``null``), ``""``, a bare string, a mapping, a nested list, a number in the
    list, or an unknown kind such as ``"usr:ann"``. A document without the key is public (``["*"]``);
    an explicit ``["*"]`` says so unambiguously.
    """
    shown = _short_repr(value)
    if value is None:
        raise InputError(f"metadata[{ACCESS_KEY!r}] is null; write ['*'] for a public document or list its principals "
                         "(e.g. ['user:ann', 'group:staff'])")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InputError(f"metadata[{ACCESS_KEY!r}] must be a list of principals such as ['user:ann', 'group:staff'] "
                         f"(or ['*'] for everyone), got {type(value).__name__} {shown}")
    for p in value:
        if not isinstance(p, str):
            raise InputError(f"metadata[{ACCESS_KEY!r}] must be a list of principal strings, got {type(p).__name__} "
                             f"{_short_repr(p)} in {shown}")
        kind, sep, name = p.partition(":")
        if p != PUBLIC and not (sep and kind in PRINCIPAL_KINDS and name and name.strip() == name and name.isprintable()):
            raise InputError(f"metadata[{ACCESS_KEY!r}] holds {_short_repr(p)}, which is not a principal: write "
                             "'user:<id>', 'group:<name>' or '*'")
    return list(value)


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class Document:
    """A unit of source text as loaded, before chunking.

    ``id`` is stable across reloads of the same source (derived from the file and the
    record's own id or position), ``source`` says where the text came from (a path or URL).
    """

    id: str
    text: str
    source: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A malformed access list fails here, where every loader and caller builds documents,
        # rather than being dropped (which would make the document public).
        if isinstance(self.metadata, Mapping) and ACCESS_KEY in self.metadata:
            checked_access(self.metadata[ACCESS_KEY])


@dataclass(frozen=True)
class Chunk:
    """A piece of a :class:`Document` that is embedded and retrieved.

    ``start``/``end`` are character offsets into the document's text, so
    ``document.text[start:end] == chunk.text``. ``context`` is text from elsewhere in the
    document that the chunk is read with when it is embedded, keyword-indexed or reranked (its
    document's title, when the chunk does not contain it; empty: none): :attr:`indexed_text`.
    """

    id: str
    doc_id: str
    text: str
    source: str = ""
    start: int = 0
    end: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)
    context: str = ""

    @property
    def indexed_text(self) -> str:
        """What retrieval reads: ``context``, a blank line, then ``text`` (``text`` alone without context)."""
        return f"{self.context}\n\n{self.text}" if self.context else self.text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metadata"] = dict(self.metadata)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Chunk":
        return cls(**{**d, "metadata": dict(d.get("metadata") or {}), "context": str(d.get("context") or "")})


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its score (higher is better) and 1-based rank."""

    chunk: Chunk
    score: float
    rank: int = 0


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: Role
    content: str


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: the exact chat messages handed to the generator.

    ``context`` holds the hits shown to the model, numbered 1..n in order, so that a
    citation ``[n]`` in the answer refers to ``context[n-1]``.
    """

    messages: tuple[Message, ...]
    context: tuple[Hit, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Generation:
    """The generator's output for one prompt."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length"] = "stop"
    #: Where the time went, when the generator measures it (seconds and token counts; the
    #: llama.cpp generator reports queued_s, prefill_s, decode_s, ttft_s, prompt_tokens,
    #: cached_tokens and tokens).
    timing: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    """A supervised example: a question (plus template variables) and its reference answer.

    ``history`` holds the chat turns before the question for a multi-turn example (see
    :func:`layered.prompts.conversation.example_from_messages`); it is formatted exactly as
    :meth:`layered.Pipeline.chat` serves it.
    """

    question: str
    answer: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[Message, ...] = ()


@dataclass(frozen=True)
class Citation:
    """A context passage referred to by an answer as ``[number]``."""

    number: int
    chunk_id: str
    doc_id: str
    source: str
    score: float
    text: str


@dataclass(frozen=True)
class Answer:
    """What :meth:`layered.Pipeline.ask` returns.

    ``citations`` lists, in order of first mention, the context passages the answer cites as
    ``[n]``; when the answer cites none, the passages its sentences were drawn from
    (``metadata["citation_mode"]`` is ``"model"`` or ``"overlap"``). ``sources`` lists every
    passage that was in the prompt, cited or not. ``metadata["invalid_citations"]`` lists
    numbers the model cited that were not in the prompt (dropped from ``citations``).
    """

    text: str
    citations: tuple[Citation, ...] = ()
    sources: tuple[Citation, ...] = ()
    generation: Generation | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "citations": [asdict(c) for c in self.citations],
            "sources": [asdict(c) for c in self.sources],
            "usage": None if self.generation is None else {
                "prompt_tokens": self.generation.prompt_tokens,
                "completion_tokens": self.generation.completion_tokens,
                "finish_reason": self.generation.finish_reason,
            },
            "metadata": dict(self.metadata),
        }


class PieceStream(Iterator[str]):
    """Text pieces drawn from another iterator; ``close()`` closes that iterator, which stops
    whatever produces the pieces (a generator's decoding loop)."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces

    def __iter__(self) -> "PieceStream":
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()
