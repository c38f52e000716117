"""Milvus vector store: Milvus Lite (a local file) by default, the same code for a server.

``MilvusStore(uri="index.db")`` runs Milvus Lite in-process; ``uri="http://host:19530"``
talks to a Milvus server or cluster. Each chunk is one row: primary key = chunk id, the
vector, and the whole chunk (text, offsets, metadata) as JSON.

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
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from layered.errors import ConfigError, InputError
from layered.protocols import Filters
from layered.retrieval.filters import ContainsAny
from layered.retrieval.stores.validation import checked_vectors
from layered.types import Chunk, Hit

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_ID = 512
FINGERPRINT = "milvus.json"
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


class MilvusStore:
    """A :class:`~layered.protocols.VectorStore` on Milvus (cosine similarity).

    Contract as :class:`layered.retrieval.stores.FaissStore`: ``add`` upserts by chunk id,
    ``search`` returns at most ``k`` matching hits best first, ``delete`` returns how many
    of the ids existed. Data persists in the Milvus database itself (the ``uri``), so a
    saved pipeline records where it is rather than copying it.
    """

    kind = "milvus"

    def __init__(self, dim: int, *, uri: str = "layered-milvus.db", collection: str = "layered", index_type: str = "FLAT") -> None:
        if dim < 1:
            raise ConfigError(f"vector dimension must be positive, got {dim}")
        if not _KEY.match(collection):
            raise ConfigError(f"collection name {collection!r} must be letters, digits and _")
        from pymilvus import DataType, MilvusClient

        self.dim, self.uri, self.collection, self.index_type = dim, uri, collection, index_type
        self.version = 0
        self._lock = threading.Lock()
        self._client = MilvusClient(uri)
        if not self._client.has_collection(collection):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("chunk", DataType.JSON)
            index = self._client.prepare_index_params()
            index.add_index("vector", index_type=index_type, metric_type="COSINE")
            self._client.create_collection(collection, schema=schema, index_params=index)
        else:
            existing = self._client.describe_collection(collection)
            dims = [f.get("params", {}).get("dim") for f in existing["fields"] if f["name"] == "vector"]
            if dims and int(dims[0]) != dim:
                raise ConfigError(f"collection {collection!r} in {uri} holds {dims[0]}-d vectors, not {dim}-d")
        self._client.load_collection(collection)

    def close(self) -> None:
        self._client.close()

    def __len__(self) -> int:
        return len(self._ids())

    def __contains__(self, chunk_id: object) -> bool:
        if not isinstance(chunk_id, str):
            return False
        rows = self._client.query(self.collection, filter=f"pk == {_literal(chunk_id)}", output_fields=["pk"])
        return bool(rows)

    def _ids(self) -> list[str]:
        return [r["pk"] for r in self._query('pk != ""', ["pk"])]

    def _query(self, expression: str, fields: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        iterator = self._client.query_iterator(self.collection, batch_size=1000, filter=expression, output_fields=fields)
        try:
            while batch := iterator.next():
                rows.extend(batch)
        finally:
            iterator.close()
        return rows

    def chunks(self) -> list[Chunk]:
        """All stored chunks (in primary-key order)."""
        rows = self._query('pk != ""', ["chunk"])
        return sorted((Chunk.from_dict(r["chunk"]) for r in rows), key=lambda c: c.id)

    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        vectors = checked_vectors(chunks, vectors, self.dim)
        too_long = [c.id for c in chunks if len(c.id.encode()) > MAX_ID]
        if too_long:
            raise InputError(f"chunk id {too_long[0][:40]!r}... is longer than Milvus's {MAX_ID}-byte key limit")
        rows = [{"pk": c.id, "vector": v.tolist(), "chunk": c.to_dict()} for c, v in zip(chunks, vectors)]
        with self._lock:
            for start in range(0, len(rows), 1000):
                self._client.upsert(self.collection, data=rows[start:start + 1000])
            self.version += 1

    def search(self, vector: np.ndarray, *, k: int, filters: Filters | None = None) -> list[Hit]:
        if k < 1:
            return []
        expression = filter_expression(filters)
        if expression == "false":
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
        result = self._client.search(
            self.collection, data=[query], limit=k, filter=expression, output_fields=["chunk"],
            search_params={"metric_type": "COSINE"},
        )
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
                self._client.delete(self.collection, ids=present)
                self.version += 1
        return len(present)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "uri": self.uri, "collection": self.collection, "index_type": self.index_type}

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
        return cls(int(config["dim"]), uri=config["uri"], collection=config["collection"], index_type=config.get("index_type", "FLAT"))
