"""Training-data preparation on the bundled Bitext support sample (real data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layered.errors import InputError
from layered.tuning.data import EmptyDatasetError, clean, data_report, load_examples, redact, split
from layered.tuning.dedup import near_duplicate_groups
from layered.types import Example

BITEXT = Path(__file__).resolve().parents[2] / "examples" / "data" / "bitext_support_sample.csv"


def test_loads_instruction_response_pairs_with_metadata():
    examples = load_examples(BITEXT, keep=["intent"])
    assert len(examples) == 648
    assert examples[0].question and "{{" in " ".join(e.answer for e in examples)  # placeholders kept
    assert len({e.metadata["intent"] for e in examples}) == 27


def test_chat_rows_and_bad_columns(tmp_path):
    p = tmp_path / "chat.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi?"},
                                          {"role": "assistant", "content": "hello"}]}) + "\n", encoding="utf-8")
    (ex,) = load_examples(p)
    assert (ex.question, ex.answer) == ("hi?", "hello")
    with pytest.raises(InputError, match="no column 'nope'"):
        load_examples(BITEXT, question_field="nope")
    with pytest.raises(InputError, match="no column 'tier'"):
        load_examples(BITEXT, keep=["tier"])
    (tmp_path / "empty.csv").write_text("instruction,response\n", encoding="utf-8")
    with pytest.raises(EmptyDatasetError, match="empty"):
        load_examples(tmp_path / "empty.csv")


def test_clean_counts_what_it_drops():
    base = load_examples(BITEXT)[:50]
    near = Example(question=base[0].question + " please", answer=base[0].answer)
    rows = [*base, Example(question="  ", answer="x"), Example(question="q", answer="a" * 9000),
            Example(question=base[1].question.upper() + "  ", answer=base[1].answer), near]
    kept, report = clean(rows)
    assert (report.empty, report.too_long, report.exact_duplicates, report.near_duplicates) == (1, 1, 1, 1)
    assert report.kept == len(kept) == 50 - len(base) + len({e.question for e in base})


def test_redaction_counts():
    (ex,), counts = redact([Example(
        question="Mail me at jane.doe@example.com or call +1 415-555-0134 about order 113542617735902",
        answer="Sure, reach support@contoso.com.",
    )])
    assert ex.question == "Mail me at [EMAIL] or call [PHONE] about order [ID]" and ex.answer == "Sure, reach [EMAIL]."
    assert counts == {"EMAIL": 2, "PHONE": 1, "ID": 1}


def test_split_keeps_groups_and_near_duplicates_on_one_side_and_is_seeded():
    examples = load_examples(BITEXT, keep=["intent"])
    twin = Example(question=examples[3].question + " now", answer=examples[3].answer, metadata={"intent": "zzz_unique"})
    data = [*examples, twin]
    parts = split(data, by="intent", validation=0.1, test=0.1, seed=7)
    assert sum(map(len, (parts.train, parts.validation, parts.test))) == len(data)
    sides = [{e.metadata["intent"] for e in p} for p in (parts.train, parts.validation, parts.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    where = [name for name, p in zip("tvs", (parts.train, parts.validation, parts.test)) if twin in p or examples[3] in p]
    assert len(where) == 1  # the near-duplicate pair never straddles splits
    again = split(data, by="intent", validation=0.1, test=0.1, seed=7)
    assert again == parts
    assert split(data, by="intent", seed=8) != parts
    assert 40 <= len(parts.validation) <= 100 and 40 <= len(parts.test) <= 100


def test_split_refuses_an_empty_validation_split():
    one_group = [Example(question=f"q{i} words here", answer=f"a{i}", metadata={"g": "only"}) for i in range(10)]
    with pytest.raises(EmptyDatasetError, match="cannot fill train and validation"):
        split(one_group, by="g", test=0)
    parts = split(one_group, by="g", validation=0, test=0)
    assert len(parts.train) == 10 and parts.validation == []


def test_near_duplicate_groups():
    texts = ["the quick brown fox jumps over the lazy dog today", "the quick brown fox jumps over the lazy dog today!",
             "completely different words about tents and boots"]
    g = near_duplicate_groups(texts, threshold=0.8)
    assert g[0] == g[1] != g[2]


def test_data_report_has_counts_and_histogram():
    report = data_report(load_examples(BITEXT), title="bitext")
    assert report.splitlines()[0].startswith("bitext: 648 examples") and "#" in report
