"""One ``typing.Protocol`` per role of a pipeline, each with one main method, and the
capabilities a part may offer beyond it.

Any object with the right method plugs into a :class:`layered.Pipeline`: no base class and
no registration are needed. The protocols are ``runtime_checkable``; the pipeline checks a
part once, when it is put into a slot (:func:`require` for the role, :func:`provides` for
each optional capability), and a part that does not fit gets one line naming the missing
member. Capabilities (a token budget, named adapters, indexing, warm-up, persistence) are
small protocols of their own, so what the pipeline relies on is declared here, not probed
per call; a :class:`Slot` does both when a part is put in.

:class:`AnsweringPipeline` and :class:`TrainablePipeline` declare what evaluation and
tuning call back into (both are what :class:`layered.Pipeline` offers).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Generic, Iterable, Iterator, Mapping, Protocol, Sequence, TypeVar, cast, overload, runtime_checkable

import numpy as np

from layered.errors import ConfigError
from layered.types import Answer, Chunk, Document, Generation, Hit, Message, Prompt

Filters = Mapping[str, Any]
T = TypeVar("T")


@runtime_checkable
class Loader(Protocol):
    """Reads a source (file, folder...) into documents."""

    def load(self, source: str) -> Iterable[Document]: ...


@runtime_checkable
class Chunker(Protocol):
    """Splits documents into chunks; offsets point back into each document's text."""

    def split(self, docs: Iterable[Document]) -> list[Chunk]: ...


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors of shape ``(len(texts), dim)``."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class VectorStore(Protocol):
    """Stores chunks with their vectors; search returns hits best first.

    ``version`` grows on every change (what BM25 over the same chunks rebuilds on), ``chunks()``
    lists what is stored, ``len()`` counts it."""

    version: int

    def __len__(self) -> int: ...

    def chunks(self) -> list[Chunk]: ...

    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None: ...

    def search(self, vector: np.ndarray, *, k: int, filters: Filters | None = None) -> list[Hit]: ...

    def delete(self, chunk_ids: Iterable[str]) -> int: ...


@runtime_checkable
class Retriever(Protocol):
    """Finds the chunks most relevant to a query, best first, at most ``k``."""

    def retrieve(self, query: str, *, k: int, filters: Filters | None = None) -> list[Hit]: ...


@runtime_checkable
class Reranker(Protocol):
    """Re-orders hits for a query, best first."""

    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]: ...


@runtime_checkable
class PromptTemplate(Protocol):
    """Renders the question, retrieved context (numbered 1..n) and variables into chat messages."""

    def render(self, *, question: str, context: Sequence[Hit] = (), **variables: Any) -> Prompt: ...


@runtime_checkable
class Generator(Protocol):
    """Generates a completion for a prompt; ``stream`` yields the same text in pieces."""

    def generate(self, prompt: Prompt) -> Generation: ...

    def stream(self, prompt: Prompt) -> Iterator[str]: ...


@runtime_checkable
class Router(Protocol):
    """Picks the adapter that should answer a question (``None``: the generator's default)."""

    def route(self, question: str) -> str | None: ...


# -- capabilities: what a part may offer beyond its role's one method --------------------------


@runtime_checkable
class TokenBudgeted(Protocol):
    """A generator that counts prompt tokens: the pipeline packs prompts into ``prompt_budget``."""

    @property
    def prompt_budget(self) -> int: ...

    def count_tokens(self, prompt: Prompt) -> int: ...


@runtime_checkable
class AdapterHost(Protocol):
    """A generator serving named adapters on one base model; a request names one with
    ``adapter=`` (``"base"``: none; ``None``: ``default_adapter``)."""

    @property
    def adapters(self) -> Mapping[str, Mapping[str, Any]]: ...

    default_adapter: str | None

    def generate(self, prompt: Prompt, *, adapter: str | None = None, max_new_tokens: int | None = None) -> Generation: ...

    def stream(self, prompt: Prompt, *, adapter: str | None = None, max_new_tokens: int | None = None) -> Iterator[str]: ...


@runtime_checkable
class AdapterInstaller(AdapterHost, Protocol):
    """An adapter host that installs saved adapter weights beside its own (``Pipeline.add_adapter``)."""

    model_name: str

    def add_adapter(self, name: str, config: Mapping[str, Any], weights_file: Path, *, default: bool = False) -> None: ...


@runtime_checkable
class Tunable(AdapterInstaller, Protocol):
    """A generator ``Pipeline.fit`` can train: it attaches a fresh adapter and exposes the model to train."""

    context_window: int

    @property
    def model(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    def attach_adapter(self, config: Any, name: str = ...) -> Any: ...


@runtime_checkable
class Indexable(Protocol):
    """A retriever that indexes documents (``Pipeline.add_documents``)."""

    def add_documents(self, docs: Sequence[Document], *, progress: bool = False) -> Any: ...


@runtime_checkable
class Deletable(Protocol):
    """A retriever that removes documents from its index (``Pipeline.delete_documents``)."""

    def delete_documents(self, doc_ids: Sequence[str]) -> int: ...


@runtime_checkable
class Embedded(Protocol):
    """A retriever searching an embedder's vector space (few-shot selection reuses it)."""

    embedder: Any


@runtime_checkable
class WarmUp(Protocol):
    """A part with heavy models that can load them now rather than on first use."""

    def warm_up(self) -> Any: ...


@runtime_checkable
class Reasoning(Protocol):
    """A prompt that may ask for reasoning before the answer (``reasoning=True``): the pipeline
    splits it off the answer and streams only the answer."""

    reasoning: bool


@runtime_checkable
class Persistable(Protocol):
    """A part that describes itself as JSON-ready data (``kind`` plus its settings), so a pipeline holding it can be saved."""

    def config(self) -> dict[str, Any]: ...


@runtime_checkable
class SavesFiles(Protocol):
    """A part with files of its own (an index, adapter weights) written into the pipeline's folder."""

    def save(self, folder: Path) -> Any: ...


@runtime_checkable
class LoadsFiles(Protocol):
    """A part class that rebuilds itself from a saved folder and its config (``cls.load(folder, config)``)."""

    def load(self, folder: Path, config: Mapping[str, Any]) -> Any: ...


@runtime_checkable
class Timed(Protocol):
    """A streamed answer that reports its request's timing once exhausted."""

    @property
    def timing(self) -> Mapping[str, float]: ...


# -- what evaluation and tuning call back into -------------------------------------------------


@runtime_checkable
class AnsweringPipeline(Protocol):
    """A pipeline that answers questions and derives variants of itself (what evaluation uses)."""

    generator: Generator
    retriever: Retriever | None
    prompt: PromptTemplate
    min_score: float | None
    #: The answerability decision (a :class:`layered.answerability.Answerability`), or None.
    abstain: Any

    def ask(self, question: str, **options: Any) -> Answer: ...

    def replace(self, **changes: Any) -> "AnsweringPipeline": ...


@runtime_checkable
class TrainablePipeline(Protocol):
    """A pipeline whose served prompts tuning formats its examples with (train what you serve)."""

    generator: Any
    retriever: Retriever | None

    def retrieve(self, question: str, *, k: int | None = None, filters: Filters | None = None, user: Any = None) -> list[Hit]: ...

    def build_chat_prompt(self, messages: Sequence[Any], **variables: Any) -> Prompt: ...

    def passages(self, query: str, *, k: int | None = None, filters: Filters | None = None, user: Any = None,
                 exclude: Sequence[str] = ()) -> tuple[list[Hit], Any]: ...

    def standalone_query(self, messages: Sequence[Any]) -> str: ...

    refusal: str

    def pack_chat(self, question: str, history: Sequence[Message], hits: Sequence[Hit], variables: dict[str, Any]) -> Prompt: ...

    def fit(self, train: Sequence[Any], **options: Any) -> Any: ...

    def replace(self, **changes: Any) -> "TrainablePipeline": ...


# -- checking parts -----------------------------------------------------------------------------

#: Keywords a capability needs in a method's signature (a name alone cannot tell them apart).
_KEYWORDS: dict[type, dict[str, tuple[str, ...]]] = {AdapterHost: {"generate": ("adapter",), "stream": ("adapter",)}}


def members(protocol: type) -> tuple[str, ...]:
    """The public members ``protocol`` declares (methods, properties, attributes), its bases' first."""
    names: list[str] = []
    for klass in reversed(protocol.__mro__):
        if not getattr(klass, "_is_protocol", False) or klass is Protocol:
            continue
        for name in (*vars(klass).get("__annotations__", {}), *vars(klass)):
            if not name.startswith("_") and name not in names:
                names.append(name)
    return tuple(names)


def _has(part: Any, name: str) -> bool:
    """``part.name`` exists, found without running it: a property (which may load a model) is
    seen on the class; only what no class declares is looked up, so ``__getattr__``
    delegation still counts."""
    try:
        inspect.getattr_static(part, name)
        return True
    except AttributeError:
        return hasattr(part, name)


def accepts_keywords(function: Any, names: Sequence[str]) -> frozenset[str]:
    """Which of ``names`` ``function`` takes as keyword arguments (all of them with ``**kwargs``)."""
    return frozenset(name for name in names if _takes(function, name))


def _takes(function: Any, keyword: str) -> bool:
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature: take it at its word
        return True
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def missing(part: Any, protocol: type) -> list[str]:
    """What ``part`` lacks to provide ``protocol``: member names, or ``"name(keyword=)"`` for a
    method without a keyword the protocol needs. Looked up as attribute access does, so a
    wrapper that delegates attributes to the part it wraps provides what that part provides."""
    lacking = [name for name in members(protocol) if not _has(part, name)]
    for name, keywords in _KEYWORDS.get(protocol, {}).items():
        if name not in lacking:
            lacking += [f"{name}({k}=)" for k in keywords if not _takes(getattr(part, name), k)]
    return lacking


def provides(part: Any, protocol: type) -> bool:
    """Whether ``part`` offers the capability ``protocol`` (checked once, when it takes a slot)."""
    return part is not None and not missing(part, protocol)


def _signature(protocol: type, name: str) -> str:
    member = inspect.getattr_static(protocol, name, None)
    if not callable(member):
        return name
    signature = inspect.signature(member)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values() if p.name != "self"]
    return f"{name}{signature.replace(parameters=params, return_annotation=inspect.Signature.empty)}".replace("=Ellipsis", "=...")


def require(slot: str, part: Any, protocol: type) -> None:
    """Raise one :class:`ConfigError` line when ``part`` cannot fill ``slot``: what the slot
    needs and the first member ``part`` lacks."""
    lacking = missing(part, protocol)
    if lacking:
        needs = " and ".join(_signature(protocol, name) for name in members(protocol))
        first = lacking[0]
        if callable(inspect.getattr_static(protocol, first, None)):
            first += "()"
        raise ConfigError(f"the {slot} must have {needs}; {type(part).__name__} has no {first}")


class Slot(Generic[T]):
    """A checked slot of a composite (a :class:`~layered.Pipeline`'s ``generator``, ``retriever``...).

    Putting a part in (at construction or by assignment) runs :func:`require` with the slot's
    ``role`` (``None`` passes when ``optional``) and records each of ``capabilities``
    (``attribute=protocol``) as ``provides(part, protocol)`` on the owner; ``derived``
    (``attribute=function``) records ``function(part)`` for what a protocol cannot say.
    """

    def __init__(self, role: type, *, optional: bool = False, derived: Mapping[str, Any] | None = None, **capabilities: type) -> None:
        self.role, self.optional = role, optional
        self.capabilities, self.derived = capabilities, dict(derived or {})
        self.name = self.attribute = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.attribute = name, f"_{name}"

    @overload
    def __get__(self, instance: None, owner: type) -> "Slot[T]": ...

    @overload
    def __get__(self, instance: object, owner: type) -> T: ...

    def __get__(self, instance: object | None, owner: type) -> "T | Slot[T]":
        if instance is None:
            return self
        return cast(T, getattr(instance, self.attribute))

    def __set__(self, instance: object, part: T) -> None:
        if part is not None or not self.optional:
            require(self.name, part, self.role)
        setattr(instance, self.attribute, part)
        for attribute, protocol in self.capabilities.items():
            setattr(instance, attribute, provides(part, protocol))
        for attribute, function in self.derived.items():
            setattr(instance, attribute, function(part))
