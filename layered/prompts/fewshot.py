"""Few-shot example selection: fixed, most similar to the question, or diverse (MMR).

Similarity uses the pipeline's own embedder, so examples are chosen in the same vector space
as retrieval. MMR (Carbonell & Goldstein, 1998) trades similarity to the question against
similarity to examples already picked: ``lambda * sim(q, e) - (1 - lambda) * max sim(e, picked)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from layered.errors import ConfigError


def select_examples(
    mode: str, question: str, examples: Sequence[Any], *, shots: int, embedder: Any = None, mmr_lambda: float = 0.5,
) -> list[int]:
    """Indexes of the chosen examples, in the order they should appear (best last, nearest the question)."""
    n = min(shots, len(examples))
    if n <= 0:
        return []
    if mode == "fixed":
        return list(range(n))
    if embedder is None:
        raise ConfigError(f"few-shot mode {mode!r} needs an embedder: give the pipeline a retriever with one, or use 'fixed'")
    vectors = _pool_vectors(embedder, tuple(e.question for e in examples))
    query = np.asarray(embedder.embed([question])[0], dtype=np.float32)
    sims = vectors @ query
    if mode == "semantic":
        picked = list(np.argsort(-sims, kind="stable")[:n])
    elif mode == "mmr":
        picked = []
        pairwise = vectors @ vectors.T
        while len(picked) < n:
            redundancy = pairwise[:, picked].max(axis=1) if picked else np.zeros(len(examples))
            score = mmr_lambda * sims - (1 - mmr_lambda) * redundancy
            score[picked] = -np.inf
            picked.append(int(np.argmax(score)))
    else:
        raise ConfigError(f"unknown few-shot mode {mode!r} (use fixed, semantic or mmr)")
    return [int(i) for i in reversed(picked)]


@lru_cache(maxsize=8)
def _pool_vectors(embedder: Any, questions: tuple[str, ...]) -> np.ndarray:
    """The example pool's embeddings, computed once per embedder and pool (not once per question)."""
    return np.asarray(embedder.embed(list(questions)), dtype=np.float32)
