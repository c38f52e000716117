"""The plumbing every retriever that wraps another one shares: the base keeps the index.

A wrapper (reranking, scoping) changes how a query is answered, not what is indexed, so
indexing, deleting, length, attributes such as ``embedder`` or ``store``, and the saved
files all belong to the base retriever.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from layered import registry
from layered.protocols import Retriever
from layered.types import Document


class WrappedRetriever:
    """Delegates everything but ``retrieve`` to ``self.base``; subclasses set ``_own`` to their attribute names."""

    base: Retriever
    _own: tuple[str, ...] = ("base",)

    def __getattr__(self, name: str) -> Any:
        # embedder, store, delete_documents ... come from the base. An own attribute that is
        # not set yet (during construction) must not recurse into the base.
        if name in self._own or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def add_documents(self, docs: Iterable[Document], *, progress: bool = False, **options: Any) -> Any:
        return self.base.add_documents(docs, progress=progress, **options)  # type: ignore[attr-defined]

    def save(self, folder: Path) -> None:
        self.base.save(folder)  # type: ignore[attr-defined]

    @staticmethod
    def load_base(folder: Path, config: Mapping[str, Any]) -> Retriever:
        """The base retriever saved under ``config["base"]`` in ``folder``."""
        return registry.lookup("retriever", config["base"]["kind"]).load(folder, config["base"])  # type: ignore[no-any-return]
