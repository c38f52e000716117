"""The default retriever wiring, in one place: MiniLM embeddings, token chunks cut by the
embedder's own tokenizer, FAISS; optionally fused with BM25.

:meth:`Pipeline.from_defaults <layered.pipeline.Pipeline.from_defaults>`, ``layered index``,
the bundled assistants and the retrieval benchmark all build their dense retriever here, so
the chunk size has one default (:data:`~layered.retrieval.chunkers.TokenChunker`'s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from layered.retrieval.chunkers import TokenChunker
from layered.types import Document

#: Tokens per chunk and tokens shared by neighbouring chunks, unless a caller says otherwise.
CHUNK_SIZE = TokenChunker.size
CHUNK_OVERLAP = TokenChunker.overlap


def dense_retriever(
    embedder: Any = None, *, chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP, **chunker_options: Any,
) -> Any:
    """An empty :class:`~layered.retrieval.dense.DenseRetriever` on ``embedder`` (the packaged
    MiniLM by default), its chunks counted in the embedder's tokens when it has a tokenizer."""
    from layered.retrieval.dense import DenseRetriever

    if embedder is None:
        from layered.retrieval.embedders import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder()
    tok = getattr(embedder, "tokenizer", None)  # a user's embedder may count no tokens
    chunker = TokenChunker(size=chunk_size, overlap=chunk_overlap, **({"tokenizer": tok()} if callable(tok) else {}),
                           **chunker_options)
    return DenseRetriever(embedder=embedder, chunker=chunker)


def index_corpus(
    corpus: str | Path | Sequence[Document], *, chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP,
    hybrid: bool = False, progress: bool = False, embed: Any = None, **loader_options: Any,
) -> Any:
    """The default retriever with ``corpus`` (a file, a folder, or documents) indexed;
    ``hybrid=True`` fuses BM25 with dense search; ``embed`` embeds the chunks elsewhere (e.g. a
    :class:`~layered.retrieval.distributed.RayEmbedding`; None: this process); ``loader_options`` go to
    :class:`~layered.retrieval.loaders.FileLoader`."""
    from layered.retrieval.loaders import load_documents

    retriever = dense_retriever(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    if hybrid:
        from layered.retrieval.hybrid import HybridRetriever

        retriever = HybridRetriever(retriever)
    docs = load_documents(corpus, **loader_options) if isinstance(corpus, (str, Path)) else list(corpus)
    retriever.add_documents(docs, progress=progress, **({"embed": embed} if embed is not None else {}))
    return retriever
