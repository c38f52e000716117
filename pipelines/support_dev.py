"""The support assistant's right-or-silent dev set: in-scope questions per procedure and product, and
questions outside the shop's scope.

* **In scope, policy**: one customer question per ABCD guideline procedure (:data:`PROCEDURE_QUESTIONS`,
  written here the way customers write: "i forgot my password"), relevant document: that procedure.
* **In scope, product**: per Contoso manual, questions on its warranty, set-up and materials
  (:data:`PRODUCT_TEMPLATES`), relevant document: that manual.
* **Out of scope** (:data:`OUT_OF_SCOPE`): products the shop does not sell, general knowledge, and
  medical or legal advice; no document answers them.

Split by procedure *flow* and by product (seeded, half each): ``tune`` picks thresholds, ``test`` is
reported and never tuned on; out-of-scope questions alternate between the two.
"""

from __future__ import annotations

import random
from pathlib import Path

from layered.pipelines import medical_dev
from layered.types import Example

DEV_PATH = Path(__file__).resolve().parent / "data" / "dev" / "support_dev.jsonl"

PROCEDURE_QUESTIONS = {
    "Initiate Refund": "the stove i got is broken, i want my money back",
    "Update Refund": "can i change the refund on my return to store credit instead",
    "Refund Status": "where is my refund? i returned the item two weeks ago", "Return Due to Stain": "the shirt came with a stain on it, how do i return it",
    "Return Due to Color": "the jacket color is not what i ordered, can i send it back",
    "Return Due to Size": "these boots are too small, how do i return them",
    "Status Mystery Fee": "there is a fee on my bill i dont recognise", "Status Delivery Time": "when will my order arrive",
    "Status Payment Method": "which card did i pay with for my last order", "Status Quantity": "i ordered 3 but only got charged for 2, is that right",
    "Manage Upgrade": "can i upgrade my shipping to express on my order", "Manage Downgrade": "i want to downgrade my order to the cheaper version",
    "Manage Create": "how do i place a new order over the phone", "Manage Cancel": "please cancel my order",
    "Recover Username": "i forgot my username", "Recover Password": "i forgot my password and cant log in",
    "Reset Two-Factor Auth": "i lost my phone and cant get the two factor code", "Invalid Credit Card": "the site says my credit card is invalid",
    "Cart Not Updating": "my cart wont update when i add items", "Search Not Working": "the search bar on your site doesnt work",
    "Website Too Slow": "your website is super slow today", "Status Service Added": "was the premium service added to my account",
    "Status Service Removed": "why was a service removed from my account", "Status Shipping Question": "what shipping options does my account have",
    "Status Credit Missing": "my store credit is missing from my account", "Manage Change Address": "i need to change the shipping address on my account",
    "Manage Change Name": "how do i change the name on my account", "Manage Change Phone": "i got a new phone number, please update it",
    "Manage Payment Method": "i want to change the card on file", "Bad Price Competitor": "another store sells this cheaper, can you match the price",
    "Bad Price Yesterday": "i bought it yesterday and today its on sale, can i get the difference",
    "Out-of-Stock General": "everything i want is out of stock, when will you restock",
    "Out-of-Stock One Item": "the item i want is out of stock, when is it back",
    "Promo Code Invalid": "my promo code doesnt work", "Promo Code Out of Date": "my coupon expired yesterday, can i still use it",
    "Mistimed Billing Already Returned": "i was billed for something i already returned",
    "Mistimed Billing Never Bought": "i was charged for something i never bought", "Shipping Status": "has my package shipped yet",
    "Manage Shipping": "can i change how my order is shipped", "Missing Item": "an item is missing from my package",
    "Shipping Cost": "how much does shipping cost", "Status Active": "is my subscription still active",
    "Status Due Amount": "how much do i owe on my subscription", "Status Due Date": "when is my subscription payment due",
    "Manage Pay Bill": "i want to pay my subscription bill", "Manage Extension": "can i get more time to pay my bill",
    "Manage Dispute Bill": "i want to dispute my subscription bill", "Boots FAQ": "do your boots run true to size",
    "Shirt FAQ": "can your shirts go in the dryer", "Jeans FAQ": "what fit are your jeans", "Jacket FAQ": "is your jacket waterproof",
    "Pricing FAQ": "do you have price adjustments", "Membership FAQ": "what do i get with a membership", "Timing FAQ": "how long does delivery usually take",
    "Policy FAQ": "what is your return policy",
}
PRODUCT_TEMPLATES = ("what is the warranty on the {p}?", "how do i set up the {p}", "what is the {p} made of")
OUT_OF_SCOPE = (
    "What is the warranty on the Contoso Electric Bike?", "do you sell iphones", "What is the capital of Australia?",
    "can you recommend a divorce lawyer", "how much ibuprofen can i give my 5 year old", "who won the super bowl last year",
    "is this mole on my arm cancer", "can you help me write my college essay", "what is the best stock to buy right now",
    "do you repair car engines", "how do i bake a chocolate cake", "what are the side effects of metformin",
    "how do i get a refund from amazon", "whats the weather tomorrow in seattle", "translate hello into french",
    "my landlord wont return my deposit, can i sue", "how tall is mount everest", "do you sell kayaks with electric motors",
    "book me a flight to denver", "what's a good name for my puppy",
)


def build(*, seed: int = 0) -> list[Example]:
    """The dev set (see module docstring): each example's metadata has ``split``, ``answerable``,
    ``doc_ids`` (the answering document; empty out of scope) and ``kind`` (policy, product, out-of-scope)."""
    from layered.pipelines.support import guideline_documents, manual_documents

    rng = random.Random(seed)
    guidelines = guideline_documents()
    flows = sorted({d.metadata["flow"] for d in guidelines})
    rng.shuffle(flows)
    tune_flows = set(flows[: len(flows) // 2])
    out: list[Example] = []
    for d in guidelines:
        question = PROCEDURE_QUESTIONS.get(d.metadata["subflow"])
        if question:
            out.append(Example(question=question, answer="", metadata={
                "split": "tune" if d.metadata["flow"] in tune_flows else "test", "answerable": True, "doc_ids": [d.id], "kind": "policy"}))
    manuals = sorted(manual_documents(), key=lambda d: d.id)
    rng.shuffle(manuals)
    for i, d in enumerate(manuals):
        for template in PRODUCT_TEMPLATES:
            out.append(Example(question=template.format(p=d.metadata["subject"]), answer="", metadata={
                "split": "tune" if i % 2 == 0 else "test", "answerable": True, "doc_ids": [d.id], "kind": "product"}))
    for i, question in enumerate(OUT_OF_SCOPE):
        out.append(Example(question=question, answer="", metadata={
            "split": "tune" if i % 2 == 0 else "test", "answerable": False, "doc_ids": [], "kind": "out-of-scope"}))
    return out



def write(examples: list[Example], path: Path = DEV_PATH) -> Path:
    """Write ``examples`` as JSONL, as :func:`layered.pipelines.medical_dev.write` does."""
    written: Path = medical_dev.write(examples, path)
    return written


def load(path: Path = DEV_PATH, *, split: str | None = None) -> list[Example]:
    """The shipped dev set (``split``: ``tune`` or ``test``; None: both)."""
    examples: list[Example] = medical_dev.load(path, split=split)
    return examples
