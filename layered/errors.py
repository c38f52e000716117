"""Errors raised by layered.

Every error derives from :class:`LayeredError`, so ``except LayeredError`` catches all of
them. Each subclass also derives from the builtin it stands in for (``ValueError``,
``OSError``...), so code written against the builtins keeps working.

Messages are one line: what went wrong and how to fix it.
"""

from __future__ import annotations


class LayeredError(Exception):
    """Root of every error raised by layered."""


class ConfigError(LayeredError, ValueError):
    """A configuration value is invalid or inconsistent."""


class InputError(LayeredError, ValueError):
    """A user input (question, corpus, option) is invalid."""


class EmptyCorpusError(InputError):
    """A corpus yielded no documents (or no text) to index."""


class EmptyDatasetError(EmptyCorpusError):
    """A training dataset (or a split of it) has no usable examples."""


class MissingVariableError(InputError):
    """A prompt template placeholder has no value."""


class ContextOverflowError(InputError):
    """A prompt cannot fit the generator's context window."""


class SourceNotFoundError(LayeredError, FileNotFoundError):
    """A file or folder given as input does not exist."""


class DocumentLoadError(LayeredError, ValueError):
    """A document could not be read (bad encoding, malformed JSON/CSV...)."""


class ModelNotAvailableError(LayeredError, ImportError):
    """A packaged default model (or the library that runs it) is not installed."""


class GenerationError(LayeredError, RuntimeError):
    """The generator could not finish a request (its engine closed, its KV cache full)."""


class ArtifactError(LayeredError, OSError):
    """A saved artifact is missing, incomplete or does not match its manifest."""


class FolderBusyError(ArtifactError):
    """Another process is writing the same saved folder (it holds the folder's lock)."""


class IntegrityError(ArtifactError):
    """A saved file's sha256 does not match the manifest: it was changed after saving."""


class RemoteError(LayeredError, ConnectionError):
    """A remote model endpoint failed: unreachable after retries, an error status, or a malformed reply."""


class StoreUnavailableError(RemoteError):
    """A vector store server (Milvus) stayed unreachable past the client's retries; nothing was half-written."""
