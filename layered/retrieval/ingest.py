"""Incremental ingestion bookkeeping: content hashes and what an update did.

Every chunk carries its document's content hash in ``metadata["content_sha256"]`` (text plus
metadata, so a changed access list counts as a change). The hash travels with the chunk in
every store, so an index knows which documents it holds, and in which version, without
any side file that could drift from the store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable

from layered.types import Chunk, Document

HASH_KEY = "content_sha256"


def content_hash(doc: Document) -> str:
    """sha256 of the document's text and metadata (the hash key itself excluded)."""
    meta = {k: v for k, v in doc.metadata.items() if k != HASH_KEY}
    payload = json.dumps({"text": doc.text, "metadata": meta}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def indexed_documents(chunks: Iterable[Chunk]) -> dict[str, str]:
    """``{doc_id: content hash}`` of the documents the chunks belong to."""
    return {c.doc_id: str(c.metadata.get(HASH_KEY, "")) for c in chunks}


@dataclass(frozen=True)
class IngestReport:
    """What one ``add_documents`` call did, counted in documents (and embedded chunks)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    empty: int = 0
    chunks_embedded: int = 0

    def __str__(self) -> str:
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.duplicates} duplicates skipped, {self.empty} empty; {self.chunks_embedded} chunks embedded"
        )
