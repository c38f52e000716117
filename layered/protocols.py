"""One ``typing.Protocol`` per role of a pipeline, each with one main method.

Any object with the right method plugs into a :class:`layered.Pipeline`: no base class and
no registration are needed. The protocols are ``runtime_checkable`` so the pipeline can
give a clear error when an object does not fit its slot.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from layered.types import Chunk, Document, Generation, Hit, Prompt

Filters = Mapping[str, Any]


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
    """Stores chunks with their vectors; search returns hits best first."""

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
