"""Vector stores. :class:`FaissStore` is the embedded default; Milvus is in ``layered.connectors``."""

from layered.retrieval.stores.faiss_store import FaissStore
from layered.retrieval.stores.validation import checked_vectors

__all__ = ["FaissStore", "checked_vectors"]
