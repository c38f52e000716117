"""LoRA adapters as PEFT folders for serving engines (vLLM): the folder loads in PEFT and gives
layered's own logits on the real packaged model; what cannot be served is refused unwritten."""

from __future__ import annotations

import json

import pytest

from layered.adapters.export import ADAPTERS_DIR, PEFT_CONFIG, PEFT_WEIGHTS, export_for_serving, export_peft, generator_adapters
from layered.errors import ConfigError
from layered.pipelines.shipped import ShippedAdapter

PREFIX = "base_model.model.model.layers.{}.self_attn.{}.lora_{}.weight"
CONFIG = {"method": "lora", "rank": 4, "alpha": 8.0, "dora": False, "target_modules": ["q_proj", "v_proj"]}
# float32 on both sides, the same weights and the same LoRA arithmetic: the logits agree to
# rounding (measured here: max |diff| 0.0 exactly, on logits up to ~36 that the adapter moves by up to ~15).
LOGIT_TOLERANCE = 1e-4


def _weights(modules=("q_proj", "v_proj"), rank=4):
    import torch

    torch.manual_seed(0)
    out = {}
    for m in modules:
        out[PREFIX.format(0, m, "A")] = torch.randn(rank, 576)
        out[PREFIX.format(0, m, "B")] = torch.randn(192 if m != "q_proj" else 576, rank)
    return out


def test_a_peft_folder_holds_the_tensors_unchanged_and_peft_s_own_config(tmp_path):
    from peft import PeftConfig
    from safetensors.torch import load_file

    weights = _weights()
    out = export_peft(weights, CONFIG, tmp_path / "a", base_model="/models/base")
    assert sorted(p.name for p in out.iterdir()) == [PEFT_CONFIG, PEFT_WEIGHTS]
    saved = load_file(str(out / PEFT_WEIGHTS))
    assert set(saved) == set(weights) and all(saved[k].equal(weights[k]) for k in weights)
    config = PeftConfig.from_pretrained(str(out))
    assert (config.peft_type.value, config.r, config.lora_alpha, sorted(config.target_modules)) == ("LORA", 4, 8.0, ["q_proj", "v_proj"])
    assert config.base_model_name_or_path == "/models/base" and config.inference_mode and not config.use_dora


def test_what_a_serving_engine_cannot_load_is_refused_before_writing(tmp_path):
    import torch

    out = tmp_path / "a"
    with pytest.raises(ConfigError, match="DoRA"):
        export_peft(_weights(), {**CONFIG, "dora": True}, out)
    with pytest.raises(ConfigError, match="is ia3"):
        export_peft(_weights(), {**CONFIG, "method": "ia3"}, out)
    with pytest.raises(ConfigError, match="not in the recipe's target_modules"):
        export_peft(_weights(modules=("q_proj", "k_proj")), CONFIG, out)
    with pytest.raises(ConfigError, match="rank-4"):
        export_peft(_weights(rank=8), CONFIG, out)
    with pytest.raises(ConfigError, match="only lora_A"):
        export_peft({PREFIX.format(0, "q_proj", "A"): torch.zeros(4, 576)}, CONFIG, out)
    with pytest.raises(ConfigError, match="not a PEFT LoRA tensor"):
        export_peft({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(4, 576)}, CONFIG, out)
    assert not out.exists()


def test_export_for_serving_names_adapters_and_prints_the_vllm_launch(tmp_path, tiny_model_dir):
    export = export_for_serving({"medical": (_weights(), CONFIG), "support": (_weights(), CONFIG)}, str(tiny_model_dir), tmp_path / "out")
    assert export.base == tiny_model_dir.resolve()  # a base that is already a folder is referenced, not copied
    assert sorted(p.name for p in (tmp_path / "out" / ADAPTERS_DIR).iterdir()) == ["medical", "support"]
    assert json.loads((export.adapters["medical"] / PEFT_CONFIG).read_text())["base_model_name_or_path"] == str(export.base)
    assert export.vllm_args("smollm2") == [
        str(export.base), "--served-model-name", "smollm2", "--enable-lora", "--max-lora-rank", "4", "--max-loras", "2",
        "--lora-modules", f"medical={tmp_path / 'out' / ADAPTERS_DIR / 'medical'}", f"support={tmp_path / 'out' / ADAPTERS_DIR / 'support'}",
    ]
    with pytest.raises(ConfigError, match="adapter names"):
        export_for_serving({"base": (_weights(), CONFIG)}, str(tiny_model_dir), tmp_path / "bad")
    with pytest.raises(ConfigError, match="no config.json"):
        export_for_serving({"medical": (_weights(), CONFIG)}, str(tiny_model_dir), tmp_path / "bad", base_folder=tmp_path)
    assert not (tmp_path / "bad").exists()


def test_a_generator_without_peft_weights_is_refused(tiny_generator):
    class LlamaLike:
        kind = "llamacpp"
        adapters = {"medical": CONFIG}

    with pytest.raises(ConfigError, match="llamacpp generator does not hold PEFT adapter weights"):
        generator_adapters(LlamaLike())
    with pytest.raises(ConfigError, match="no adapters"):
        generator_adapters(tiny_generator)


@pytest.mark.slow
def test_the_exported_medical_adapter_gives_layered_s_logits_in_peft(tmp_path):
    """The shipped medical adapter, exported with the dequantised base, loaded by PEFT from the
    folders alone, against layered's transformers generator with the adapter installed."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from layered.adapters import runtime
    from layered.generation.transformers_generator import TransformersGenerator
    from layered.types import Message, Prompt

    gen = TransformersGenerator()
    ShippedAdapter.named("medical").install(gen, "medical")
    prompt = Prompt(messages=[Message("system", "Answer from the passages and cite them as [1]."),
                              Message("user", "What are the treatments for Graves disease?")])
    ids = gen.encode(prompt)["input_ids"]
    with torch.no_grad():
        with runtime.serving(gen.model, "medical"):
            ours = gen.model(input_ids=ids).logits
        with runtime.serving(gen.model, None):
            ours_base = gen.model(input_ids=ids).logits

    adapters = generator_adapters(gen, ["medical"])
    export = export_for_serving(adapters, gen.model_name, tmp_path / "vllm")
    base = AutoModelForCausalLM.from_pretrained(str(export.base), dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        theirs_base = base(input_ids=ids).logits
        peft = PeftModel.from_pretrained(base, str(export.adapters["medical"])).eval()
        theirs = peft(input_ids=ids).logits
    assert (ours - ours_base).abs().max() > 1.0  # the adapter changes the logits: the comparison can fail
    assert (theirs_base - ours_base).abs().max() < LOGIT_TOLERANCE  # the exported base is layered's base
    assert (theirs - ours).abs().max() < LOGIT_TOLERANCE
    assert theirs[0, -1].argmax() == ours[0, -1].argmax()


def test_the_command_exports_shipped_adapters_and_prints_the_launch(capsys, tmp_path, tiny_model_dir):
    from layered.cli import main

    out = tmp_path / "vllm"
    assert main(["-q", "export-peft", "medical", "support", "--out", str(out), "--base-folder", str(tiny_model_dir),
                 "--served-name", "smollm2"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"vllm serve {tiny_model_dir.resolve()} --served-model-name smollm2 --enable-lora --max-lora-rank 8 ")
    assert f"medical={out.resolve() / ADAPTERS_DIR / 'medical'}" in printed and "--max-loras 2" in printed
    assert sorted(p.name for p in (out / ADAPTERS_DIR).iterdir()) == ["medical", "support"] and not (out / "base").exists()
    assert main(["-q", "export-peft", "medical", "medical", "--out", str(tmp_path / "x"), "--base-folder", str(tiny_model_dir)]) == 1
    assert "two sources have an adapter named 'medical'" in capsys.readouterr().err
    assert main(["-q", "export-peft", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()
