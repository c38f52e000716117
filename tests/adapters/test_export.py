"""LoRA -> llama.cpp GGUF adapter export: names, layout, metadata and refusals, read back with gguf."""

from __future__ import annotations

import numpy as np
import pytest

from layered import models
from layered.errors import ConfigError
from layered.adapters.export import export_lora

BASE = models.DEFAULT_GENERATOR.path()  # SmolLM2-135M: hidden 576, 9 query heads, 3 key/value heads, rank 4 below
PREFIX = "base_model.model.model.layers.{}.{}.lora_{}.weight"
CONFIG = {"method": "lora", "alpha": 8.0, "rank": 4, "dora": False}


def _weights(layer=0, modules=(("self_attn", "q_proj", 576), ("self_attn", "k_proj", 192), ("mlp", "down_proj", 576))):
    import torch

    torch.manual_seed(0)
    out = {}
    for block, name, n_out in modules:
        n_in = 1536 if name == "down_proj" else 576
        out[PREFIX.format(layer, f"{block}.{name}", "A")] = torch.randn(4, n_in)
        out[PREFIX.format(layer, f"{block}.{name}", "B")] = torch.randn(n_out, 4)
    return out


def _reference_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py, written out independently: per head, interleave the
    # two rotary halves.
    head = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        block = w[h * head:(h + 1) * head]
        out[h * head:(h + 1) * head][0::2] = block[: head // 2]
        out[h * head:(h + 1) * head][1::2] = block[head // 2:]
    return out


def test_tensors_are_named_laid_out_and_described_for_llama_cpp(tmp_path):
    import gguf

    weights = _weights()
    path = export_lora(weights, CONFIG, BASE, tmp_path / "a.gguf")
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["adapter.lora.alpha"]
    assert float(field.parts[field.data[0]][0]) == 8.0
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "adapter"
    tensors = {t.name: np.array(t.data).reshape([int(x) for x in reversed(t.shape)]) for t in reader.tensors}
    assert set(tensors) == {f"blk.0.{n}.weight.lora_{s}" for n in ("attn_q", "attn_k", "ffn_down") for s in "ab"}
    a = lambda m, blk: weights[PREFIX.format(0, f"{blk}.{m}", "A")].numpy()  # noqa: E731
    b = lambda m, blk: weights[PREFIX.format(0, f"{blk}.{m}", "B")].numpy()  # noqa: E731
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight.lora_a"], a("q_proj", "self_attn"))  # A is never permuted
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight.lora_b"], _reference_permute(b("q_proj", "self_attn"), 9))
    np.testing.assert_array_equal(tensors["blk.0.attn_k.weight.lora_b"], _reference_permute(b("k_proj", "self_attn"), 3))
    np.testing.assert_array_equal(tensors["blk.0.ffn_down.weight.lora_b"], b("down_proj", "mlp"))  # only q/k are permuted


def test_what_cannot_be_exported_is_refused_before_writing(tmp_path):
    import torch

    out = tmp_path / "a.gguf"
    with pytest.raises(ConfigError, match="DoRA"):
        export_lora(_weights(), {**CONFIG, "dora": True}, BASE, out)
    with pytest.raises(ConfigError, match="only plain LoRA"):
        export_lora(_weights(), {**CONFIG, "method": "ia3"}, BASE, out)
    with pytest.raises(ConfigError, match="do not fit the base tensor"):
        export_lora(_weights(modules=(("self_attn", "k_proj", 576),)), CONFIG, BASE, out)  # k_proj is 192 wide here
    with pytest.raises(ConfigError, match="no tensor 'blk.99"):
        export_lora(_weights(layer=99), CONFIG, BASE, out)
    with pytest.raises(ConfigError, match="cannot map"):
        export_lora({"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 576)}, CONFIG, BASE, out)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written
