"""One contract for every generator (as test_store_conformance does for stores): transformers
(a tiny real Llama), llama.cpp (the packaged SmolLM2) and the OpenAI connector against a real
``layered serve`` on loopback. A new generator joins ``MEMBERS`` and inherits the whole contract.

The contract: greedy answers repeat and the stream spells the same text; a call can lower the
answer budget and the token counts respect it; the part rebuilt from its config answers the
same; an unknown adapter is one clear error; a generator that counts tokens counts the prompt
it is given and refuses one its window cannot hold, before generating."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from layered import Pipeline, registry
from layered.connectors.openai import OpenAIGenerator
from layered.errors import ContextOverflowError, LayeredError
from layered.generation.llamacpp_generator import LlamaCppGenerator
from layered.generation.transformers_generator import TransformersGenerator
from layered.protocols import AdapterHost, Generator, TokenBudgeted, provides
from layered.serving.server import PipelineServer, ServeOptions
from layered.types import Generation, Message, Prompt

PROMPT = Prompt(messages=(Message("system", "Answer briefly."), Message("user", "Name three colours of the rainbow.")))
BUDGET = 12


@pytest.fixture(scope="module")
def served(tiny_model_dir) -> Iterator[str]:
    """A real `layered serve` over a pipeline with the tiny transformers generator: its /v1 URL."""
    pipe = Pipeline(generator=TransformersGenerator(str(tiny_model_dir), max_new_tokens=BUDGET, context_window=1024))
    server = PipelineServer(pipe, ("127.0.0.1", 0), ServeOptions(model_name="tiny"))
    server.start()
    try:
        yield server.url + "/v1"
    finally:
        server.shutdown()
        server.server_close()


MEMBERS: dict[str, Callable[[pytest.FixtureRequest], Any]] = {
    "transformers": lambda r: TransformersGenerator(str(r.getfixturevalue("tiny_model_dir")), max_new_tokens=BUDGET,
                                                    context_window=1024),
    "llamacpp": lambda r: LlamaCppGenerator(max_new_tokens=BUDGET, context_window=1024, parallel=2),
    "openai->layered-serve": lambda r: OpenAIGenerator("tiny", base_url=r.getfixturevalue("served"), api_key_env=None,
                                                       max_new_tokens=BUDGET),
}
CLASSES = {"transformers": TransformersGenerator, "llamacpp": LlamaCppGenerator, "openai->layered-serve": OpenAIGenerator}
BUDGETED = [name for name, cls in CLASSES.items() if provides(cls, TokenBudgeted)]


#: Members that load the real packaged model are marked slow, as the rest of the suite does.
SLOW = {"llamacpp"}


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MEMBERS])
def member(request) -> tuple[str, Any]:
    gen = MEMBERS[request.param](request)
    assert isinstance(gen, Generator) and provides(gen, AdapterHost)
    return request.param, gen


def test_the_budgeted_members_are_the_local_ones():
    # The table must be able to fail: a member losing count_tokens would drop out silently.
    assert BUDGETED == ["transformers", "llamacpp"]


def test_greedy_answers_repeat_and_the_stream_spells_them(member):
    name, gen = member
    first, again = gen.generate(PROMPT), gen.generate(PROMPT)
    assert isinstance(first, Generation) and first.text == again.text
    assert "".join(gen.stream(PROMPT)) == first.text
    assert 1 <= first.completion_tokens <= BUDGET and first.prompt_tokens > 0
    assert first.finish_reason in ("stop", "length")
    if first.finish_reason == "length":
        assert first.completion_tokens == BUDGET
    if name == "llamacpp":  # the real model says something
        assert first.text.strip()


def test_a_call_can_lower_the_answer_budget(member):
    _, gen = member
    short = gen.generate(PROMPT, max_new_tokens=3)
    assert 1 <= short.completion_tokens <= 3
    assert "".join(gen.stream(PROMPT, max_new_tokens=3)) == short.text


def test_the_generator_rebuilt_from_its_config_answers_the_same(member):
    _, gen = member
    config = gen.config()
    rebuilt = registry.build("generator", config)
    assert type(rebuilt) is type(gen) and rebuilt.config() == config
    assert rebuilt.generate(PROMPT).text == gen.generate(PROMPT).text


def test_an_unknown_adapter_is_one_clear_error(member):
    _, gen = member
    with pytest.raises(LayeredError, match="no adapter named 'nope'") as err:
        gen.generate(PROMPT, adapter="nope")
    assert "\n" not in str(err.value)
    assert gen.generate(PROMPT, adapter="base").text == gen.generate(PROMPT).text  # no adapter installed: base is the model


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in BUDGETED])
def test_a_budgeted_generator_counts_its_prompt_and_refuses_one_too_long(name, request):
    gen = MEMBERS[name](request)
    assert gen.count_tokens(PROMPT) == gen.generate(PROMPT).prompt_tokens
    assert gen.prompt_budget == 1024 - BUDGET
    long = Prompt(messages=(Message("user", "colour " * 2000),))
    with pytest.raises(ContextOverflowError):
        gen.generate(long)
    with pytest.raises(ContextOverflowError):
        "".join(gen.stream(long))
