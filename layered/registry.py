"""Named plug-ins, one small explicit table per role, for building parts from saved configs.

A config is a JSON object with a ``kind``; the table maps ``(role, kind)`` to a class with
``from_config(config)``. Classes are imported only when built, so the table costs nothing
at import. Users add their own with :func:`register` (passing objects directly to a
:class:`~layered.Pipeline` needs no registration at all).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

from layered.errors import ConfigError, SourceNotFoundError

_TABLE: dict[str, dict[str, str]] = {
    "embedder": {
        "sentence-transformers": "layered.retrieval.embedders:SentenceTransformerEmbedder",
        "hashing": "layered.retrieval.embedders:HashingEmbedder",
    },
    "store": {
        "faiss": "layered.retrieval.stores.faiss_store:FaissStore",
        "milvus": "layered.connectors.milvus:MilvusStore",
    },
    "retriever": {
        "dense": "layered.retrieval.dense:DenseRetriever",
        "hybrid": "layered.retrieval.hybrid:HybridRetriever",
        "reranked": "layered.retrieval.rerank:RerankingRetriever",
        "scoped": "layered.retrieval.scoped:ScopedRetriever",
    },
    "reranker": {
        "cross-encoder": "layered.retrieval.rerank:CrossEncoderReranker",
    },
    "generator": {
        "transformers": "layered.generation.transformers_generator:TransformersGenerator",
        "llamacpp": "layered.generation.llamacpp_generator:LlamaCppGenerator",
        "openai": "layered.connectors.openai:OpenAIGenerator",
    },
    "prompt": {
        "chat": "layered.prompts.template:ChatPromptTemplate",
    },
    "router": {
        "keywords": "layered.routing:KeywordRouter",
        "embedding": "layered.routing:EmbeddingRouter",
    },
}


def register(role: str, kind: str, target: str | type) -> None:
    """Make ``kind`` buildable for ``role``; ``target`` is a class or ``"module:Class"``."""
    path = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
    _TABLE.setdefault(role, {})[kind] = path


def lookup(role: str, kind: str) -> Any:
    """The class registered for ``(role, kind)``."""
    try:
        path = _TABLE[role][kind]
    except KeyError:
        known = ", ".join(sorted(_TABLE.get(role, {}))) or "none"
        raise ConfigError(f"unknown {role} kind {kind!r} (known: {known}); register it with layered.registry.register") from None
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def load_object(spec: str) -> Any:
    """A user's object named by ``path/to/file.py:NAME`` or ``package.module:NAME`` (a one-line
    :class:`ConfigError` or :class:`SourceNotFoundError` when it cannot be found)."""
    import importlib.util

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ConfigError(f"{spec!r}: expected FILE.py:NAME or module:NAME")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise SourceNotFoundError(f"{path}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"{path}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ConfigError(f"cannot import {where!r}: {e}") from None
    if not hasattr(module, name):
        raise ConfigError(f"{where} has no {name!r}")
    return getattr(module, name)


def build(role: str, config: Mapping[str, Any]) -> Any:
    """Build the part that ``config`` describes."""
    if not isinstance(config, Mapping) or "kind" not in config:
        raise ConfigError(f"a {role} config must be an object with a 'kind', got {config!r}")
    return lookup(role, str(config["kind"])).from_config(config)


def build_chunker(config: Mapping[str, Any], embedder: Any) -> Any:
    """Build a chunker; its token counts come from ``embedder``'s tokenizer when it has one."""
    from layered.retrieval.chunkers import SemanticChunker, SentenceChunker, TokenChunker
    from layered.retrieval.tokenizers import RegexTokenizer

    kind = config.get("kind")
    tokenizer = embedder.tokenizer() if config.get("tokenizer") == "embedder" else RegexTokenizer()
    if kind == "token":
        most = config.get("max_chunks")
        return TokenChunker(size=int(config["size"]), overlap=int(config["overlap"]), tokenizer=tokenizer,
                            max_chunks=None if most is None else int(most), title=bool(config.get("title", False)))
    if kind == "sentence":
        return SentenceChunker(window=int(config["window"]), overlap=int(config["overlap"]), title=bool(config.get("title", False)))
    if kind == "semantic":
        return SemanticChunker(embedder, percentile=float(config["percentile"]), max_tokens=int(config["max_tokens"]), tokenizer=tokenizer)
    raise ConfigError(f"unknown chunker kind {kind!r} (known: token, sentence, semantic)")
