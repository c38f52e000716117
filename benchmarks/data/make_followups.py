"""Writes ``followups.jsonl``: hand-written two-turn conversations on MedQuAD topics.

Each conversation is a first question about a topic, a plausible first answer (the first
sentence of that topic's MedQuAD overview page), and a follow-up that does not name the topic.
The gold pages are every bundled MedQuAD page on that topic (``focus``) of the follow-up's
kind (``qtype``): the pages that answer it. Rows of ``"kind": "new-topic"`` are topic switches
(the second question names a new topic), a check that history does not hurt standalone questions.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
KB = HERE.parents[1] / "pipelines" / "data" / "medquad.jsonl.gz"

# (first question, MedQuAD focus, follow-up, the qtype that answers the follow-up)
CONVERSATIONS = [
    ("What is Graves disease?", "Graves disease", "How is it treated?", "treatment"),
    ("My doctor says I have gout. What is that?", "gout", "What causes it?", "causes"),
    ("What are shingles?", "shingles", "Can it be prevented?", "prevention"),
    ("Tell me about psoriasis.", "psoriasis", "What are the treatments?", "treatment"),
    ("What is glaucoma?", "glaucoma", "What are the symptoms?", "symptoms"),
    ("What is osteoporosis?", "osteoporosis", "How do doctors diagnose it?", "exams and tests"),
    ("What is celiac disease?", "celiac disease", "Is it inherited?", "inheritance"),
    ("I keep reading about hemochromatosis. What is it?", "hemochromatosis", "What causes it?", "causes"),
    ("What is cystic fibrosis?", "cystic fibrosis", "Can it be passed down in families?", "inheritance"),
    ("What is Huntington disease?", "Huntington disease", "How is it diagnosed?", "exams and tests"),
    ("Can you tell me about Marfan syndrome?", "Marfan syndrome", "What are the signs of it?", "symptoms"),
    ("What is sickle cell disease?", "sickle cell disease", "Is there a treatment?", "treatment"),
    ("What is hemophilia?", "hemophilia", "How do you get it?", "causes"),
    ("What is rheumatoid arthritis?", "rheumatoid arthritis", "How is it treated?", "treatment"),
    ("What is Parkinson's disease?", "Parkinson's disease", "What are the early symptoms?", "symptoms"),
    ("What is Alzheimer's disease?", "Alzheimer's disease", "Can it be prevented?", "prevention"),
    ("What is anemia?", "anemia", "What causes it?", "causes"),
    ("What is high blood pressure?", "high blood pressure", "How can I prevent it?", "prevention"),
    ("What is heart failure?", "heart failure", "How is it diagnosed?", "exams and tests"),
    ("What is pneumonia?", "pneumonia", "What are the treatments for it?", "treatment"),
    ("What is Crohn's disease?", "Crohn's disease", "What are the symptoms?", "symptoms"),
    ("What is ulcerative colitis?", "ulcerative colitis", "Does it run in families?", "inheritance"),
    ("What is multiple sclerosis?", "multiple sclerosis", "What is the outlook for people who have it?", "outlook"),
    ("What is Down syndrome?", "Down syndrome", "What causes it?", "causes"),
    ("What is fragile X syndrome?", "fragile X syndrome", "How is it inherited?", "inheritance"),
    ("What is polycystic kidney disease?", "polycystic kidney disease", "What are the symptoms?", "symptoms"),
    ("What is dry eye?", "dry eye", "What causes this condition?", "causes"),
    ("What is hypothyroidism?", "hypothyroidism", "How is it treated?", "treatment"),
    ("What is Wilson disease?", "Wilson disease", "How is it treated?", "treatment"),
    ("What is narcolepsy?", "narcolepsy", "How do doctors test for it?", "exams and tests"),
    ("What is restless legs syndrome?", "restless legs syndrome", "What causes it?", "causes"),
    ("What is Bell's palsy?", "Bell's palsy", "Will I recover from it?", "outlook"),
    ("What is sarcoidosis?", "sarcoidosis", "What are the symptoms?", "symptoms"),
    ("What is insomnia?", "insomnia", "How is it treated?", "treatment"),
    ("What are hemorrhoids?", "hemorrhoids", "What causes them?", "causes"),
    ("What is cirrhosis?", "cirrhosis", "What are the symptoms?", "symptoms"),
    ("What is Klinefelter syndrome?", "Klinefelter syndrome", "Is it inherited?", "inheritance"),
    ("What is amyotrophic lateral sclerosis?", "amyotrophic lateral sclerosis", "What treatments are there?", "treatment"),
    ("What is myasthenia gravis?", "myasthenia gravis", "What is the outlook?", "outlook"),
    ("What is spinal muscular atrophy?", "spinal muscular atrophy", "Is there any treatment?", "treatment"),
]

# Topic switches: the second question names a new topic and needs no history at all; a
# history-aware query must not drag the old topic in. Reported apart from the follow-ups.
SWITCHES = [
    ("What is Graves disease?", "Graves disease", "What are the symptoms of glaucoma?", "glaucoma", "symptoms"),
    ("What is gout?", "gout", "How is psoriasis treated?", "psoriasis", "treatment"),
    ("What is asthma?", "asthma", "What causes hemophilia?", "hemophilia", "causes"),
    ("What is narcolepsy?", "narcolepsy", "Is cystic fibrosis inherited?", "cystic fibrosis", "inheritance"),
    ("What is cirrhosis?", "cirrhosis", "How is heart failure diagnosed?", "heart failure", "exams and tests"),
    ("What is insomnia?", "insomnia", "What are the treatments for Wilson disease?", "Wilson disease", "treatment"),
    ("What is anemia?", "anemia", "What causes Down syndrome?", "Down syndrome", "causes"),
    ("What is sarcoidosis?", "sarcoidosis", "What are the symptoms of Crohn's disease?", "Crohn's disease", "symptoms"),
    ("What is lupus?", "lupus", "How can I prevent high blood pressure?", "high blood pressure", "prevention"),
    ("What is migraine?", "migraine", "Is Marfan syndrome inherited?", "Marfan syndrome", "inheritance"),
]


def first_sentence(text: str, limit: int = 300) -> str:
    text = re.sub(r"^(Key Points\s*-\s*|What is .*?\?\s*)", "", text.strip())
    sentence = re.split(r"(?<=[.!?])\s+", text, maxsplit=1)[0]
    return sentence[:limit]


def main() -> None:
    pages: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    with gzip.open(KB, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            pages[row["focus"].lower()][row["qtype"]].append(row)
    out = []
    for first, focus, follow_up, qtype in CONVERSATIONS:
        topic = pages[focus.lower()]
        gold = [r["id"] for r in topic[qtype]]
        assert gold and topic["information"], (focus, qtype)
        answer = first_sentence(topic["information"][0]["answer"])
        out.append({"topic": focus, "qtype": qtype, "messages": [
            {"role": "user", "content": first}, {"role": "assistant", "content": answer},
            {"role": "user", "content": follow_up}], "gold": gold, "kind": "follow-up"})
    for first, focus, second, new_focus, qtype in SWITCHES:
        gold = [r["id"] for r in pages[new_focus.lower()][qtype]]
        assert gold and pages[focus.lower()]["information"], (new_focus, qtype)
        answer = first_sentence(pages[focus.lower()]["information"][0]["answer"])
        out.append({"topic": new_focus, "qtype": qtype, "messages": [
            {"role": "user", "content": first}, {"role": "assistant", "content": answer},
            {"role": "user", "content": second}], "gold": gold, "kind": "new-topic"})
    (HERE / "followups.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    print(f"wrote {len(out)} conversations to {HERE / 'followups.jsonl'}")


if __name__ == "__main__":
    main()
