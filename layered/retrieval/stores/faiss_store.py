"""FAISS vector store: cosine search over normalised vectors, with chunk payloads.

Vectors live in a FAISS ``IndexIDMap2`` over ``IndexFlatIP`` (exact inner product, which is
cosine on L2-normalised vectors), with an optional HNSW graph for large indexes; chunk
texts and metadata live beside it. Metadata
filters are applied inside the FAISS query through an ID selector, so a filtered search
still returns ``k`` hits whenever ``k`` chunks match.

Persistence writes ``index.faiss`` (FAISS's own binary format, no pickle) and
``chunks.jsonl``; callers save through :mod:`layered.artifacts` so both are covered by a
sha256 manifest that is checked *before* FAISS parses the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from layered.errors import ArtifactError, ConfigError
from layered.protocols import Filters
from layered.retrieval.filters import matches
from layered.retrieval.stores.validation import checked_vectors
from layered.types import ACCESS_KEY, Chunk, Hit, checked_access

INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.jsonl"
#: Documented maxima for the sizes a saved config may set (checked before FAISS allocates anything):
#: a vector's dimension, HNSW's links per node (FAISS allocates M per level per vector) and its
#: search beam (allocated per query).
MAX_DIM = 65_536
MAX_HNSW_M = 256
MAX_EF_SEARCH = 65_536


def _faiss():  # type: ignore[no-untyped-def]
    import faiss  # imported lazily: `import layered` must stay light

    return faiss


class FaissStore:
    """Cosine FAISS store (see module docstring).

    ``index="flat"`` searches exactly. ``index="hnsw"`` adds an HNSW graph built from the
    flat vectors on the first search after a change (approximate, much faster on large
    indexes); ``"auto"`` (default) uses HNSW from ``hnsw_threshold`` chunks up. The flat
    index stays the source of truth: it is what is saved, deletes apply to it, and a
    filtered HNSW search that finds fewer than ``k`` matches falls back to exact search,
    so filters never cost results.

    Contract: ``add`` upserts by chunk id; ``search`` returns at most ``k`` hits, best
    first, ranks 1..n, only chunks whose metadata match every filter, and ``k`` of them
    whenever ``k`` chunks match; ``delete`` returns how many of the given ids were present.
    """

    kind = "faiss"

    def __init__(self, dim: int, *, index: str = "auto", hnsw_threshold: int = 50_000, hnsw_m: int = 32, ef_search: int = 128) -> None:
        for name, value, low, high in (("dim", dim, 1, MAX_DIM), ("hnsw_m", hnsw_m, 2, MAX_HNSW_M), ("ef_search", ef_search, 1, MAX_EF_SEARCH),
                                       ("hnsw_threshold", hnsw_threshold, 0, 2**62)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise ConfigError(f"FaissStore {name} must be an integer in [{low}, {high}], got {value!r}")
        if dim < 1:
            raise ConfigError(f"vector dimension must be positive, got {dim}")
        if index not in ("auto", "flat", "hnsw"):
            raise ConfigError(f"index must be 'auto', 'flat' or 'hnsw', got {index!r}")
        self.dim = dim
        self.index_type, self.hnsw_threshold, self.hnsw_m, self.ef_search = index, hnsw_threshold, hnsw_m, ef_search
        self._hnsw: Any = None
        self._hnsw_version = -1
        faiss = _faiss()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._chunks: dict[int, Chunk] = {}
        self._ids: dict[str, int] = {}
        self._next = 0
        #: Bumped on every change, so indexes derived from the chunks (BM25) know to rebuild.
        self.version = 0

    def empty_like(self, dim: int | None = None) -> "FaissStore":
        """An empty store with this one's index settings (``dim``: another vector size)."""
        return FaissStore(self.dim if dim is None else dim, index=self.index_type, hnsw_threshold=self.hnsw_threshold,
                          hnsw_m=self.hnsw_m, ef_search=self.ef_search)

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._ids

    def chunks(self) -> list[Chunk]:
        """All stored chunks, in insertion order."""
        return [self._chunks[i] for i in sorted(self._chunks)]

    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        vectors = checked_vectors(chunks, vectors, self.dim)
        self.delete(c.id for c in chunks if c.id in self._ids)
        ids = np.arange(self._next, self._next + len(chunks), dtype=np.int64)
        self._next += len(chunks)
        vectors = vectors.copy()
        _faiss().normalize_L2(vectors)
        self._index.add_with_ids(vectors, ids)
        for i, chunk in zip(ids.tolist(), chunks):
            self._chunks[i] = chunk
            self._ids[chunk.id] = i
        self.version += 1

    @property
    def uses_hnsw(self) -> bool:
        return self.index_type == "hnsw" or (self.index_type == "auto" and len(self._chunks) >= self.hnsw_threshold)

    def _graph(self) -> Any:
        """The HNSW graph over the current vectors (rebuilt after changes)."""
        if self._hnsw_version != self.version:
            faiss = _faiss()
            ids = np.array(sorted(self._chunks), dtype=np.int64)
            vectors = np.vstack([self._index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)
            graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = max(40, self.hnsw_m * 2)
            self._hnsw = faiss.IndexIDMap2(graph)
            self._hnsw.add_with_ids(vectors, ids)
            self._hnsw_version = self.version
        return self._hnsw

    def search(self, vector: np.ndarray, *, k: int, filters: Filters | None = None) -> list[Hit]:
        if k < 1 or not self._chunks:
            return []
        faiss = _faiss()
        query = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(1, self.dim))
        faiss.normalize_L2(query)
        selector = None
        want = min(k, len(self._chunks))
        if filters:
            allowed = np.array([i for i, c in self._chunks.items() if matches(c.metadata, filters)], dtype=np.int64)
            if allowed.size == 0:
                return []
            selector = faiss.IDSelectorBatch(allowed)
            want = min(k, int(allowed.size))
        found: tuple[np.ndarray, np.ndarray] | None = None
        if self.uses_hnsw:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.ef_search, want))
            found = self._graph().search(query, want, params=params)
            if int((found[1][0] >= 0).sum()) < want:  # a restrictive filter starved the graph walk
                found = None
        if found is None:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            found = self._index.search(query, want, params=params)
        scores, ids = found
        hits = [
            Hit(chunk=self._chunks[int(i)], score=float(s), rank=0)
            for s, i in zip(scores[0], ids[0]) if i >= 0
        ]
        return [Hit(chunk=h.chunk, score=h.score, rank=r) for r, h in enumerate(hits, start=1)]

    def vectors(self, chunk_ids: Sequence[str]) -> np.ndarray:
        """The stored (unit-length) vectors of ``chunk_ids``, one row each, in order; raises
        ``KeyError`` for an id that is not stored."""
        if not chunk_ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.vstack([self._index.reconstruct(self._ids[c]) for c in chunk_ids])

    def delete(self, chunk_ids: Iterable[str]) -> int:
        ids = [self._ids.pop(c) for c in list(chunk_ids) if c in self._ids]
        if ids:
            self._index.remove_ids(np.array(ids, dtype=np.int64))
            for i in ids:
                del self._chunks[i]
            self.version += 1
        return len(ids)

    # -- persistence -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "dim": self.dim, "size": len(self), "index": self.index_type,
            "hnsw_threshold": self.hnsw_threshold, "hnsw_m": self.hnsw_m, "ef_search": self.ef_search,
        }

    def save(self, folder: Path) -> None:
        """Write the index and payloads into ``folder`` (the caller makes it atomic)."""
        folder.mkdir(parents=True, exist_ok=True)
        data = _faiss().serialize_index(self._index)
        (folder / INDEX_FILE).write_bytes(np.asarray(data).tobytes())
        with open(folder / CHUNKS_FILE, "w", encoding="utf-8") as f:
            for i in sorted(self._chunks):
                f.write(json.dumps({"faiss_id": i, **self._chunks[i].to_dict()}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "FaissStore":
        """Read a store written by :meth:`save` (``config`` as from :meth:`config`).

        Verify the folder's manifest first: FAISS must never parse an unchecked file.
        """
        try:
            store = cls(
                _int(config.get("dim")), index=config.get("index", "auto"), hnsw_threshold=_int(config.get("hnsw_threshold", 50_000)),
                hnsw_m=_int(config.get("hnsw_m", 32)), ef_search=_int(config.get("ef_search", 128)),
            )
        except ConfigError as e:
            raise ArtifactError(f"{folder}: the saved store config is invalid: {e}") from None
        dim = store.dim
        try:
            data = (folder / INDEX_FILE).read_bytes()
        except FileNotFoundError as e:
            raise ArtifactError(f"{folder / INDEX_FILE} is missing") from e
        _check_index_sizes(data, dim, folder / INDEX_FILE)
        try:
            index = _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as e:
            raise ArtifactError(f"{folder / INDEX_FILE} is not a readable FAISS index ({str(e).splitlines()[0]})") from e
        if index.d != dim:
            raise ArtifactError(f"{folder / INDEX_FILE} holds {index.d}-d vectors but the embedder makes {dim}-d ones")
        if not hasattr(index, "remove_ids") or type(index).__name__ != "IndexIDMap2":
            raise ArtifactError(f"{folder / INDEX_FILE} is a {type(index).__name__}, not the IndexIDMap2 this store writes")
        store._index = index
        table = folder / CHUNKS_FILE
        try:
            with open(table, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    try:
                        rec = json.loads(line)
                        i = rec.pop("faiss_id")
                        if isinstance(i, bool) or not isinstance(i, int):
                            raise ValueError(f"faiss_id {i!r} is not an integer")
                        chunk = Chunk.from_dict(rec)
                        if not isinstance(chunk.id, str) or not isinstance(chunk.text, str):
                            raise ValueError("id and text must be strings")
                        if ACCESS_KEY in chunk.metadata:
                            checked_access(chunk.metadata[ACCESS_KEY])  # an InputError is a ValueError
                    except (ValueError, TypeError, KeyError, AttributeError) as e:
                        raise ArtifactError(f"{table}:{number}: not a chunk record ({_first_line(e)})") from None
                    if i in store._chunks or chunk.id in store._ids:
                        raise ArtifactError(f"{table}:{number}: faiss_id {i} or chunk id {chunk.id[:60]!r} appears twice")
                    store._chunks[i] = chunk
                    store._ids[chunk.id] = i
        except FileNotFoundError:
            raise ArtifactError(f"{table} is missing") from None
        except UnicodeDecodeError:
            raise ArtifactError(f"{table} is not UTF-8 text") from None
        # Every id FAISS can return must have its chunk, and every chunk its vector: otherwise a
        # search (or the HNSW rebuild) would fail later with a KeyError or a FAISS exception.
        mapped = _faiss().vector_to_array(index.id_map)
        if len(mapped) != len(store._chunks) or set(mapped.tolist()) != set(store._chunks):
            extra = sorted(set(mapped.tolist()) - set(store._chunks))[:3]
            missing = sorted(set(store._chunks) - set(mapped.tolist()))[:3]
            raise ArtifactError(f"{folder}: the chunk table and the FAISS id map disagree ({len(mapped)} vectors, "
                                f"{len(store._chunks)} chunks; ids without a chunk: {extra}, chunks without a vector: {missing}); "
                                "re-index, or restore the folder")
        store._index = index
        store._next = max(store._chunks, default=-1) + 1
        return store


def _int(value: Any) -> Any:
    """A config integer: ints as they are, integral floats (``1e8``) as ints; anything else is left for the range check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:160] if text else type(e).__name__)


# The serialised layout of what save() writes: IndexIDMap2 ("IxM2") around IndexFlatIP ("IxFI"),
# each with FAISS's index header, then the flat codes and the id map, each a uint64 count + data.
_HEADER = struct.Struct("<4siqqqBi")  # fourcc, d, ntotal, 2 dummies, is_trained, metric


def _check_index_sizes(data: bytes, dim: int, path: Path) -> None:
    """Refuse an index file whose counts disagree with each other or with the file's size,
    before FAISS reads them and allocates (a patched id-map count of 6e8 took 4.75 GB)."""
    def refuse(why: str) -> None:
        raise ArtifactError(f"{path}: {why}; not the index this store writes (re-index, or restore the folder)")

    if len(data) < 2 * _HEADER.size + 16:
        refuse(f"{len(data)} bytes is too short for a FAISS index")
    outer, inner = _HEADER.unpack_from(data, 0), _HEADER.unpack_from(data, _HEADER.size)
    if outer[0] != b"IxM2" or inner[0] not in (b"IxFI", b"IxF2"):
        refuse(f"index type {outer[0]!r}/{inner[0]!r} instead of b'IxM2'/b'IxFI'")
    if outer[1] != dim or inner[1] != dim:
        raise ArtifactError(f"{path} holds {outer[1]}-d vectors but the embedder makes {dim}-d ones")
    ntotal = outer[2]
    if inner[2] != ntotal or not 0 <= ntotal <= len(data) // max(4 * dim, 1):
        refuse(f"its vector counts ({outer[2]}, {inner[2]}) do not fit its {len(data)} bytes")
    pos = 2 * _HEADER.size
    (codes,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    if codes != ntotal * dim or pos + 4 * codes + 8 > len(data):
        refuse(f"its vector data count ({codes}) does not match {ntotal} vectors of {dim} dimensions")
    pos += 4 * codes
    (ids,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    if ids != ntotal or pos + 8 * ids != len(data):
        refuse(f"its id map counts {ids} ids for {ntotal} vectors in {len(data)} bytes")
