"""Milvus vector store: Milvus Lite (a local file) by default, the same code for a server.

``MilvusStore(uri="index.db")`` runs Milvus Lite in-process; ``uri="http://host:19530"``
talks to a Milvus server or cluster. Each chunk is one row: primary key = chunk id, the
vector, and the whole chunk (text, offsets, metadata) as JSON.

The index type and metric are options: ``AUTOINDEX`` (the default) runs everywhere; on a
server pick ``HNSW`` (``index_params={"M": 16, "efConstruction": 200}``, ``search_params={"ef": 64}``)
or ``IVF_FLAT`` (``{"nlist": 1024}``, ``{"nprobe": 16}``). Inserts go in batches of whole
documents: every chunk of one document travels in the same upsert request, so a connection
that drops mid-ingest leaves each document either fully stored or absent, never half
recorded (ingestion reads a document as indexed from its chunks' content hash). Each
request is retried by the client until ``timeout`` seconds have passed (upserts by primary
key are idempotent, so a retry cannot duplicate); then :class:`StoreUnavailableError`.

Filters become Milvus boolean expressions. String values are written as quoted literals
(quotes and backslashes escaped; control characters refused) and keys must be identifiers, so a filter value can never break
out of its comparison (Milvus Lite has no parameterised filters). Milvus Lite has no
partitions or RBAC, so per-user isolation relies on these filters (see RELIABILITY.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from layered.errors import ConfigError, InputError, StoreUnavailableError
from layered.protocols import Filters
from layered.retrieval.filters import ContainsAny
from layered.retrieval.stores.validation import checked_vectors
from layered.types import Chunk, Hit

T = TypeVar("T")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ID = 512
FINGERPRINT = "milvus.json"
INDEX_TYPES = ("AUTOINDEX", "FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "DISKANN")
#: Hit scores are similarities (higher is better, 1.0 = same direction), which min_score
#: thresholds rely on; L2 distances are not, so the metric is one of these.
METRICS = ("COSINE", "IP")
#: Build and search parameters when none are given (a Milvus server requires the build ones).
DEFAULT_INDEX_PARAMS = {"HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 128}, "IVF_SQ8": {"nlist": 128},
                        "IVF_PQ": {"nlist": 128, "m": 8, "nbits": 8}}
#: Seconds allowed for creating and loading a collection (longer than one request's ``timeout``).
SETUP_TIMEOUT = 120.0
DEFAULT_SEARCH_PARAMS = {"HNSW": {"ef": 64}, "IVF_FLAT": {"nprobe": 16}, "IVF_SQ8": {"nprobe": 16}, "IVF_PQ": {"nprobe": 16}}
log = logging.getLogger(__name__)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and np.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        # Milvus expressions know \\ and \" but not \uXXXX, so control characters cannot be
        # written safely: refuse them rather than guess.
        if any(ord(ch) < 32 or ch == "\x7f" for ch in value):
            raise InputError(f"filter value {value!r} contains control characters, which Milvus filters cannot carry")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise InputError(f"filter values must be strings, numbers or booleans, got {type(value).__name__}")


def filter_expression(filters: Filters | None) -> str:
    """A Milvus expression equivalent to :func:`layered.retrieval.filters.matches`."""
    parts = []
    for key, want in (filters or {}).items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise InputError(f"filter key {key!r} must be a plain identifier (letters, digits, _)")
        field = f'chunk["metadata"]["{key}"]'
        if isinstance(want, ContainsAny):
            parts.append(f"json_contains_any({field}, [{', '.join(_literal(v) for v in want.values)}])")
        elif isinstance(want, (list, tuple, set, frozenset)):
            values = list(want)
            if not values:
                return "false"
            # Milvus Lite only allows `in` on top-level fields, so spell it as a disjunction.
            parts.append("(" + " or ".join(f"{field} == {_literal(v)}" for v in values) + ")")
        else:
            parts.append(f"{field} == {_literal(want)}")
    return " and ".join(parts)


def document_batches(rows: Sequence[Any], doc_ids: Sequence[str], size: int) -> list[list[Any]]:
    """``rows`` cut into batches of at most ``size`` rows where possible, keeping all rows of one
    document in one batch (a document with more than ``size`` chunks is one batch by itself)."""
    groups: dict[str, list[Any]] = {}
    for row, doc in zip(rows, doc_ids):
        groups.setdefault(doc, []).append(row)
    batches: list[list[Any]] = []
    current: list[Any] = []
    for group in groups.values():
        if current and len(current) + len(group) > size:
            batches.append(current)
            current = []
        current = current + group
    if current:
        batches.append(current)
    return batches


def _unavailable(error: Exception) -> bool:
    """Whether a pymilvus error means the server could not be reached (as opposed to a refused request)."""
    text = str(error).lower()
    return any(word in text for word in ("unavailable", "retry timeout", "deadline", "connect", "timed out", "timeout"))


def _first_line(error: Exception) -> str:
    line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return line[:160]


class MilvusStore:
    """A :class:`~layered.protocols.VectorStore` on Milvus (cosine similarity).

    Contract as :class:`layered.retrieval.stores.FaissStore`: ``add`` upserts by chunk id,
    ``search`` returns at most ``k`` matching hits best first, ``delete`` returns how many
    of the ids existed. Data persists in the Milvus database itself (the ``uri``), so a
    saved pipeline records where it is rather than copying it.
    """

    kind = "milvus"

    def __init__(
        self,
        dim: int,
        *,
        uri: str = "layered-milvus.db",
        collection: str = "layered",
        index_type: str = "AUTOINDEX",
        metric: str = "COSINE",
        index_params: Mapping[str, Any] | None = None,
        search_params: Mapping[str, Any] | None = None,
        batch_size: int = 1000,
        timeout: float = 60.0,
    ) -> None:
        if dim < 1:
            raise ConfigError(f"vector dimension must be positive, got {dim}")
        if not _KEY.match(collection):
            raise ConfigError(f"collection name {collection!r} must be letters, digits and _")
        index_type, metric = str(index_type).upper(), str(metric).upper()
        if index_type not in INDEX_TYPES:
            raise ConfigError(f"Milvus index_type {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
        if metric not in METRICS:
            raise ConfigError(f"Milvus metric {metric!r} must be COSINE or IP (scores are similarities; L2 distances are not)")
        if batch_size < 1 or not timeout > 0:
            raise ConfigError(f"batch_size ({batch_size}) and timeout ({timeout}) must be positive")
        from pymilvus import DataType, MilvusClient

        self.dim, self.uri, self.collection, self.index_type, self.metric = dim, uri, collection, index_type, metric
        self.index_params = dict(DEFAULT_INDEX_PARAMS.get(index_type, {}) if index_params is None else index_params)
        self.search_params = dict(DEFAULT_SEARCH_PARAMS.get(index_type, {}) if search_params is None else search_params)
        self.batch_size, self.timeout = batch_size, float(timeout)
        self.version = 0
        self._lock = threading.Lock()
        self._client = self._call("connect to", lambda: MilvusClient(uri, timeout=self.timeout))
        self._call("open", partial(self._open_collection, MilvusClient, DataType))

    def _open_collection(self, MilvusClient: Any, DataType: Any) -> None:  # noqa: N803 (pymilvus's classes)
        """Create the collection (schema, index, strong consistency) unless it exists, then load it."""
        setup = max(self.timeout, SETUP_TIMEOUT)  # a server may take a while to create and load a collection
        if not self._client.has_collection(self.collection, timeout=self.timeout):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            schema.add_field("chunk", DataType.JSON)
            index = self._client.prepare_index_params()
            index.add_index("vector", index_type=self.index_type, metric_type=self.metric, params=self.index_params)
            # Strong: a search sees every write acknowledged before it (a server defaults to Bounded
            # staleness, under which a chunk just added may be missing from the next search).
            self._client.create_collection(self.collection, schema=schema, index_params=index, consistency_level="Strong",
                                           timeout=setup)
        else:
            existing = self._client.describe_collection(self.collection, timeout=self.timeout)
            dims = [f.get("params", {}).get("dim") for f in existing["fields"] if f["name"] == "vector"]
            if dims and int(dims[0]) != self.dim:
                raise ConfigError(f"collection {self.collection!r} in {self.uri} holds {dims[0]}-d vectors, not {self.dim}-d")
        self._client.load_collection(self.collection, timeout=setup)

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """Run one client call; a connection that stays down past the client's retries becomes one line."""
        from pymilvus.exceptions import MilvusException

        try:
            return call()
        except MilvusException as e:
            if not _unavailable(e):
                raise
            raise StoreUnavailableError(
                f"cannot {what} the Milvus collection {self.collection!r} at {self.uri}: the server did not answer "
                f"within {self.timeout:.0f}s ({_first_line(e)}); check it is up and run the same command again"
            ) from None

    def close(self) -> None:
        self._client.close()

    def __len__(self) -> int:
        return len(self._ids())

    def __contains__(self, chunk_id: object) -> bool:
        if not isinstance(chunk_id, str):
            return False
        rows = self._call("read", lambda: self._client.query(
            self.collection, filter=f"pk == {_literal(chunk_id)}", output_fields=["pk"], timeout=self.timeout))
        return bool(rows)

    def _ids(self) -> list[str]:
        return [r["pk"] for r in self._query('pk != ""', ["pk"])]

    def _query(self, expression: str, fields: list[str]) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            iterator = self._client.query_iterator(self.collection, batch_size=1000, filter=expression, output_fields=fields,
                                                   timeout=self.timeout)
            try:
                while batch := iterator.next():
                    rows.extend(batch)
            finally:
                iterator.close()
            return rows

        return self._call("read", read)

    def chunks(self) -> list[Chunk]:
        """All stored chunks (in primary-key order)."""
        rows = self._query('pk != ""', ["chunk"])
        return sorted((Chunk.from_dict(r["chunk"]) for r in rows), key=lambda c: c.id)

    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Upsert ``chunks`` in requests of about ``batch_size`` rows, never splitting a document."""
        vectors = checked_vectors(chunks, vectors, self.dim)
        too_long = [c.id for c in chunks if len(c.id.encode()) > MAX_ID]
        if too_long:
            raise InputError(f"chunk id {too_long[0][:40]!r}... is longer than Milvus's {MAX_ID}-byte key limit")
        rows = [{"pk": c.id, "vector": v.tolist(), "chunk": c.to_dict()} for c, v in zip(chunks, vectors)]
        with self._lock:
            for batch in document_batches(rows, [c.doc_id for c in chunks], self.batch_size):
                self._call("write to", partial(self._client.upsert, self.collection, data=batch, timeout=self.timeout))
            self.version += 1

    def search(self, vector: np.ndarray, *, k: int, filters: Filters | None = None) -> list[Hit]:
        if k < 1:
            return []
        expression = filter_expression(filters)
        if expression == "false":
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
        params = dict(self.search_params)
        if "ef" in params:  # HNSW returns at most ef results
            params["ef"] = max(int(params["ef"]), k)
        result = self._call("search", lambda: self._client.search(
            self.collection, data=[query], limit=k, filter=expression, output_fields=["chunk"],
            search_params={"metric_type": self.metric, "params": params}, timeout=self.timeout,
        ))
        return [
            Hit(chunk=Chunk.from_dict(h["entity"]["chunk"]), score=float(h["distance"]), rank=r)
            for r, h in enumerate(result[0], start=1)
        ]

    def delete(self, chunk_ids: Iterable[str]) -> int:
        ids = [c for c in dict.fromkeys(chunk_ids) if isinstance(c, str)]
        if not ids:
            return 0
        with self._lock:
            present = [r["pk"] for r in self._query(f"pk in [{', '.join(_literal(i) for i in ids)}]", ["pk"])]
            if present:
                self._call("delete from", lambda: self._client.delete(self.collection, ids=present, timeout=self.timeout))
                self.version += 1
        return len(present)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "uri": self.uri, "collection": self.collection, "index_type": self.index_type,
                "metric": self.metric, "index_params": self.index_params, "search_params": self.search_params,
                "batch_size": self.batch_size, "timeout": self.timeout}

    def fingerprint(self) -> dict[str, Any]:
        """``{"rows", "sha256"}`` of the collection's content: every row's id, chunk and vector
        (vectors rounded to 6 decimals, so a round trip through float32 compares equal)."""
        rows = sorted(self._query('pk != ""', ["pk", "chunk", "vector"]), key=lambda r: r["pk"])
        h = hashlib.sha256()
        for r in rows:
            vector = [round(float(x), 6) for x in r["vector"]]
            h.update(json.dumps([r["pk"], r["chunk"], vector], sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
        return {"rows": len(rows), "sha256": h.hexdigest()}

    def save(self, folder: Any) -> None:
        """The rows live in the Milvus database at ``uri``, outside the folder and its manifest:
        write their fingerprint (row count and content digest) so :meth:`load` can tell."""
        from layered.artifacts import atomic_write_json

        atomic_write_json(Path(folder) / FINGERPRINT, {"uri": self.uri, "collection": self.collection, **self.fingerprint()})

    @classmethod
    def load(cls, folder: Any, config: Mapping[str, Any]) -> "MilvusStore":
        """Reconnect, and refuse a collection whose rows differ from the ones saved with the folder."""
        from layered.artifacts import read_json
        from layered.errors import IntegrityError

        store = cls.from_config(config)
        path = Path(folder) / FINGERPRINT
        if not path.is_file():
            log.warning("%s has no Milvus fingerprint (saved by an older layered); the collection is not checked", folder)
            return store
        saved, now = read_json(path), store.fingerprint()
        if not isinstance(saved, dict) or (saved.get("rows"), saved.get("sha256")) != (now["rows"], now["sha256"]):
            rows = saved.get("rows") if isinstance(saved, dict) else "?"
            raise IntegrityError(
                f"the Milvus collection {store.collection!r} at {store.uri} changed since {folder} was saved "
                f"({rows} rows then, {now['rows']} now, or different content); re-index or re-save the pipeline"
            )
        return store

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MilvusStore":
        # Pipelines saved before these options existed made FLAT / COSINE collections.
        return cls(int(config["dim"]), uri=config["uri"], collection=config["collection"],
                   index_type=config.get("index_type", "FLAT"), metric=config.get("metric", "COSINE"),
                   index_params=config.get("index_params"), search_params=config.get("search_params"),
                   batch_size=int(config.get("batch_size", 1000)), timeout=float(config.get("timeout", 60.0)))
