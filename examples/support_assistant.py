"""A customer-support assistant with a routed adapter (run: .venv/bin/python examples/support_assistant.py [STEPS]).

Knowledge: the Contoso product manuals and the ABCD agent guidelines. Tone: a "policy" LoRA
adapter tuned on Bitext support answers, trained on first run (STEPS optimizer steps,
default 40: a few minutes on 2 CPU cores) and cached with `layered demo support`'s pipeline.
A keyword router sends account/order/refund questions to the adapter and the guidelines,
product questions to the base model and the manuals. Bitext answers use {{Slot}} placeholders;
`support.ask` fills the ones the request gives.
"""

import sys

from layered.models import cache_dir
from layered.pipelines import support

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
pipe, reused = support.load_or_build(cache_dir() / "demo-support", steps=steps, progress=True)
print(f"{'reused the cached' if reused else 'built and tuned the'} support pipeline; adapters: {list(pipe.generator.adapters)}\n")

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
