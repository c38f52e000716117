"""Routers: choose which adapter answers a request when the request names none.

A router maps a question to an adapter name (``"base"`` for the bare base model) or to
``None`` (the generator's default adapter). Two kinds ship: keyword rules and nearest
labelled example in embedding space. Both are data (saved with the pipeline as JSON).
A router needs no generator, so it sits beside ``generation/``, not in it (the pipeline
asks it, then passes the adapter it names to the generator).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from layered import registry
from layered.errors import ConfigError


def _check_table(table: Mapping[str, Sequence[str]], what: str) -> dict[str, list[str]]:
    if not table:
        raise ConfigError(f"a router needs at least one adapter with {what}")
    out: dict[str, list[str]] = {}
    for name, items in table.items():
        if isinstance(items, str) or not items or not all(isinstance(x, str) and x.strip() for x in items):
            raise ConfigError(f"adapter {name!r} needs a non-empty list of non-empty {what}")
        out[str(name)] = [x.strip() for x in items]
    return out


class KeywordRouter:
    """The first adapter (in the order given) with a keyword in the question; else ``default``.

    Keywords match whole words or phrases, case-insensitively.
    """

    kind = "keywords"

    def __init__(self, rules: Mapping[str, Sequence[str]], *, default: str | None = None) -> None:
        self.rules = _check_table(rules, "keywords")
        self.default = default
        self._patterns = [
            (name, re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE))
            for name, words in self.rules.items()
        ]

    def route(self, question: str) -> str | None:
        for name, pattern in self._patterns:
            if pattern.search(question):
                return name
        return self.default

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "rules": self.rules, "default": self.default}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "KeywordRouter":
        return cls(config["rules"], default=config.get("default"))


class EmbeddingRouter:
    """The adapter of the most similar example question, if its cosine reaches ``threshold``.

    ``examples`` maps adapter names to a few typical questions each. ``embedder`` defaults
    to the packaged all-MiniLM-L6-v2; example vectors are computed on the first route.
    """

    kind = "embedding"

    def __init__(
        self, examples: Mapping[str, Sequence[str]], *, embedder: Any = None, threshold: float = 0.4, default: str | None = None,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.examples = _check_table(examples, "example questions")
        if embedder is None:
            from layered.retrieval.embedders import SentenceTransformerEmbedder

            embedder = SentenceTransformerEmbedder()
        self.embedder = embedder
        self.threshold = threshold
        self.default = default
        self._labels = [name for name, items in self.examples.items() for _ in items]
        self._matrix: np.ndarray | None = None

    def scores(self, question: str) -> dict[str, float]:
        """Best cosine similarity of ``question`` to each adapter's examples."""
        if self._matrix is None:
            self._matrix = self.embedder.embed([q for items in self.examples.values() for q in items])
        sims = self._matrix @ self.embedder.embed([question])[0]
        best: dict[str, float] = {}
        for label, sim in zip(self._labels, sims.tolist()):
            best[label] = max(best.get(label, -1.0), sim)
        return best

    def route(self, question: str) -> str | None:
        scores = self.scores(question)
        name = max(scores, key=scores.__getitem__)
        return name if scores[name] >= self.threshold else self.default

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "examples": self.examples, "threshold": self.threshold, "default": self.default,
            "embedder": self.embedder.config(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "EmbeddingRouter":
        embedder = registry.build("embedder", config["embedder"])
        return cls(config["examples"], embedder=embedder, threshold=float(config["threshold"]), default=config.get("default"))
