"""Sentence embeddings with int8 weights on OpenVINO: the fast CPU path of an embedder.

A sentence-transformers folder made of a Transformer, a Pooling (mean or CLS) and optionally a
Normalize module is exported once to ONNX (torch's exporter), every weight matrix of its
MatMuls stored as int8 with **one scale per output channel** (an ONNX ``DequantizeLinear`` in
front of the MatMul), and cached under ``layered.models.cache_dir()/onnx`` keyed by the sha256
of the weights, so a fine-tuned model gets its own file. OpenVINO runs it: its CPU plugin turns
each such MatMul into an int8 kernel that also quantises the activations at run time, with one
scale per :data:`ACTIVATION_GROUP` input channels of each token (VNNI dot products), and runs
the rest (attention, layer norms) in bf16 where the CPU has it.

Chosen on 512 MedQuAD chunks by mean cosine to fp32 vectors (SciFact, where the loss is
judged, was not used; ``benchmarks/results/embedding_speed.md``): activation groups of 32, 64,
128 and 384 channels gave 0.99928, 0.99915, 0.99886 and 0.99794 at 85, 91, 94-100 and 87
chunks/s. The previous path, ONNX Runtime's dynamic quantisation with one activation scale per
run, reached 0.9946 (0.9972 with three feed-forward projections kept in fp32) and was slower.

Why not sentence-transformers' own ``backend="onnx"``/``"openvino"``: it needs ``optimum``,
whose releases pin transformers 4.x, below what layered runs with. Tokenisation uses the model's
``tokenizer.json`` through ``tokenizers`` with the same truncation as sentence-transformers (a
test checks the ids are equal), so encoding needs neither torch nor transformers once the file
exists.
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
#: Input channels per activation scale in OpenVINO's int8 MatMuls (it must divide the model's
#: hidden and feed-forward widths, 384 and 1536 for MiniLM; otherwise OpenVINO runs them on
#: dequantised weights, correct but slower).
ACTIVATION_GROUP = 128


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
        model = quantize_weights(fp32)
        with atomic_path(out) as target:
            onnx.save(model, str(target))
    return out


def quantize_weights(onnx_file: Path) -> Any:
    """The ONNX model in ``onnx_file`` with every 2-D MatMul weight stored as int8, one symmetric
    scale per output channel, read through a ``DequantizeLinear`` (returned, not written)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_file))
    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    nodes = []
    for node in graph.node:
        name = node.input[1] if node.op_type == "MatMul" else ""
        w = numpy_helper.to_array(weights[name]) if name in weights else None
        if w is not None and w.ndim == 2:
            scale = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
            scale[scale == 0] = 1.0
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            graph.initializer.remove(weights[name])
            graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale")])
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [f"{name}_dequantized"],
                                          axis=1, name=f"{name}_DequantizeLinear"))
            node.input[1] = f"{name}_dequantized"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def cached_file(fingerprint: str) -> Path:
    """Where the int8 ONNX file of the model with these weights lives."""
    return models.cache_dir() / "onnx" / f"{fingerprint[:24]}-int8-v4.onnx"


class OnnxEncoder:
    """Encode texts with an int8 ONNX file on OpenVINO: tokenised, each text run alone
    (``workers`` runs side by side, one thread each), pooled, L2-normalised."""

    def __init__(self, onnx_file: Path, folder: Path, *, max_tokens: int, pooling: str, threads: int | None = None) -> None:
        import openvino
        from tokenizers import Tokenizer

        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelNotAvailableError(f"{tokenizer_file} is missing: int8 encoding needs the fast tokenizer")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.no_padding()
        # One thread per run, one run per core at a time: a ~200-token text alone is too small a
        # matrix to split across cores (with ONNX Runtime, 2 threads per run reached 55 chunks/s
        # here, 2 single-threaded runs side by side 104, identical vectors).
        self.workers = threads or len(os.sched_getaffinity(0))
        self.model = openvino.Core().compile_model(str(onnx_file), "CPU", {
            "NUM_STREAMS": str(self.workers), "INFERENCE_NUM_THREADS": str(self.workers),
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(ACTIVATION_GROUP)})
        self.inputs = [i.get_any_name() for i in self.model.inputs]
        self.queue = openvino.AsyncInferQueue(self.model, self.workers)
        self.pooling = pooling
        self.dim = int(self.model.outputs[0].get_partial_shape()[-1].get_length())
        self._lock = threading.Lock()  # one tokenizer and one queue, shared: calls from threads take turns

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One text per run, by design: a vector is a function of its text only (the same in any
        batch, order or worker) and nothing is padded; the runs go to ``workers`` streams side by side."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)

        def pool(request: Any, row: int) -> None:
            hidden = request.get_output_tensor(0).data[0]
            out[row] = hidden[0] if self.pooling == "cls" else hidden.mean(axis=0)

        with self._lock:
            self.queue.set_callback(pool)
            for row, e in enumerate(self.tokenizer.encode_batch(list(texts))):
                ids = np.array([e.ids], dtype=np.int64)
                feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.array([e.type_ids], dtype=np.int64)}
                self.queue.start_async({name: feed[name] for name in self.inputs}, row)
            self.queue.wait_all()
        unit: np.ndarray = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return unit
