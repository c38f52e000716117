"""A grounded medical QA assistant in a few lines (run: .venv/bin/python examples/medical_assistant.py).

Indexes the bundled MedQuAD sample with the embedded defaults (MiniLM + FAISS), answers with
SmolLM2-135M-Instruct, shows the passages each answer drew on, and saves/reloads the whole
pipeline. Answers are information, not medical advice.
"""

from pathlib import Path

from layered import Pipeline

HERE = Path(__file__).parent
SAVED = HERE / "medical-assistant"

if SAVED.exists():
    pipe = Pipeline.load(SAVED)  # checks the sha256 of every saved file first
else:
    pipe = Pipeline.from_defaults(HERE / "data" / "medquad_sample.jsonl", max_new_tokens=120, progress=True)
    pipe.save(SAVED)

for question in ["What are the treatments for Graves disease?", "What are the symptoms of shingles?"]:
    answer = pipe.ask(question)
    print(f"Q: {question}\nA: {answer.text}")
    for source in answer.sources:
        cited = "*" if source in answer.citations else " "
        print(f"  {cited}[{source.number}] {source.source} (score {source.score:.2f})")
    print()
