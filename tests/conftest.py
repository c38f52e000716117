"""Shared fixtures: tiny real models for fast unit tests, the real defaults for slow ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from layered.types import Document

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
MEDQUAD_SAMPLE = REPO / "pipelines" / "data" / "medquad_sample.jsonl"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Iterator[Path]:
    """The tests' own ``LAYERED_CACHE`` (widened GGUFs, demo pipelines): never the user's."""
    folder = tmp_path_factory.mktemp("layered-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAYERED_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2 tokenizer (with its chat template), read from the packaged GGUF once."""
    from transformers import AutoTokenizer

    from layered import models

    path = models.DEFAULT_GENERATOR.path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer, randomly initialised Llama with SmolLM2's tokenizer, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=smol_tokenizer.eos_token_id, pad_token_id=smol_tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_generator(tiny_model_dir):
    from layered.generation.transformers_generator import TransformersGenerator

    return TransformersGenerator(str(tiny_model_dir), max_new_tokens=12, context_window=1024)


@pytest.fixture
def docs() -> list[Document]:
    """A few real MedQuAD records (from the bundled sample)."""
    rows = [json.loads(line) for line in MEDQUAD_SAMPLE.read_text(encoding="utf-8").splitlines()[:40]]
    return [
        Document(id=r["id"], text=f"{r['question']}\n\n{r['answer']}", source=r["url"], metadata={"qtype": r["qtype"], "focus": r["focus"]})
        for r in rows
    ]



@pytest.fixture
def server(pipe):
    """Start a real ``PipelineServer`` on a free loopback port for the requesting module's ``pipe``:
    ``server(**ServeOptions)`` returns it running; every one started is shut down afterwards."""
    from layered.serving.server import PipelineServer, ServeOptions

    servers = []

    def start(**options):
        srv = PipelineServer(pipe, ("127.0.0.1", 0), ServeOptions(model_name="tiny", **options))
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
