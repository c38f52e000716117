"""Vector stores. :class:`FaissStore` is the embedded default."""

from layered.retrieval.stores.faiss_store import FaissStore

__all__ = ["FaissStore"]
