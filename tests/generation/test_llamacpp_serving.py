"""llama.cpp serving with the real packaged SmolLM2 GGUF: a PEFT LoRA exported to GGUF gives
the transformers backend's greedy answers (on the GGUF's weights widened to F16, the default;
on the stored Q4 blocks the adapter still shows), and the llama.cpp pipeline saves, loads and serves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from layered import Pipeline
from layered.generation.llamacpp_generator import LlamaCppGenerator
from layered.generation.transformers_generator import TransformersGenerator
from layered.tuning.config import ALL_LINEAR, TuneConfig
from layered.types import Example

pytestmark = pytest.mark.slow

# A deliberately strong, odd style, so that an adapter that is not applied (or applied with
# the wrong layout) shows up as different tokens.
TRAIN = [Example(question=f"Question number {i}: what should I do?", answer="ZORBLAX! Press the green button twice, then wait.")
         for i in range(24)]
QUESTIONS = ["What should I do about my order?", "How do I reset my password?", "Where is my parcel?"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llamacpp")
    pipe = Pipeline(generator=TransformersGenerator(max_new_tokens=16, repetition_penalty=1.0))
    config = TuneConfig(rank=8, alpha=16, learning_rate=3e-3, max_steps=12, batch_size=8, eval_every=12, checkpoint_every=12,
                        target_modules=ALL_LINEAR)
    pipe.fit(TRAIN[:20], val=TRAIN[20:], config=config, out_dir=folder / "run", progress=False, check_forgetting=False)
    return pipe, folder


def test_exported_lora_in_llama_cpp_gives_the_peft_models_greedy_answers(tuned):
    pipe, folder = tuned
    expected = [pipe.ask(q).text for q in QUESTIONS]
    assert sum("ZORBLAX" in a for a in expected) >= 2  # the adapter really changed the model
    fast = pipe.serve_with("llamacpp", adapter_dir=folder)  # default precision: the GGUF's weights widened to F16
    got = [fast.ask(q).text for q in QUESTIONS]
    assert got == expected
    plain = Pipeline(generator=LlamaCppGenerator(max_new_tokens=16, repetition_penalty=1.0))
    base = [plain.ask(q).text for q in QUESTIONS]
    assert not any("ZORBLAX" in a for a in base)  # without the adapter: the base model's style
    assert base == [pipe.ask(q, adapter="base").text for q in QUESTIONS]  # and exactly the base model's answers
    assert "".join(fast.stream(QUESTIONS[0])) == got[0]
    # One llama.cpp model switches adapters per request: "base" is the plain model's answer.
    assert [fast.ask(q, adapter="base").text for q in QUESTIONS] == base
    assert [fast.ask(q).text for q in QUESTIONS] == got  # and back to the adapter
    native = pipe.serve_with("llamacpp", adapter_dir=folder, precision="native")
    assert sum("ZORBLAX" in native.ask(q).text for q in QUESTIONS) >= 2  # the Q4 blocks as stored serve the adapter too


def test_a_llama_cpp_pipeline_saves_loads_and_serves_over_http(tuned, tmp_path):
    pipe, folder = tuned
    fast = pipe.serve_with("llamacpp", adapter_dir=folder)
    answer = fast.ask(QUESTIONS[1]).text
    fast.save(tmp_path / "fast")
    assert (tmp_path / "fast" / "generator" / "default.gguf").is_file()
    loaded = Pipeline.load(tmp_path / "fast")
    assert isinstance(loaded.generator, LlamaCppGenerator) and loaded.ask(QUESTIONS[1]).text == answer
    proc = subprocess.Popen([sys.executable, "-m", "layered.cli", "-q", "serve", str(tmp_path / "fast"), "--port", "0", "--name", "fast"],
                            stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:
            line = proc.stderr.readline()
            if "http://" in line:
                url = line[line.index("http://"):].split()[0]
        assert url, "the server never said where it listens"
        body = json.dumps({"question": QUESTIONS[1]}).encode()
        req = urllib.request.Request(url + "/ask", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert json.loads(resp.read())["answer"] == answer
    finally:
        proc.terminate()
        proc.wait(timeout=30)
