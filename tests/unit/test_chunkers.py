import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layered.errors import ConfigError
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.tokenizers import RegexTokenizer
from layered.types import Document

TOK = RegexTokenizer()


def _tokens(text: str) -> int:
    return len(TOK.offsets(text))


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("abc de.\n!?,")), max_size=600),
    size=st.integers(1, 40),
    overlap_frac=st.floats(0, 0.9),
)
def test_chunks_are_exact_slices_within_size_and_cover_every_token(text, size, overlap_frac):
    overlap = min(size - 1, int(size * overlap_frac))
    chunker = TokenChunker(size=size, overlap=overlap, tokenizer=TOK)
    doc = Document(id="d", text=text)
    chunks = chunker.split([doc])
    covered = set()
    for i, c in enumerate(chunks):
        assert c.id == f"d#{i}" and c.doc_id == "d"
        assert text[c.start:c.end] == c.text
        assert 1 <= _tokens(c.text) <= size
        covered.update(range(c.start, c.end))
    for s, e in TOK.offsets(text):
        assert s in covered and e - 1 in covered
    starts = [c.start for c in chunks]
    assert starts == sorted(set(starts))  # always moves forward


def test_prefers_sentence_boundaries_and_overlaps():
    text = " ".join(f"Sentence number {i} is here." for i in range(30))
    chunks = TokenChunker(size=24, overlap=6, tokenizer=TOK).split([Document(id="x", text=text)])
    assert len(chunks) > 3
    assert all(c.text.endswith(".") for c in chunks)
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:]))  # neighbours overlap


def test_empty_documents_yield_no_chunks():
    assert TokenChunker(tokenizer=TOK).split([Document(id="e", text="  \n ")]) == []


@pytest.mark.parametrize("size, overlap", [(0, 0), (10, 10), (10, -1)])
def test_bad_sizes_are_config_errors(size, overlap):
    with pytest.raises(ConfigError):
        TokenChunker(size=size, overlap=overlap)
