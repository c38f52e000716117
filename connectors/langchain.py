"""LangChain interop with real ``langchain-core`` objects, both ways.

- :func:`as_runnable`: a :class:`~layered.Pipeline` as a LangChain ``Runnable`` (``invoke``,
  ``batch``, ``stream``, and their async forms), input a question string or a dict with
  ``question`` plus prompt variables (``k``, ``adapter`` and ``user`` pass through too).
- :class:`LayeredRetriever`: a layered pipeline's retrieval as a LangChain ``BaseRetriever``.
- :class:`LangChainRetriever`: any LangChain ``BaseRetriever`` as a layered retriever, to
  put in ``Pipeline(retriever=...)``.
- :class:`LayeredEmbeddings`: a layered embedder as LangChain ``Embeddings``.
- :func:`to_langchain_document` / :func:`from_langchain_document`: documents both ways,
  metadata kept (ids, source, chunk offsets and scores ride in ``metadata``).

Install with ``pip install "layered[langchain]"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any, AsyncIterator, Generator, Mapping, Sequence

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import ConfigDict

from layered.errors import InputError
from layered.retrieval.filters import matches
from layered.types import Chunk, Document, Hit

_RESERVED = ("layered_id", "layered_source", "layered_chunk_id", "layered_score")


def to_langchain_document(item: Document | Chunk | Hit) -> LCDocument:
    """A LangChain document for a layered document, chunk or hit; ids, source and score go in metadata."""
    if isinstance(item, Hit):
        doc = to_langchain_document(item.chunk)
        doc.metadata["layered_score"] = item.score
        return doc
    if isinstance(item, Chunk):
        meta = {**item.metadata, "layered_id": item.doc_id, "layered_chunk_id": item.id, "layered_source": item.source,
                "start": item.start, "end": item.end}
        return LCDocument(page_content=item.text, metadata=meta, id=item.id)
    return LCDocument(page_content=item.text, metadata={**item.metadata, "layered_id": item.id, "layered_source": item.source},
                      id=item.id)


def from_langchain_document(doc: LCDocument) -> Document:
    """A layered document for a LangChain one (id from ``doc.id``, else metadata, else a content hash)."""
    meta = dict(doc.metadata or {})
    doc_id = str(meta.pop("layered_id", None) or doc.id or meta.get("id") or hashlib.sha256(doc.page_content.encode()).hexdigest()[:16])
    source = str(meta.pop("layered_source", None) or meta.get("source") or doc_id)
    for key in _RESERVED:
        meta.pop(key, None)
    return Document(id=doc_id, text=doc.page_content, source=source, metadata=meta)


def _input(value: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping) and isinstance(value.get("question"), str):
        options = {k: v for k, v in value.items() if k != "question"}
        return value["question"], options
    raise InputError("the pipeline runnable takes a question string or a dict with a 'question' string")


class PipelineRunnable(Runnable[Any, Any]):
    """A pipeline as a LangChain Runnable; output is the answer text (or the Answer with ``output="answer"``)."""

    def __init__(self, pipeline: Any, *, output: str = "text") -> None:
        if output not in ("text", "answer"):
            raise InputError(f"output is 'text' or 'answer', got {output!r}")
        self.pipeline, self.output = pipeline, output

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:  # noqa: A002 - LangChain's name
        question, options = _input(input)
        answer = self.pipeline.ask(question, **options)
        return answer if self.output == "answer" else answer.text

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Generator[str, None, None]:  # noqa: A002
        question, options = _input(input)
        yield from self.pipeline.stream(question, **options)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:  # noqa: A002
        return await asyncio.to_thread(self.invoke, input, config)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[str]:  # noqa: A002
        """Stream from one worker thread: the generator holds a lock that the thread which
        took it must release, so the sync stream never hops between executor threads."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def send(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                stop.set()

        def produce() -> None:
            pieces = self.stream(input, config)
            try:
                for piece in pieces:
                    if stop.is_set():
                        break
                    send("piece", piece)
                send("done", None)
            except BaseException as e:  # handed to the consumer below
                send("error", e)
            finally:
                pieces.close()

        threading.Thread(target=produce, name="layered-astream", daemon=True).start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()  # a consumer that stops early ends the generation at the next piece


def as_runnable(pipeline: Any, *, output: str = "text") -> PipelineRunnable:
    """``pipeline`` as a LangChain Runnable (see :class:`PipelineRunnable`)."""
    return PipelineRunnable(pipeline, output=output)


class LayeredRetriever(BaseRetriever):
    """A layered pipeline's retrieval (filters and access control included) as a LangChain retriever."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: Any
    k: int = 4
    user: Any = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return [to_langchain_document(h) for h in self.pipeline.retrieve(query, k=self.k, user=self.user)]


class LangChainRetriever:
    """Any LangChain ``BaseRetriever`` as a layered retriever (``retrieve(query, *, k, filters)``).

    LangChain retrievers choose how many documents they return and take no filters, so the
    results are filtered here and cut to ``k``; scores come from metadata (``score`` or
    ``layered_score``) when the retriever sets one, else from rank (1, 1/2, 1/3, ...).
    """

    kind = "langchain"

    def __init__(self, retriever: BaseRetriever) -> None:
        if not isinstance(retriever, BaseRetriever):
            raise InputError(f"expected a LangChain BaseRetriever, got {type(retriever).__name__}")
        self.retriever = retriever

    def retrieve(self, query: str, *, k: int, filters: Mapping[str, Any] | None = None) -> list[Hit]:
        hits: list[Hit] = []
        for rank, lc_doc in enumerate(self.retriever.invoke(query)):
            doc = from_langchain_document(lc_doc)
            if not matches(doc.metadata, filters):
                continue
            score = lc_doc.metadata.get("layered_score", lc_doc.metadata.get("score", 1.0 / (rank + 1)))
            chunk_id = str(lc_doc.metadata.get("layered_chunk_id") or doc.id)
            chunk = Chunk(id=chunk_id, doc_id=doc.id, text=doc.text, source=doc.source, end=len(doc.text), metadata=doc.metadata)
            hits.append(Hit(chunk=chunk, score=float(score), rank=len(hits) + 1))
            if len(hits) == k:
                break
        return hits


class LayeredEmbeddings(Embeddings):
    """A layered embedder (``embed(texts) -> ndarray``) as LangChain ``Embeddings``."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = self.embedder.embed(list(texts)).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        vector: list[float] = self.embedder.embed([text])[0].tolist()
        return vector
