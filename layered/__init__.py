"""layered: prompt engineering, retrieval and fine-tuning composed behind one Pipeline.

Importing this package is cheap: torch, transformers and faiss load only when a model or
index is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from layered.errors import LayeredError
from layered.types import Answer, Chunk, Citation, Document, Example, Generation, Hit, Message, Prompt

if TYPE_CHECKING:
    from layered.pipeline import Pipeline

__all__ = [
    "Answer", "Chunk", "Citation", "Document", "Example", "Generation", "Hit",
    "LayeredError", "Message", "Pipeline", "Prompt", "__version__",
]


def __getattr__(name: str) -> Any:
    # Pipeline pulls in pydantic and numpy; keep `import layered` itself minimal.
    if name == "Pipeline":
        from layered.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'layered' has no attribute {name!r}")
