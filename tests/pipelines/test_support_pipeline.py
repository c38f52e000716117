"""The support assistant's parts on their real bundled data: guidelines, manuals, slots, scoped retrieval."""

from __future__ import annotations

from layered import Pipeline
from layered.routing import KeywordRouter
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.scoped import ScopedRetriever
from layered.pipelines import support


def test_bundled_knowledge_loads_with_scopes():
    guidelines = support.guideline_documents()
    manuals = support.manual_documents()
    assert len(guidelines) == 55 and {d.metadata["scope"] for d in guidelines} == {"policy"}  # 10 flows, 55 subflows
    assert len(manuals) == 20 and {d.metadata["scope"] for d in manuals} == {"product"}
    refund = next(d for d in guidelines if d.metadata["subflow"] == "Initiate Refund")
    assert "Pull up Account" in refund.text and refund.text.splitlines()[1].startswith("1. ")


def test_slots_are_filled_from_request_values_then_the_shop_and_no_slot_reaches_a_customer():
    text = "Your order {{Order Number}} ships to {{ Delivery City }}; call {{Customer Support Phone Number}} on {{Website Name}}."
    assert support.fill_slots(text, {"Order Number": "4417", "Delivery City": "Oslo"}, shop={}) == \
        "Your order 4417 ships to Oslo; call {{Customer Support Phone Number}} on {{Website Name}}."
    filled = support.fill_slots(text, {"Order Number": "4417"})
    assert "our customer support line" in filled and "the Contoso Outdoors website" in filled and "{{ Delivery City }}" in filled
    assert support.no_placeholders(filled) == ("Your order 4417 ships to your delivery city; call our customer support line on "
                                               "the Contoso Outdoors website.")


def test_the_route_picks_the_search_scope_inside_the_query(tiny_generator, tmp_path):
    dense = DenseRetriever(embedder=HashingEmbedder(256), chunker=TokenChunker(size=80, overlap=10))
    retriever = ScopedRetriever(dense, support.ROUTER, support.SCOPES)
    retriever.add_documents([*support.manual_documents()[:5], *support.guideline_documents()])
    policy = retriever.retrieve("How do I get a refund for my order?", k=5)
    product = retriever.retrieve("Is the TrailMaster X4 Tent waterproof?", k=5)
    assert len(policy) == 5 and {h.chunk.metadata["scope"] for h in policy} == {"policy"}
    assert len(product) == 5 and {h.chunk.metadata["scope"] for h in product} == {"product"}
    pipe = Pipeline(generator=tiny_generator, retriever=retriever, router=KeywordRouter({"base": ["x"]}))
    pipe.save(tmp_path / "p")
    loaded = Pipeline.load(tmp_path / "p")
    assert isinstance(loaded.retriever, ScopedRetriever)
    assert [h.chunk.id for h in loaded.retrieve("How do I get a refund for my order?", k=5)] == [h.chunk.id for h in policy]
