"""Dense retrieval: chunk, embed and store documents; answer queries by vector search.

:class:`DenseRetriever` owns the whole knowledge slot of a pipeline (chunker, embedder,
store), so it can also index new documents and save/load itself as one folder.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from layered.errors import EmptyCorpusError, InputError
from layered.protocols import Chunker, Embedder, Filters, VectorStore
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.filters import normalise_access
from layered.retrieval.stores.faiss_store import FaissStore
from layered.types import Chunk, Document, Hit

log = logging.getLogger(__name__)


def embed_in_batches(embedder: Embedder, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Embed ``texts`` in length-sorted batches (less padding), with an optional progress bar.

    The result rows are in the order of ``texts``.
    """
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    with tqdm(total=len(texts), desc="embedding", unit="chunk", disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = embedder.embed([texts[i] for i in idx])
            bar.update(len(idx))
    return out


class DenseRetriever:
    """Vector search over chunks of the indexed documents.

    Contract: ``retrieve`` returns at most ``k`` hits, best first, whose metadata match
    ``filters``; ``add_documents`` indexes new or changed documents and never leaves the
    store half-updated when chunking or embedding fails (the store is touched last).
    """

    kind = "dense"

    def __init__(self, *, embedder: Embedder, store: VectorStore | None = None, chunker: Chunker | None = None) -> None:
        self.embedder = embedder
        self.store = store if store is not None else FaissStore(embedder.dim)
        if chunker is None:
            tok = getattr(embedder, "tokenizer", None)
            chunker = TokenChunker(tokenizer=tok()) if callable(tok) else TokenChunker()
        self.chunker = chunker

    def __len__(self) -> int:
        return len(self.store)

    def add_documents(self, docs: Iterable[Document], *, progress: bool = False) -> int:
        """Chunk, embed and store ``docs``; returns the number of chunks added.

        Raises :class:`EmptyCorpusError` when the documents hold no text at all.
        """
        docs = list(docs)
        seen: set[str] = set()
        for d in docs:
            if d.id in seen:
                raise InputError(f"document id {d.id!r} appears twice; ids must be unique (pick another id_field)")
            seen.add(d.id)
        # Every chunk carries an explicit access list, so stores can filter on it in-query.
        docs = [replace(d, metadata=normalise_access(d.metadata)) for d in docs]
        chunks: list[Chunk] = self.chunker.split(d for d in docs if d.text.strip())
        if not chunks:
            raise EmptyCorpusError(
                "the corpus has no text to index" if docs else "the corpus has no documents; check the path and file types"
            )
        log.info("embedding %d chunks of %d documents", len(chunks), len(docs))
        vectors = embed_in_batches(self.embedder, [c.text for c in chunks], progress=progress)
        # Upsert: a re-added document replaces all of its old chunks, even if it now has fewer.
        stale = [c.id for c in self.store.chunks() if c.doc_id in seen]  # type: ignore[attr-defined]
        self.store.delete(stale)
        self.store.add(chunks, vectors)
        return len(chunks)

    def retrieve(self, query: str, *, k: int = 4, filters: Filters | None = None) -> list[Hit]:
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; pass a non-empty question")
        vector = self.embedder.embed([query])[0]
        return self.store.search(vector, k=k, filters=filters)

    # -- persistence -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        chunker_cfg = getattr(self.chunker, "config", None)
        embedder_cfg = getattr(self.embedder, "config", None)
        if not callable(chunker_cfg) or not callable(embedder_cfg):
            raise InputError("this retriever's chunker or embedder has no config(); it cannot be saved")
        return {"kind": self.kind, "embedder": embedder_cfg(), "chunker": chunker_cfg(), "store": self.store.config()}  # type: ignore[attr-defined]

    def save(self, folder: Path) -> None:
        self.store.save(folder / "store")  # type: ignore[attr-defined]

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "DenseRetriever":
        from layered import registry

        embedder = registry.build("embedder", config["embedder"])
        chunker = registry.build_chunker(config["chunker"], embedder)
        store = registry.lookup("store", config["store"]["kind"]).load(folder / "store", config["store"])
        if embedder.dim != store.dim:
            raise InputError(f"the saved index holds {store.dim}-d vectors but the embedder makes {embedder.dim}-d ones")
        return cls(embedder=embedder, store=store, chunker=chunker)
