"""A retriever whose search scope follows the question's route.

``ScopedRetriever(base, router, scopes={"policy": "policy", "base": "product"})`` asks the
router where a question goes and searches only chunks whose ``metadata[key]`` is the scope
of that route (inside the store query, like any filter). Because the scope is decided in
the retriever, ``Pipeline.fit`` formats training examples with the same scoped passages
``ask`` serves (train what you serve).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from layered import registry
from layered.errors import ConfigError
from layered.protocols import Filters, Retriever, Router
from layered.retrieval.wrapped import WrappedRetriever
from layered.types import Hit


class ScopedRetriever(WrappedRetriever):
    """``base`` searched within the scope that ``scopes[router.route(query)]`` names (unscoped when none)."""

    kind = "scoped"
    _own = ("base", "router", "scopes", "key")

    def __init__(self, base: Retriever, router: Router, scopes: Mapping[str, str], *, key: str = "scope") -> None:
        if not key.isidentifier():
            raise ConfigError(f"the scope key must be an identifier, got {key!r}")
        self.base, self.router, self.scopes, self.key = base, router, dict(scopes), key

    def scope_of(self, query: str) -> str | None:
        return self.scopes.get(str(self.router.route(query)))

    def retrieve(self, query: str, *, k: int = 4, filters: Filters | None = None) -> list[Hit]:
        scope = self.scope_of(query)
        if scope is not None:
            filters = {**(filters or {}), self.key: scope}
        return self.base.retrieve(query, k=k, filters=filters)

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "base": self.base.config(), "router": self.router.config(),  # type: ignore[attr-defined]
            "scopes": self.scopes, "key": self.key,
        }

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "ScopedRetriever":
        return cls(cls.load_base(folder, config), registry.build("router", config["router"]), config["scopes"], key=config.get("key", "scope"))
