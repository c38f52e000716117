"""Several adapters on one base: per-request switching, routers, save/load, clear refusals."""

from __future__ import annotations

import pytest

from layered import Pipeline
from layered.errors import ConfigError
from layered.generation.transformers_generator import TransformersGenerator
from layered.retrieval.embedders import HashingEmbedder
from layered.routing import EmbeddingRouter, KeywordRouter
from layered.tuning.config import TuneConfig
from layered.types import Example

CODES = [Example(question=f"What is the code for item {i}?", answer=f"The code is X{i % 3}.") for i in range(30)]
COLORS = [Example(question=f"What color is box {i}?", answer="Blue, always blue.") for i in range(30)]
QUESTIONS = ["What is the code for item 40?", "What color is box 41?"]


def _generator(tiny_model_dir) -> TransformersGenerator:
    return TransformersGenerator(str(tiny_model_dir), max_new_tokens=8, context_window=1024)


def _tuned(tiny_model_dir, tmp_path, name, data, method="lora"):
    pipe = Pipeline(generator=_generator(tiny_model_dir))
    config = TuneConfig(method=method, rank=4, learning_rate=2e-2, max_steps=12, batch_size=8, eval_every=12, checkpoint_every=12)
    pipe.fit(data[:24], val=data[24:], config=config, out_dir=tmp_path / f"{name}.run", progress=False)
    pipe.save(tmp_path / name)
    return pipe


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, tmp_path_factory):
    """Two LoRA pipelines trained on different tasks, saved, with their answers to QUESTIONS."""
    tmp = tmp_path_factory.mktemp("adapters")
    answers = {}
    for name, data in (("codes", CODES), ("colors", COLORS)):
        pipe = _tuned(tiny_model_dir, tmp, name, data)
        answers[name] = [pipe.ask(q).text for q in QUESTIONS]
    base = Pipeline(generator=_generator(tiny_model_dir))
    answers["base"] = [base.ask(q).text for q in QUESTIONS]
    return tmp, answers


def test_each_request_gets_the_adapter_it_names(tiny_model_dir, tuned):
    folder, expected = tuned
    assert len({tuple(a) for a in expected.values()}) == 3  # the adapters really change the answers
    pipe = Pipeline(generator=_generator(tiny_model_dir))
    pipe.add_adapter("codes", folder / "codes")
    pipe.add_adapter("colors", folder / "colors")
    for name in ("codes", "colors", "base", "codes", "base", "colors"):  # interleaved: no state leaks between requests
        answers = [pipe.ask(q, adapter=name) for q in QUESTIONS]
        assert [a.text for a in answers] == expected[name]
        assert answers[0].metadata["adapter"] == name
    assert [pipe.ask(q).text for q in QUESTIONS] == expected["base"]  # no default adapter: the base model answers
    assert "".join(pipe.stream(QUESTIONS[1], adapter="colors")).strip() == expected["colors"][1]


def test_a_router_picks_the_adapter_and_everything_survives_save_and_load(tiny_model_dir, tuned, tmp_path):
    folder, expected = tuned
    router = KeywordRouter({"codes": ["code"], "colors": ["color", "colour"]}, default="base")
    pipe = Pipeline(generator=_generator(tiny_model_dir), router=router)
    pipe.add_adapter("codes", folder / "codes")
    pipe.add_adapter("colors", folder / "colors", default=True)
    pipe.save(tmp_path / "both")  # before the model ever loaded: the saved files are copied as they are
    loaded = Pipeline.load(tmp_path / "both")
    assert isinstance(loaded.router, KeywordRouter) and loaded.generator.default_adapter == "colors"
    routed = [loaded.ask(q) for q in QUESTIONS]
    assert [a.metadata["adapter"] for a in routed] == ["codes", "colors"]
    assert [a.text for a in routed] == [expected["codes"][0], expected["colors"][1]]
    assert loaded.ask(QUESTIONS[0], adapter="colors").text == expected["colors"][0]  # a named adapter beats the router
    loaded.save(tmp_path / "again")  # after loading: the weights are read back out of the model
    assert Pipeline.load(tmp_path / "again").ask(QUESTIONS[0]).text == expected["codes"][0]


def test_bad_adapter_requests_get_one_clear_error(tiny_model_dir, tuned, tmp_path):
    folder, _ = tuned
    pipe = Pipeline(generator=_generator(tiny_model_dir))
    pipe.add_adapter("codes", folder / "codes")
    with pytest.raises(ConfigError, match="no adapter named 'nope'"):
        pipe.ask(QUESTIONS[0], adapter="nope")
    with pytest.raises(ConfigError, match="already installed"):
        pipe.add_adapter("codes", folder / "colors")
    with pytest.raises(ConfigError, match="adapter names"):
        pipe.add_adapter("base", folder / "colors")
    with pytest.raises(ConfigError, match="was tuned on"):
        Pipeline(generator=TransformersGenerator(str(tmp_path), max_new_tokens=8)).add_adapter("codes", folder / "codes")
    _tuned(tiny_model_dir, tmp_path, "ia3", CODES, method="ia3")
    with pytest.raises(ConfigError, match="must all be LoRA"):
        pipe.add_adapter("ia3", tmp_path / "ia3")


def test_a_weight_changing_adapter_cannot_serve_the_base_model(tiny_model_dir, tmp_path):
    pipe = _tuned(tiny_model_dir, tmp_path, "selective", CODES, method="selective")
    pipe.ask(QUESTIONS[0], adapter="default")
    with pytest.raises(ConfigError, match="base model is not available"):
        pipe.ask(QUESTIONS[0], adapter="base")


def test_keyword_router_matches_whole_words_in_order():
    router = KeywordRouter({"billing": ["refund", "invoice"], "orders": ["order", "refund"]}, default=None)
    assert router.route("Where is my REFUND?") == "billing"
    assert router.route("cancel my order please") == "orders"
    assert router.route("I love ordering pizza") is None  # 'order' is not a whole word there
    with pytest.raises(ConfigError, match="non-empty list"):
        KeywordRouter({"billing": "refund"})


def test_embedding_router_picks_the_nearest_examples_above_the_threshold():
    router = EmbeddingRouter(
        {"support": ["cancel my order", "track my package delivery"], "medical": ["symptoms of diabetes", "treatment for asthma"]},
        embedder=HashingEmbedder(), threshold=0.3, default="base",
    )
    assert router.route("how do I cancel an order") == "support"
    assert router.route("what is the treatment for asthma in children") == "medical"
    assert router.route("zebra quantum violin") == "base"
    rebuilt = EmbeddingRouter.from_config(router.config())
    assert rebuilt.route("symptoms of diabetes type 2") == "medical"


def test_a_name_torch_module_containers_reserve_is_refused_before_the_model_is_touched(tiny_model_dir, tuned):
    folder, _ = tuned
    pipe = Pipeline(generator=_generator(tiny_model_dir))
    for name in ("items", "keys", "train"):  # PEFT would fail inside torch with "attribute 'items' already exists"
        with pytest.raises(ConfigError, match=f"adapter name '{name}' is an attribute of torch's module containers"):
            pipe.add_adapter(name, folder / "codes")
    assert pipe.generator.adapters == {}
    pipe.add_adapter("codes", folder / "codes")
    assert list(pipe.generator.adapters) == ["codes"]
