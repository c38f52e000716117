"""Decoding guards (loops cut, whole sentences) and the per-sentence groundedness check."""

from __future__ import annotations

import pytest

from layered.answers import build_answer as _answer
from layered.errors import ConfigError
from layered.generation.guards import DecodingGuard, degenerate, ends_mid_sentence
from layered.pipeline import Pipeline
from layered.prompts.grounding import quote_best_passage, sentence_support, split_sentences
from layered.prompts.template import ChatPromptTemplate
from layered.types import Chunk, Generation, Hit

GRAVES = ("Graves disease is treated with antithyroid medicines, radioactive iodine or surgery. "
          "Antithyroid medicines such as methimazole stop the thyroid from making too much hormone. "
          "Beta blockers ease the fast heartbeat while the other treatments take effect.")
PASSAGES = [Hit(chunk=Chunk(id="g#0", doc_id="g", text=GRAVES, source="niddk"), score=0.8),
            Hit(chunk=Chunk(id="b#0", doc_id="b", text="Bread is baked from flour, water and yeast.", source="x"), score=0.4)]


# -- decoding guard ---------------------------------------------------------------------------

LOOP = ("Shingles causes a painful rash on the skin. It affects the arms, the legs, the back, "
        "the arms, the legs, the back, the arms, the legs, the back, the arms")


def test_a_looping_generation_is_cut_before_the_repeat_and_ends_on_a_sentence():
    text, trimmed = DecodingGuard().finish(LOOP, cut=True)
    assert trimmed and text == "Shingles causes a painful rash on the skin."
    assert degenerate(LOOP) and not degenerate(text)


def test_the_stream_stops_pulling_tokens_once_the_text_loops_and_gives_the_same_text():
    pulled: list[str] = []

    def tokens():
        for word in LOOP.split(" ") + ["legs"] * 200:
            pulled.append(word)
            yield word + " "

    guard = DecodingGuard()
    streamed = "".join(guard.stream(tokens()))
    assert streamed == guard.finish(LOOP, cut=True)[0]
    assert len(pulled) < len(LOOP.split(" "))  # stopped at the repeat, not at the token limit


def test_a_cut_answer_ends_on_its_last_whole_sentence_and_a_finished_one_is_untouched():
    guard = DecodingGuard()
    assert guard.finish("Rest helps. Drink water and", cut=True) == ("Rest helps.", True)
    assert guard.finish("Rest helps. Drink water and", cut=False) == ("Rest helps. Drink water and", False)
    assert guard.finish("One unfinished sentence", cut=True) == ("One unfinished sentence", False)  # nothing to fall back to
    assert ends_mid_sentence("Drink water and") and not ends_mid_sentence("Drink water [1].")


def test_list_lines_count_as_sentence_ends_and_raw_streaming_keeps_every_piece():
    guard = DecodingGuard()
    assert guard.finish("Symptoms:\n- Fever\n- Night sweats\n- Weight", cut=True)[0] == "Symptoms:\n- Fever\n- Night sweats"
    raw = DecodingGuard(whole_sentences=False)
    pieces = list(raw.stream(iter(["Rest ", "helps ", "and ", "water"])))
    assert pieces == ["Rest", " helps", " and", " water"] and raw.finish("Rest helps and", cut=True)[0] == "Rest helps and"


def test_a_bare_list_number_is_not_a_sentence_end():
    steps = "To cancel:\n1. Log in to your account.\n2. Open your orders.\n3."
    assert DecodingGuard().finish(steps, cut=True)[0] == "To cancel:\n1. Log in to your account.\n2. Open your orders."
    assert DecodingGuard().finish("It was in 2020. Then it", cut=True)[0] == "It was in 2020."


def test_citations_after_the_full_stop_stay_with_their_sentence():
    guard = DecodingGuard()
    assert guard.finish("Drink water. [1] Rest and", cut=True)[0] == "Drink water. [1]"
    assert split_sentences("Drink water. [1] Rest well [2]. Sleep.") == ["Drink water. [1]", "Rest well [2].", "Sleep."]


def test_a_real_generator_streams_exactly_its_guarded_answer(tiny_generator):
    pipe = Pipeline(generator=tiny_generator)
    answer = pipe.ask("Tell me about the weather today")
    assert "".join(pipe.stream("Tell me about the weather today")) == answer.text
    assert not DecodingGuard().looping(answer.text)


# -- groundedness -------------------------------------------------------------------------------

def test_a_supported_sentence_passes_and_an_invented_one_is_flagged():
    supported = "Graves disease is treated with antithyroid medicines or radioactive iodine."
    invented = "Patients live only five years after radioactive iodine treatment and lose their hair."
    checks = sentence_support(f"{supported} {invented}", PASSAGES)
    assert [c.supported for c in checks] == [True, False]
    assert checks[0].passage == 1 and checks[0].score >= 0.6 and checks[1].score < 0.6


def _ask(text: str, question: str, grounding: str):
    """What the pipeline makes of a generated ``text`` for ``question`` over the two passages."""
    prompt = ChatPromptTemplate().render(question=question, context=PASSAGES)
    return _answer(question, prompt, Generation(text=text), grounding=grounding)


def test_drop_mode_removes_unsupported_sentences_and_reports_them():
    answer = "Graves disease is treated with antithyroid medicines [1]. The moon landing cured thyroid storms in 1969."
    out = _ask(answer, "How is Graves disease treated?", "drop")
    assert out.text == "Graves disease is treated with antithyroid medicines [1]."
    report = out.metadata["grounding"]
    assert report["sentences"] == 2 and report["supported"] == 1 and not report["fallback"]
    assert report["unsupported"] == ["The moon landing cured thyroid storms in 1969."]
    assert [c.number for c in out.citations] == [1]


def test_mark_mode_keeps_the_text_and_reports():
    answer = "The moon landing cured thyroid storms in 1969."
    out = _ask(answer, "How is Graves disease treated?", "mark")
    assert out.text == answer and out.metadata["grounding"]["supported"] == 0
    assert "grounding" not in _ask(answer, "How is Graves disease treated?", "off").metadata


def test_an_answer_with_no_supported_sentence_falls_back_to_quoting_the_best_passage():
    answer = "The moon landing cured thyroid storms in 1969. Astronauts recommend cheese for hyperthyroid cats."
    out = _ask(answer, "Which medicines treat Graves disease?", "drop")
    assert out.metadata["grounding"]["fallback"] is True
    assert out.text.endswith("[1]") and "antithyroid medicines" in out.text and "moon" not in out.text
    assert [c.doc_id for c in out.citations] == ["g"]
    assert sentence_support(out.text, PASSAGES)[0].supported


def test_grounding_mode_is_validated_and_saved(tiny_generator, tmp_path):
    with pytest.raises(ConfigError, match="grounding"):
        Pipeline(generator=tiny_generator, grounding="strict")
    pipe = Pipeline(generator=tiny_generator, grounding="drop")
    assert pipe.config()["grounding"] == "drop" and pipe.replace(k=2).grounding == "drop"


def test_quote_best_passage_picks_the_passage_and_sentences_that_match_the_question():
    text, number = quote_best_passage("What eases the fast heartbeat in Graves disease?", PASSAGES, sentences=1)
    assert number == 1 and text == "Beta blockers ease the fast heartbeat while the other treatments take effect. [1]"
    assert quote_best_passage("anything", []) is None
