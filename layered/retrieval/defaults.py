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

#: Index layouts: ``passages``, token chunks of ``chunk_size`` (the default); ``sentences``,
#: windows of 3 sentences (1 shared) read with their page's title, and a hybrid's BM25 over
#: whole pages, fused page by page (one hit per page). On SciFact train, ``sentences`` with
#: z-score fusion ranks best (``benchmarks/results/retriever_finetune.md``); on short pages
#: whose opening says what they are about (MedQuAD), one chunk per page does.
LAYOUTS = ("passages", "sentences")


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


def layout_retriever(
    layout: str = "passages", embedder: Any = None, *, hybrid: bool = False, fusion: str = "zscore", chunk_size: int = CHUNK_SIZE,
    chunk_overlap: int = CHUNK_OVERLAP,
) -> Any:
    """An empty retriever in one of the :data:`LAYOUTS`: dense, or with ``hybrid=True`` dense and
    BM25 fused by ``fusion`` (:class:`~layered.retrieval.hybrid.HybridRetriever`)."""
    from layered.errors import ConfigError
    from layered.retrieval.bm25 import BM25Retriever
    from layered.retrieval.chunkers import SentenceChunker
    from layered.retrieval.hybrid import HybridRetriever

    if layout not in LAYOUTS:
        raise ConfigError(f"unknown index layout {layout!r} (known: {', '.join(LAYOUTS)})")
    dense = dense_retriever(embedder, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    if layout == "sentences":
        dense.chunker = SentenceChunker(window=3, overlap=1, title=True)
    if not hybrid:
        return dense
    if layout == "sentences":
        return HybridRetriever(dense, bm25=BM25Retriever(dense.store, unit="document"), fuse="document", fusion=fusion)
    return HybridRetriever(dense, fusion=fusion)


def index_corpus(
    corpus: str | Path | Sequence[Document], *, chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP,
    hybrid: bool = False, layout: str = "passages", progress: bool = False, embed: Any = None, **loader_options: Any,
) -> Any:
    """The default retriever (:func:`layout_retriever`) with ``corpus`` (a file, a folder, or
    documents) indexed; ``hybrid=True`` fuses BM25 with dense search; ``embed`` embeds the chunks
    elsewhere (e.g. a :class:`~layered.retrieval.distributed.RayEmbedding`; None: this process);
    ``loader_options`` go to :class:`~layered.retrieval.loaders.FileLoader`."""
    from layered.retrieval.loaders import load_documents

    retriever = layout_retriever(layout, hybrid=hybrid, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    docs = load_documents(corpus, **loader_options) if isinstance(corpus, (str, Path)) else list(corpus)
    retriever.add_documents(docs, progress=progress, **({"embed": embed} if embed is not None else {}))
    return retriever
