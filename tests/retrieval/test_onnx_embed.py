"""The int8 embedder on OpenVINO: same tokens as sentence-transformers, vectors close to
fp32, exported once per set of weights, and clear errors for models it cannot reproduce."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from layered.errors import ConfigError, ModelNotAvailableError
from layered.retrieval.embedders import SentenceTransformerEmbedder
from layered.retrieval.onnx_embed import cached_file, pooling_of


@pytest.fixture
def texts(docs) -> list[str]:
    # Include texts longer than the 256-token window, so truncation is compared too.
    return [d.text for d in docs[:24]] + [" ".join(d.text for d in docs[:6])] + ["short query?"]


@pytest.mark.slow
def test_int8_matches_fp32_tokens_and_vectors(texts):
    fp32 = SentenceTransformerEmbedder(precision="float32")
    int8 = SentenceTransformerEmbedder(precision="int8")
    st_ids = fp32._model().tokenizer(texts, truncation=True, max_length=fp32.max_tokens)["input_ids"]
    ours = [[t for t, m in zip(e.ids, e.attention_mask) if m] for e in int8._int8().tokenizer.encode_batch(texts)]
    assert ours == st_ids and max(map(len, ours)) == fp32.max_tokens
    a, b = fp32.embed(texts), int8.embed(texts)
    assert b.shape == a.shape == (len(texts), 384) and b.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    cos = (a * b).sum(axis=1)
    assert cos.min() > 0.97 and cos.mean() > 0.99, cos
    # A vector is a function of its text alone: the same in any order, alone or in a list.
    assert np.array_equal(int8.embed(texts[::-1])[::-1], b)
    assert np.array_equal(int8.embed([texts[3]])[0], b[3])


@pytest.mark.slow
def test_int8_file_is_exported_once_per_weights(texts):
    first = SentenceTransformerEmbedder(precision="int8")
    vectors = first.embed(texts[:4])
    onnx_file = cached_file(first.fingerprint)
    stamp = onnx_file.stat().st_mtime_ns
    again = SentenceTransformerEmbedder(precision="int8")
    assert np.array_equal(again.embed(texts[:4]), vectors)
    assert onnx_file.stat().st_mtime_ns == stamp and again._st is None  # no torch model loaded the second time
    # Every weight matrix is stored int8 with one scale per output channel; attention's two
    # MatMuls per layer (activations by activations) have no weight to quantise.
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file)).graph
    weights = {w.name: numpy_helper.to_array(w) for w in graph.initializer}
    dequantized = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 6 * (6 + 2) and not any(n.input[1] in weights for n in matmuls)
    quantized = [dequantized[n.input[1]] for n in matmuls if n.input[1] in dequantized]
    assert len(quantized) == 6 * 6
    for dq in quantized:
        q, scale = weights[dq.input[0]], weights[dq.input[1]]
        assert q.dtype == np.int8 and q.ndim == 2 and scale.shape == (q.shape[1],)


def test_models_it_cannot_reproduce_are_refused_in_one_line(tmp_path):
    folder = tmp_path / "m"
    (folder / "1_Pooling").mkdir(parents=True)
    modules = [{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert pooling_of(folder) == "cls"
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ConfigError, match="mean or CLS pooling"):
        pooling_of(folder)
    (folder / "modules.json").write_text(json.dumps([*modules, {"type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ConfigError, match="Dense") as err:
        pooling_of(folder)
    assert "\n" not in str(err.value)
    shutil.rmtree(folder)
    with pytest.raises(ConfigError, match="modules.json"):
        pooling_of(folder)


@pytest.mark.slow
def test_unwritable_cache_is_a_one_line_error(tmp_path, monkeypatch, texts):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("LAYERED_CACHE", str(blocker))
    with pytest.raises(ModelNotAvailableError, match="LAYERED_CACHE"):
        SentenceTransformerEmbedder(precision="int8").embed(texts[:2])
