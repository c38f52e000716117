"""Dense retrieval: chunk, embed and store documents; answer queries by vector search.

:class:`DenseRetriever` owns the whole knowledge slot of a pipeline (chunker, embedder,
store), so it can also index new documents and save/load itself as one folder.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from layered.errors import ArtifactError, ConfigError, EmptyCorpusError, InputError
from layered.protocols import Chunker, Embedder, Filters, VectorStore
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.filters import normalise_access
from layered.retrieval.ingest import HASH_KEY, IngestReport, content_hash, indexed_documents
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


#: How ``add_documents`` turns chunk texts into vectors: ``embed(embedder, texts, progress=...)``
#: returns one row per text, in order. The default is :func:`embed_in_batches` (this process);
#: :class:`layered.retrieval.distributed.RayEmbedding` embeds on a Ray cluster instead.
EmbedFunction = Callable[..., np.ndarray]


class DenseRetriever:
    """Vector search over chunks of the indexed documents.

    Contract: ``retrieve`` returns at most ``k`` hits, best first, whose metadata match
    ``filters``; ``add_documents`` indexes new or changed documents and never leaves the
    store half-updated when chunking or embedding fails (the store is touched last).
    """

    kind = "dense"

    def __init__(self, *, embedder: Embedder, store: VectorStore | None = None, chunker: Chunker | None = None,
                 built_by: str | None = None) -> None:
        """``built_by``: the fingerprint of the embedder that made ``store``'s vectors (default:
        ``embedder``'s; a saved index records it and loading refuses another embedder)."""
        self.embedder = embedder
        self.built_by = built_by
        self.store = store if store is not None else FaissStore(embedder.dim)
        if chunker is None:
            tok = getattr(embedder, "tokenizer", None)
            chunker = TokenChunker(tokenizer=tok()) if callable(tok) else TokenChunker()
        self.chunker = chunker

    def __len__(self) -> int:
        return len(self.store)

    def add_documents(self, docs: Iterable[Document], *, progress: bool = False, embed: EmbedFunction | None = None) -> IngestReport:
        """Index ``docs`` incrementally; returns what was added, updated and skipped.

        A document whose id is indexed with the same content hash is skipped (not
        re-embedded); a changed one has all its old chunks replaced; one whose content
        duplicates another document's is skipped. The store is only touched after chunking
        and embedding succeeded. Raises :class:`EmptyCorpusError` when there are no
        documents, or no text at all in them and in the index.

        ``embed`` (an :data:`EmbedFunction`) embeds the new chunks somewhere else, e.g. on a Ray
        cluster; the dedup, chunking and store writes stay here, so the index is the same.
        """
        docs = list(docs)
        if not docs:
            raise EmptyCorpusError("the corpus has no documents; check the path and file types")
        ids: set[str] = set()
        for d in docs:
            if d.id in ids:
                raise InputError(f"document id {d.id!r} appears twice; ids must be unique (pick another id_field)")
            ids.add(d.id)
        existing = indexed_documents(self.store.chunks())
        hashes = set(existing.values())
        todo: list[Document] = []
        counts = {"added": 0, "updated": 0, "unchanged": 0, "duplicates": 0, "empty": 0}
        for d in docs:
            # Every chunk carries an explicit access list, so stores can filter on it in-query.
            meta = normalise_access(d.metadata)
            d = replace(d, metadata={**meta, HASH_KEY: content_hash(replace(d, metadata=meta))})
            h = d.metadata[HASH_KEY]
            if existing.get(d.id) == h:
                counts["unchanged"] += 1
            elif not d.text.strip():
                counts["empty"] += 1
            elif h in hashes:
                counts["duplicates"] += 1
            else:
                counts["updated" if d.id in existing else "added"] += 1
                hashes.add(h)
                todo.append(d)
        if not todo and not existing and counts["empty"]:
            raise EmptyCorpusError("the corpus has no text to index")
        chunks: list[Chunk] = self.chunker.split(todo)
        if chunks:
            log.info("embedding %d chunks of %d new or changed documents", len(chunks), len(todo))
        vectors = (embed or embed_in_batches)(self.embedder, [c.indexed_text for c in chunks], progress=progress)
        # Upsert: a changed (or emptied) document loses all its old chunks, even if it now has fewer.
        replaced = {d.id for d in todo} | {d.id for d in docs if not d.text.strip() and d.id in existing}
        self.store.delete(c.id for c in self.store.chunks() if c.doc_id in replaced)
        if chunks:
            self.store.add(chunks, vectors)
        return IngestReport(**counts, chunks_embedded=len(chunks))

    def delete_documents(self, doc_ids: Iterable[str]) -> int:
        """Remove every chunk of these documents; returns how many documents were indexed."""
        wanted = set(doc_ids)
        chunks = [c for c in self.store.chunks() if c.doc_id in wanted]
        self.store.delete(c.id for c in chunks)
        return len({c.doc_id for c in chunks})

    def reembedded(self, embedder: Embedder, *, progress: bool = False) -> "DenseRetriever":
        """A new retriever over the same chunks (ids, text, metadata) with vectors from ``embedder``.

        This one is left untouched, so a caller swaps retrievers only once the new index is
        complete. Needs a store that can make an empty copy of itself (``empty_like``).
        """
        empty_like = getattr(self.store, "empty_like", None)
        if empty_like is None:
            raise ConfigError(f"a {type(self.store).__name__} cannot be re-embedded here (it has no empty_like()); re-index the corpus")
        chunks = list(self.store.chunks())
        store = empty_like(embedder.dim)
        if chunks:
            store.add(chunks, embed_in_batches(embedder, [c.indexed_text for c in chunks], progress=progress))
        return DenseRetriever(embedder=embedder, store=store, chunker=self.chunker)

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
        built_by = self.built_by or getattr(self.embedder, "fingerprint", None)
        return {"kind": self.kind, "embedder": embedder_cfg(), "chunker": chunker_cfg(), "store": self.store.config(),  # type: ignore[attr-defined]
                **({"embedder_sha256": built_by} if built_by else {})}

    def save(self, folder: Path) -> None:
        self.store.save(folder / "store")  # type: ignore[attr-defined]
        save_embedder = getattr(self.embedder, "save", None)
        if callable(save_embedder):
            save_embedder(folder)

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "DenseRetriever":
        from layered import registry

        spec = config["embedder"]
        if spec.get("owned"):  # fine-tuned with this pipeline: its files are in the folder
            embedder = registry.lookup("embedder", spec["kind"]).from_config(spec, folder)
        else:
            embedder = registry.build("embedder", spec)
        chunker = registry.build_chunker(config["chunker"], embedder)
        store = registry.lookup("store", config["store"]["kind"]).load(folder / "store", config["store"])
        if embedder.dim != store.dim:
            raise InputError(f"the saved index holds {store.dim}-d vectors but the embedder makes {embedder.dim}-d ones")
        built_by = config.get("embedder_sha256")
        now = getattr(embedder, "fingerprint", None)
        if built_by and now and built_by != now:
            raise ArtifactError(f"{folder}: the index was built by another embedder (weights sha256 {built_by[:12]}...) than the "
                                f"one it names ({now[:12]}...); re-index, or restore the embedder that built it")
        return cls(embedder=embedder, store=store, chunker=chunker, built_by=built_by)
