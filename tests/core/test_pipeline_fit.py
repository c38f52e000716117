"""Pipeline.fit on a tiny real Llama: trains what it serves, saves the adapter, refuses bad input early."""

from __future__ import annotations

import pytest

from layered import Pipeline
from layered.errors import ConfigError, ContextOverflowError
from layered.tuning.config import TuneConfig
from layered.tuning.data import EmptyDatasetError
from layered.types import Example

TRAIN = [Example(question=f"What is the code for item {i}?", answer=f"The code is X{i % 3}.") for i in range(24)]
VAL = [Example(question=f"What is the code for item {i}?", answer=f"The code is X{i % 3}.") for i in range(24, 30)]


def test_fit_lowers_validation_loss_and_the_adapter_survives_save_load(tiny_generator, tmp_path):
    pipe = Pipeline(generator=tiny_generator)
    config = TuneConfig(rank=8, learning_rate=1e-2, max_steps=30, batch_size=8, eval_every=10, checkpoint_every=10)
    report = pipe.fit(TRAIN, val=VAL, config=config, out_dir=tmp_path / "run", progress=False)
    assert report.steps == 30 and report.val_losses[-1][1] < report.val_losses[0][1] - 0.2
    before_save = pipe.ask("What is the code for item 40?").text
    pipe.save(tmp_path / "tuned")
    assert (tmp_path / "tuned" / "generator" / "adapters" / "default.safetensors").is_file()
    loaded = Pipeline.load(tmp_path / "tuned")
    assert loaded.generator.adapters["default"]["method"] == "lora"
    assert loaded.ask("What is the code for item 40?").text == before_save
    with pytest.raises(ConfigError, match="already carries an adapter"):
        loaded.fit(TRAIN, val=VAL, config=config, out_dir=tmp_path / "again", progress=False)


def test_bad_input_is_refused_before_training(tiny_generator, tmp_path):
    pipe = Pipeline(generator=tiny_generator)
    with pytest.raises(EmptyDatasetError, match="no training examples"):
        pipe.fit([], out_dir=tmp_path)
    with pytest.raises(EmptyDatasetError, match="validation set is empty"):
        pipe.fit(TRAIN, val=[], out_dir=tmp_path)
    with pytest.raises(EmptyDatasetError, match="cannot fill train and validation"):
        pipe.fit(TRAIN[:1], out_dir=tmp_path)
    with pytest.raises(ContextOverflowError, match="1 training example"):
        pipe.fit([*TRAIN, Example(question="long?", answer="word " * 3000)], val=VAL, out_dir=tmp_path)
    assert tiny_generator.adapters == {}  # nothing was attached or trained


def test_merged_lora_matches_unmerged_outputs_and_logits(tiny_model_dir, tmp_path):
    import torch

    from layered.generation.transformers_generator import TransformersGenerator

    gen = TransformersGenerator(str(tiny_model_dir), max_new_tokens=12, context_window=1024)
    pipe = Pipeline(generator=gen)
    config = TuneConfig(rank=8, learning_rate=1e-2, max_steps=10, batch_size=8, eval_every=5, checkpoint_every=10)
    pipe.fit(TRAIN, val=VAL, config=config, out_dir=tmp_path / "run", progress=False)
    prompt = pipe.build_prompt("What is the code for item 41?")
    ids = gen.encode(prompt)
    with torch.no_grad():
        unmerged_logits = gen.model(**ids).logits
    unmerged = gen.generate(prompt).text
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in gen.model.named_parameters())  # the adapter did something
    gen.merge_adapter()
    assert not any("lora" in n for n, _ in gen.model.named_parameters())
    with torch.no_grad():
        merged_logits = gen.model(**ids).logits
    assert torch.allclose(merged_logits, unmerged_logits, atol=1e-4)
    assert gen.generate(prompt).text == unmerged
    with pytest.raises(ConfigError, match="merged"):
        pipe.save(tmp_path / "merged")


def test_tune_cli_trains_and_saves_the_adapter(tiny_generator, tmp_path, capsys):
    import json

    from layered.cli import main

    Pipeline(generator=tiny_generator).save(tmp_path / "base")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"question": e.question, "answer": e.answer}) + "\n" for e in TRAIN + VAL), encoding="utf-8")
    (tmp_path / "tune.toml").write_text('data = "pairs.jsonl"\nrank = 4\nmax_steps = 4\nbatch_size = 8\n', encoding="utf-8")
    code = main(["-q", "tune", str(tmp_path / "tune.toml"), "--pipeline", str(tmp_path / "base"), "--out", str(tmp_path / "tuned")])
    assert code == 0 and capsys.readouterr().out.strip() == str(tmp_path / "tuned")
    assert Pipeline.load(tmp_path / "tuned").generator.adapters["default"]["rank"] == 4
    assert (tmp_path / "tuned.run" / "loss.png").is_file() and (tmp_path / "tuned.run" / "metrics.jsonl").is_file()
    assert main(["-q", "tune", str(tmp_path / "missing.csv"), "--pipeline", str(tmp_path / "base")]) == 1


@pytest.mark.parametrize("method, extra", [("lora", {"dora": True}), ("ia3", {}), ("prefix", {"virtual_tokens": 4}), ("bottleneck", {"bottleneck": 8}),
                                           ("selective", {"top_layers": 1}), ("full", {})])
def test_every_method_trains_serves_and_round_trips(tiny_model_dir, tmp_path, method, extra):
    from layered.generation.transformers_generator import TransformersGenerator
    from layered.adapters.methods import count_parameters

    gen = TransformersGenerator(str(tiny_model_dir), max_new_tokens=6, context_window=1024)
    pipe = Pipeline(generator=gen)
    config = TuneConfig(method=method, learning_rate=1e-2, max_steps=3, batch_size=8, eval_every=3, checkpoint_every=3, **extra)
    report = pipe.fit(TRAIN, val=VAL, config=config, out_dir=tmp_path / "run", progress=False)
    trainable, total = count_parameters(gen.model)
    assert 0 < trainable <= total and (trainable == total) == (method == "full")
    answer = pipe.ask("What is the code for item 3?").text
    assert report.steps == 3 and report.val_losses[-1][1] == report.val_losses[-1][1]  # finite, not NaN
    pipe.save(tmp_path / "p")
    loaded = Pipeline.load(tmp_path / "p")
    assert loaded.ask("What is the code for item 3?").text == answer
    loaded.save(tmp_path / "again")  # a loaded adapter saves the same weights again
    assert Pipeline.load(tmp_path / "again").ask("What is the code for item 3?").text == answer


def test_fresh_bottleneck_adapters_leave_outputs_unchanged(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from layered.adapters.methods import apply_method

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
        after = apply_method(base, TuneConfig(method="bottleneck", bottleneck=8))(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-6)
    assert all(("adapter" in n) == p.requires_grad for n, p in base.named_parameters())


def test_fit_names_the_adapter_it_trains_and_the_name_survives_save_load_and_add_adapter(tiny_model_dir, tmp_path):
    from layered.generation.transformers_generator import TransformersGenerator

    def generator():
        return TransformersGenerator(str(tiny_model_dir), max_new_tokens=12, context_window=1024)

    pipe = Pipeline(generator=generator())
    config = TuneConfig(rank=4, learning_rate=1e-2, max_steps=4, batch_size=8, eval_every=4, checkpoint_every=4)
    with pytest.raises(ConfigError, match="adapter names"):  # refused before the model is touched
        pipe.fit(TRAIN, val=VAL, config=config, name="base", out_dir=tmp_path / "bad", progress=False, check_forgetting=False)
    assert pipe.generator.adapters == {} and not (tmp_path / "bad").exists()
    pipe.fit(TRAIN, val=VAL, config=config, name="codes", out_dir=tmp_path / "run", progress=False, check_forgetting=False)
    assert list(pipe.generator.adapters) == ["codes"] and pipe.generator.default_adapter == "codes"
    answer = pipe.ask("What is the code for item 40?")
    assert answer.metadata["adapter"] == "codes"
    assert pipe.ask("What is the code for item 40?", adapter="codes").text == answer.text
    pipe.save(tmp_path / "tuned")
    assert (tmp_path / "tuned" / "generator" / "adapters" / "codes.safetensors").is_file()
    loaded = Pipeline.load(tmp_path / "tuned")
    assert list(loaded.generator.adapters) == ["codes"] and loaded.generator.default_adapter == "codes"
    assert loaded.ask("What is the code for item 40?").text == answer.text
    other = Pipeline(generator=generator())  # served under another name, read from the saved "codes" file
    other.add_adapter("served", tmp_path / "tuned", default=True)
    assert other.ask("What is the code for item 40?").text == answer.text
