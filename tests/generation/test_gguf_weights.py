"""Widening the packaged Q4_1 GGUF to F16 for llama.cpp: same tensors, same values up to F16
rounding, made once per cache, and a one-line error when the cache cannot be written."""

from __future__ import annotations

import numpy as np
import pytest

from layered import models
from layered.errors import ConfigError, ModelNotAvailableError
from layered.generation.gguf_weights import quantized_types, widened
from layered.generation.llamacpp_generator import LlamaCppGenerator


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_quantized_gguf_is_widened_to_the_same_weights_once(cache):
    import gguf
    from gguf.quants import dequantize

    source = models.DEFAULT_GENERATOR.path()
    copy = widened(source)
    assert copy.parent == cache / "gguf"
    before = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    after = {t.name: t for t in gguf.GGUFReader(str(copy)).tensors}
    assert before.keys() == after.keys()
    assert {t.tensor_type.name for t in before.values()} == {"Q4_1", "Q8_0", "F32"}  # F32: the norms
    assert {t.tensor_type.name for t in after.values()} == {"F16", "F32"}
    for name in ("blk.3.attn_q.weight", "blk.7.ffn_down.weight", "token_embd.weight"):
        old, new = before[name], after[name]
        assert new.tensor_type.name == "F16" and old.tensor_type.name != "F16"
        exact = dequantize(old.data, old.tensor_type).astype(np.float32)
        assert np.array_equal(np.asarray(new.data).astype(np.float32), exact.astype(np.float16).astype(np.float32))

    stamp = copy.stat().st_mtime_ns
    assert widened(source) == copy and copy.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert quantized_types(copy) == set() and widened(copy) == copy  # a float model is served as it is


def test_an_unwritable_cache_is_a_one_line_error_and_leaves_nothing(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("LAYERED_CACHE", str(blocker))
    with pytest.raises(ModelNotAvailableError, match="LAYERED_CACHE") as err:
        widened(models.DEFAULT_GENERATOR.path())
    assert "\n" not in str(err.value)
    with pytest.raises(ModelNotAvailableError, match="^cannot write the F16 copy"):  # not wrapped twice
        LlamaCppGenerator().warm_up()
    assert list(tmp_path.iterdir()) == [blocker]


def test_precision_is_checked_and_saved(tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        LlamaCppGenerator(precision="q4")  # type: ignore[arg-type]
    native = LlamaCppGenerator(precision="native")
    assert native.config()["precision"] == "native"
    assert LlamaCppGenerator.load(tmp_path, native.config()).precision == "native"
    assert LlamaCppGenerator().precision == "f16"



def test_the_gguf_tokenizer_is_cached_and_gives_the_same_token_ids(cache, smol_tokenizer):
    from layered.generation.gguf_weights import gguf_tokenizer

    source = models.DEFAULT_GENERATOR.path()
    first = gguf_tokenizer(source)
    folders = list((cache / "gguf").glob("*.tokenizer"))
    assert len(folders) == 1 and (folders[0] / "tokenizer.json").is_file()
    again = gguf_tokenizer(source)  # read from the cached folder this time
    chat = [{"role": "system", "content": "Answer from the passages."},
            {"role": "user", "content": "What are the symptoms of shingles? <|im_start|> ünïcödé"}]
    ids = [t.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for t in (smol_tokenizer, first, again)]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) > 20


def test_transformers_loads_the_gguf_from_a_dequantised_folder_made_once(tmp_path, monkeypatch):
    """The session's own cache (shared with the tests after this one, which then load in ~1 s)."""
    import gguf
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    source = models.DEFAULT_GENERATOR.path()
    folder = models.transformers_folder(source)
    assert folder.is_dir() and folder.parent == models.cache_dir() / "gguf" and (folder / "tokenizer.json").is_file()
    stored = load_file(str(folder / "model.safetensors"))
    tensors = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    # Tensors transformers does not permute: the saved float32 values are the GGUF's dequantised ones.
    for gguf_name, hf_name in (("blk.7.ffn_down.weight", "model.layers.7.mlp.down_proj.weight"),
                               ("token_embd.weight", "model.embed_tokens.weight")):
        t = tensors[gguf_name]
        exact = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(stored[hf_name].shape)
        assert stored[hf_name].dtype == np.float32 and np.array_equal(stored[hf_name], exact)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.transformers_folder(source) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert models.transformers_folder(folder) == folder  # a folder is loaded as it is

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("LAYERED_CACHE", str(blocker))
    assert models.transformers_folder(source) == source  # unwritable cache: transformers reads the GGUF itself
    assert blocker.read_text() == ""


def test_an_unmarked_cached_folder_is_built_again(cache):
    """A folder without the completion mark (an older layered's, or one cut short) is replaced."""
    source = models.DEFAULT_GENERATOR.path()
    stat = source.stat()
    stale = cache / "gguf" / f"{source.stem}.{stat.st_size}-{stat.st_mtime_ns}.probe"
    stale.mkdir(parents=True)
    (stale / "half-written").write_text("")
    folder = models.cached_folder(source, "probe", lambda tmp: (tmp / "data").write_text("whole"))
    assert folder == stale and (folder / "data").read_text() == "whole" and not (folder / "half-written").exists()
    assert models.cached_folder(source, "probe", lambda tmp: pytest.fail("built twice")) == folder
