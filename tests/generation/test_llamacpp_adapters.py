"""The llama.cpp generator's named adapters: validated at construction, saved by name, loaded safely."""

from __future__ import annotations

from pathlib import Path

import pytest

from layered.errors import ConfigError
from layered.generation.llamacpp_generator import LlamaCppGenerator


def test_named_adapters_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match="'policy'"):
        LlamaCppGenerator(loras={"policy": tmp_path / "missing.gguf"})
    (tmp_path / "policy.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="default_adapter 'medical'"):
        LlamaCppGenerator(loras={"policy": tmp_path / "policy.gguf"}, default_adapter="medical")
    gen = LlamaCppGenerator(loras={"policy": tmp_path / "policy.gguf"})
    assert gen.default_adapter is None and list(gen.adapters) == ["policy"]
    with pytest.raises(ConfigError, match="no adapter named 'nope'"):
        gen._resolve("nope")
    assert gen._resolve("base") is None and gen._resolve("policy") == "policy"


def test_adapters_save_by_name_and_a_crafted_file_name_is_refused(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF-a")
    gen = LlamaCppGenerator(loras={"policy": tmp_path / "a.gguf"}, default_adapter="policy")
    gen.save(tmp_path / "saved")
    config = gen.config()
    assert config["loras"] == {"policy": "policy.gguf"} and config["default_adapter"] == "policy"
    loaded = LlamaCppGenerator.load(tmp_path / "saved", config)
    assert loaded.loras["policy"].read_bytes() == b"GGUF-a" and loaded.default_adapter == "policy"
    for bad in ("../../etc/passwd", "/etc/passwd", ".."):
        with pytest.raises(ConfigError, match="not a plain file name"):
            LlamaCppGenerator.load(tmp_path / "saved", {**config, "loras": {"policy": bad}})


def test_a_folder_saved_with_one_adapter_by_an_older_layered_still_loads(tmp_path):
    (tmp_path / "generator").mkdir()
    (tmp_path / "generator" / "adapter.gguf").write_bytes(b"GGUF")
    old = {"kind": "llamacpp", "model": "SmolLM2-135M-Instruct", "lora": "adapter.gguf", "max_new_tokens": 16}
    gen = LlamaCppGenerator.load(tmp_path, old)
    assert gen.default_adapter == "default" and gen.loras["default"] == Path(tmp_path / "generator" / "adapter.gguf")
