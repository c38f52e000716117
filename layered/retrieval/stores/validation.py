"""Input checks every vector store applies to ``add`` (one contract, one implementation)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from layered.errors import InputError
from layered.types import ACCESS_KEY, Chunk, checked_access


def checked_vectors(chunks: Sequence[Chunk], vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` as a contiguous float32 (n, dim) array, after checking it fits ``chunks`` (and
    that every chunk's access list, where it has one, is valid)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(chunks), dim):
        raise InputError(f"expected vectors of shape ({len(chunks)}, {dim}), got {vectors.shape}")
    if len({c.id for c in chunks}) != len(chunks):
        raise InputError("duplicate chunk ids in one add() call")
    for c in chunks:
        # A chunk added straight to a store (not through add_documents) is checked too: a
        # malformed access list is refused, never stored where a filter might read it as public.
        if ACCESS_KEY in c.metadata:
            try:
                checked_access(c.metadata[ACCESS_KEY])
            except InputError as e:
                raise InputError(f"chunk {c.id[:60]!r}: {e}") from None
    return vectors
