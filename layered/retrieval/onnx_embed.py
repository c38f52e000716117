"""Sentence embeddings on ONNX Runtime with int8 weights: the fast CPU path of an embedder.

A sentence-transformers folder made of a Transformer, a Pooling (mean or CLS) and optionally a
Normalize module is exported once to ONNX (torch's exporter), its matrix multiplications
quantised to int8 with **one scale per output channel** (ONNX Runtime's dynamic quantisation;
activations are quantised per run at run time), except the feed-forward output projections of
the first :data:`FP32_FFN_OUT_LAYERS` layers, which stay fp32, and cached under
``layered.models.cache_dir()/onnx`` keyed by the sha256 of the weights, so a fine-tuned model
gets its own file. Per-channel scales matter: one scale per tensor (torch's and ORT's default)
moved MiniLM's vectors to a cosine of 0.85 from fp32, per channel keeps them above 0.98.
Which matrices to keep in fp32 was chosen on 512 MedQuAD chunks by mean cosine to fp32 (SciFact,
where the loss is judged, was not used): all int8 0.9946; the feed-forward output projection of
every layer in fp32 0.9975 but 28% slower; of layers 0-2 only 0.9972 at about 18% slower
(``benchmarks/results/embedding_speed.md``).

Why not sentence-transformers' own ``backend="onnx"``: it needs ``optimum``, whose releases pin
transformers 4.x, below what layered runs with. Tokenisation uses the model's ``tokenizer.json``
through ``tokenizers`` with the same truncation and padding as sentence-transformers (a test
checks the ids are equal), so encoding needs neither torch nor transformers once the file exists.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from layered import models
from layered.artifacts import atomic_path
from layered.errors import ConfigError, ModelNotAvailableError

#: sentence-transformers modules this path reproduces exactly.
_SUPPORTED = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
              "sentence_transformers.models.Normalize"}
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: The first layers whose feed-forward output projection (the input after GELU has the largest
#: outliers, so one activation scale per run fits it worst) is kept in fp32.
FP32_FFN_OUT_LAYERS = 3


def pooling_of(folder: Path) -> str:
    """``"mean"`` or ``"cls"``: how the folder's model pools tokens; ConfigError when this path
    cannot reproduce the model (another pooling, or extra modules such as Dense layers)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        raise ConfigError(f"{folder} has no modules.json: int8 needs a sentence-transformers folder")
    kinds = {m["type"] for m in json.loads(modules_file.read_text())}
    if not kinds <= _SUPPORTED:
        raise ConfigError(f"precision 'int8' supports Transformer + Pooling (+ Normalize) models; {folder} also has "
                          f"{', '.join(sorted(kinds - _SUPPORTED))}: use precision 'bfloat16' or 'float32'")
    config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modes = [m for m in ("mean_tokens", "cls_token", "max_tokens", "mean_sqrt_len_tokens") if config.get(f"pooling_mode_{m}")]
    if modes == ["mean_tokens"]:
        return "mean"
    if modes == ["cls_token"]:
        return "cls"
    raise ConfigError(f"precision 'int8' supports mean or CLS pooling; {folder} pools with {modes}")


def export_int8(st_model: Any, out: Path) -> Path:
    """Export a loaded SentenceTransformer's transformer to ``out`` as int8 ONNX (atomic)."""
    import tempfile
    import warnings

    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    auto = st_model[0].auto_model.eval()
    tok = st_model[0].tokenizer
    attention = auto.config._attn_implementation
    sample = tok(["an example sentence to trace", "another"], padding=True, return_tensors="pt")
    names = [n for n in _INPUTS if n in sample]

    class _Hidden(torch.nn.Module):  # positional inputs in a fixed order; the last hidden state out
        def __init__(self) -> None:
            super().__init__()
            self.model = auto

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches
        fp32 = Path(tmp) / "model.onnx"
        # Eager attention traces to MatMul/Softmax; SDPA's export adds masking ops (Where, IsNaN)
        # that took a quarter of the run time here (eager: 1.5x faster).
        auto.set_attn_implementation("eager")
        try:
            torch.onnx.export(_Hidden(), tuple(sample[n] for n in names), str(fp32), input_names=names,
                              output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
        finally:
            auto.set_attn_implementation(attention)
        graph = onnx.load(str(fp32), load_external_data=False).graph
        keep = [n.name for n in graph.node if n.op_type == "MatMul" and _ffn_out_layer(n.name) in range(FP32_FFN_OUT_LAYERS)]
        with atomic_path(out) as target:
            quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def _ffn_out_layer(node: str) -> int | None:
    """The layer index of a BERT-style feed-forward output MatMul (``.../layer.3/output/dense/MatMul``), else None."""
    import re

    found = re.search(r"layer\.(\d+)/output/dense/MatMul$", node)
    return int(found.group(1)) if found else None


def cached_file(fingerprint: str) -> Path:
    """Where the int8 ONNX file of the model with these weights lives."""
    import onnxruntime

    return models.cache_dir() / "onnx" / f"{fingerprint[:24]}-int8-v3-ort{onnxruntime.__version__}.onnx"


class OnnxEncoder:
    """Encode texts with an int8 ONNX file: tokenised, each text run alone (``workers`` runs side
    by side, one thread each), pooled, L2-normalised."""

    def __init__(self, onnx_file: Path, folder: Path, *, max_tokens: int, pooling: str, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelNotAvailableError(f"{tokenizer_file} is missing: int8 encoding needs the fast tokenizer")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        # One thread per run, one run per core at a time: a ~200-token text alone is too small a
        # matrix to split across cores (2 threads per run reached 55 chunks/s here, 2 single-
        # threaded runs side by side 104, identical vectors).
        options.intra_op_num_threads = 1
        self.workers = threads or len(os.sched_getaffinity(0))
        self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.pooling = pooling
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self._lock = threading.Lock()  # one tokenizer, shared: calls from threads take turns

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One text per run, by design: the int8 kernels quantise activations with one scale
        per run, so a batched text's vector would depend on its neighbours. Alone, a vector is
        a function of its text only (the same in any batch, order or worker) and nothing is
        padded; the runs go to ``workers`` threads side by side (ORT releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        with self._lock:
            encodings = self.tokenizer.encode_batch(list(texts))

        def run(e: Any) -> np.ndarray:
            ids = np.array([e.ids], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.array([e.type_ids], dtype=np.int64)}
            hidden = self.session.run(None, {name: feed[name] for name in self.inputs})[0][0]
            pooled: np.ndarray = hidden[0] if self.pooling == "cls" else hidden.mean(axis=0)
            return pooled

        if len(encodings) < 2 or self.workers < 2:
            rows = [run(e) for e in encodings]
        else:
            with ThreadPoolExecutor(min(self.workers, len(encodings))) as pool:
                rows = list(pool.map(run, encodings))
        out = np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)
        unit: np.ndarray = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return unit
