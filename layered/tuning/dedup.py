"""Near-duplicate detection with MinHash and banding (LSH), then an exact Jaccard check.

Texts are compared as sets of word 3-grams. MinHash signatures put likely-similar texts in
a shared bucket of at least one band; only those candidate pairs get an exact Jaccard check,
so the cost stays near-linear instead of comparing every pair.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from typing import Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_PRIME = (1 << 61) - 1


def shingles(text: str, n: int = 3) -> set[int]:
    words = _WORD.findall(text.lower())
    grams = [" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))]
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams if g}


def near_duplicate_groups(texts: Sequence[str], *, threshold: float = 0.8, bands: int = 16, rows: int = 4, seed: int = 0) -> list[int]:
    """A group label per text; texts whose 3-gram Jaccard similarity is ``>= threshold`` share one.

    Groups are closed under the relation (union-find), so a chain of near-duplicates is one group.
    """
    n_hashes = bands * rows
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, size=n_hashes, dtype=np.uint64)
    b = rng.integers(0, _PRIME, size=n_hashes, dtype=np.uint64)
    sets = [shingles(t) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        if not s:
            continue
        x = np.fromiter(s, dtype=np.uint64)[:, None]
        with np.errstate(over="ignore"):
            signature = ((x * a + b) % np.uint64(_PRIME)).min(axis=0)
        for band in range(bands):
            buckets[(band, signature[band * rows:(band + 1) * rows].tobytes())].append(i)
    for members in buckets.values():
        # Every pair in a small bucket; huge buckets (boilerplate) only against their first member.
        pairs = [(i, j) for k, i in enumerate(members) for j in members[k + 1:]] if len(members) <= 64 else \
            [(members[0], j) for j in members[1:]]
        for i, j in pairs:
            if find(i) != find(j):
                inter = len(sets[i] & sets[j])
                if inter / (len(sets[i]) + len(sets[j]) - inter) >= threshold:
                    parent[find(j)] = find(i)
    return [find(i) for i in range(len(texts))]
