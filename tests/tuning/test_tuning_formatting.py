"""Train what you serve: the training chat is the served chat, and loss covers only the answer."""

from __future__ import annotations

import pytest

from layered import Pipeline
from layered.errors import ConfigError, ContextOverflowError
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.tuning.formatting import IGNORE, format_example
from layered.types import Example


@pytest.fixture
def pipe(tiny_generator, docs):
    retriever = DenseRetriever(embedder=HashingEmbedder(128), chunker=TokenChunker(size=60, overlap=10))
    retriever.add_documents(docs)
    return Pipeline(generator=tiny_generator, retriever=retriever, k=2)


def test_prompt_part_is_exactly_what_ask_sends_and_labels_cover_only_the_answer(pipe):
    example = Example(question="What are the symptoms?", answer="Fever and a rash [1].")
    features = format_example(pipe, example)
    tok = pipe.generator.tokenizer
    served = pipe.generator.encode(pipe.build_prompt(example.question))["input_ids"][0].tolist()
    n = len(served)
    assert features.input_ids[:n] == served  # same template, same passages, same tokens
    assert all(label == IGNORE for label in features.labels[:n])
    answer_ids = [t for t in features.labels if t != IGNORE]
    assert features.labels[n:] == features.input_ids[n:] == answer_ids
    decoded = tok.decode(answer_ids, skip_special_tokens=False)
    assert decoded.startswith("Fever and a rash [1].") and decoded.rstrip().endswith("<|im_end|>")
    assert tok.decode(answer_ids, skip_special_tokens=True).strip() == "Fever and a rash [1]."


def test_distractors_add_other_passages(pipe, docs):
    pool = [Example(question=d.text.split("\n")[0], answer="x") for d in docs[:20]]
    plain = format_example(pipe, pool[0])
    mixed = format_example(pipe, pool[0], distractors=2, pool=pool)
    assert len(mixed.input_ids) > len(plain.input_ids) and mixed.answer_tokens == plain.answer_tokens


def test_an_example_longer_than_the_window_is_a_clear_error(pipe):
    with pytest.raises(ContextOverflowError, match="drop it in cleaning"):
        format_example(pipe, Example(question="Why?", answer="because " * 2000))


def test_a_chat_template_that_rewrites_the_prompt_is_a_config_error(pipe, monkeypatch):
    tok = pipe.generator.tokenizer
    original = tok.apply_chat_template

    def drifting(chat, *args, **kwargs):
        out = original(chat, *args, **kwargs)
        if not kwargs.get("add_generation_prompt"):  # the full chat starts with a different token
            out["input_ids"] = [tok.eos_token_id, *list(out["input_ids"])[1:]]
        return out

    monkeypatch.setattr(tok, "apply_chat_template", drifting)
    with pytest.raises(ConfigError, match="cannot be masked for training") as e:
        format_example(pipe, Example(question="What are the symptoms?", answer="Fever."))
    assert "\n" not in str(e.value)
