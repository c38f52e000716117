"""A customer-support assistant with a routed adapter (run: .venv/bin/python examples/support_assistant.py).

Knowledge: the Contoso product manuals and the ABCD agent guidelines. Tone: the "policy" LoRA
adapter shipped with layered (tuned on Bitext support answers; recipe and report in
pipelines/data/adapters/support/), served by llama.cpp. The index is cached with
`layered demo support`'s pipeline.
A keyword router sends account/order/refund questions to the adapter and the guidelines,
product questions to the base model and the manuals. Bitext answers use {{Slot}} placeholders;
`support.ask` fills the ones the request gives.
"""

from layered.models import cache_dir
from layered.pipelines import support

cache = cache_dir() / "demo-support"
pipe, reused = support.load_or_build(cache, progress=True)
pipe = pipe.serve_with("llamacpp", adapter_dir=cache.with_name(cache.name + ".lora"))  # same answers, ~4x faster
print(f"{'reused the cached' if reused else 'indexed the'} support pipeline; adapters: {list(pipe.generator.adapters)}\n")

questions = [
    ("What is the warranty on the TrailMaster X4 Tent?", {}),
    ("I want to cancel order 4417, what should I do?", {"Order Number": "4417"}),
]
for question, slots in questions:
    answer = support.ask(pipe, question, **slots)
    scope = support.SCOPES[answer.metadata.get("adapter") or "base"]
    print(f"Q: {question}\n   routed to adapter {answer.metadata.get('adapter') or 'base'}, searching the {scope} documents")
    print(f"A: {answer.text}")
    for source in answer.sources:
        cited = "*" if source in answer.citations else " "
        print(f"  {cited}[{source.number}] {source.doc_id} (score {source.score:.2f})")
    print()

# Per request, any adapter can be asked for by name ("base" = the model without adapters).
print("Same question, base model:", pipe.ask("How do I get a refund?", adapter="base").text)
