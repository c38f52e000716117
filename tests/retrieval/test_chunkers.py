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


def test_prefers_paragraph_breaks_over_sentence_ends():
    text = "One two three. Four five six.\n\nSeven eight nine. Ten eleven twelve. Thirteen fourteen."
    first = TokenChunker(size=14, overlap=0, tokenizer=TOK).split([Document(id="p", text=text)])[0]
    assert first.text == "One two three. Four five six."


def test_sentence_windows_overlap_by_whole_sentences():
    from layered.retrieval.chunkers import SentenceChunker

    text = "A one. B two! C three? D four.\nE five"
    chunks = SentenceChunker(window=2, overlap=1).split([Document(id="s", text=text)])
    assert [c.text for c in chunks] == ["A one. B two!", "B two! C three?", "C three? D four.", "D four.\nE five"]
    assert all(text[c.start:c.end] == c.text for c in chunks)


def test_semantic_chunker_cuts_at_topic_shifts():
    from layered.retrieval.chunkers import SemanticChunker
    from layered.retrieval.embedders import HashingEmbedder

    cats = "Cats purr softly. Cats chase mice. Cats nap often."
    ships = "Ships sail oceans. Ships carry cargo. Ships dock slowly."
    doc = Document(id="t", text=f"{cats} {ships}")
    chunks = SemanticChunker(HashingEmbedder(512), percentile=0, max_tokens=100).split([doc])
    assert [c.text for c in chunks] == [cats, ships]
    capped = SemanticChunker(HashingEmbedder(512), percentile=0, max_tokens=8).split([doc])
    assert all(_tokens(c.text) <= 8 for c in capped) and len(capped) == 4  # 4 tokens a sentence, 2 a chunk
