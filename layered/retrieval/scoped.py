"""A retriever whose search scope follows the question's route.

``ScopedRetriever(base, router, scopes={"policy": "policy", "base": "product"})`` asks the
router where a question goes and searches only chunks whose ``metadata[key]`` is the scope
of that route (inside the store query, like any filter). Because the scope is decided in
the retriever, ``Pipeline.fit`` formats training examples with the same scoped passages
``ask`` serves (train what you serve).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from layered import registry
from layered.errors import ConfigError
from layered.protocols import Filters, Retriever, Router
from layered.types import Document, Hit


class ScopedRetriever:
    """``base`` searched within the scope that ``scopes[router.route(query)]`` names (unscoped when none)."""

    kind = "scoped"

    def __init__(self, base: Retriever, router: Router, scopes: Mapping[str, str], *, key: str = "scope") -> None:
        if not key.isidentifier():
            raise ConfigError(f"the scope key must be an identifier, got {key!r}")
        self.base, self.router, self.scopes, self.key = base, router, dict(scopes), key

    def __getattr__(self, name: str) -> Any:
        # embedder, store, delete_documents ... come from the base.
        if name in ("base", "router", "scopes", "key"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def scope_of(self, query: str) -> str | None:
        return self.scopes.get(str(self.router.route(query)))

    def retrieve(self, query: str, *, k: int = 4, filters: Filters | None = None) -> list[Hit]:
        scope = self.scope_of(query)
        if scope is not None:
            filters = {**(filters or {}), self.key: scope}
        return self.base.retrieve(query, k=k, filters=filters)

    def add_documents(self, docs: Iterable[Document], *, progress: bool = False) -> Any:
        return self.base.add_documents(docs, progress=progress)  # type: ignore[attr-defined]

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "base": self.base.config(), "router": self.router.config(),  # type: ignore[attr-defined]
            "scopes": self.scopes, "key": self.key,
        }

    def save(self, folder: Path) -> None:
        self.base.save(folder)  # type: ignore[attr-defined]

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "ScopedRetriever":
        base = registry.lookup("retriever", config["base"]["kind"]).load(folder, config["base"])
        return cls(base, registry.build("router", config["router"]), config["scopes"], key=config.get("key", "scope"))
