"""Input checks every vector store applies to ``add`` (one contract, one implementation)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from layered.errors import InputError
from layered.types import Chunk


def checked_vectors(chunks: Sequence[Chunk], vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` as a contiguous float32 (n, dim) array, after checking it fits ``chunks``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(chunks), dim):
        raise InputError(f"expected vectors of shape ({len(chunks)}, {dim}), got {vectors.shape}")
    if len({c.id for c in chunks}) != len(chunks):
        raise InputError("duplicate chunk ids in one add() call")
    return vectors
