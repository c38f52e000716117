"""layered and LangChain together: a Pipeline as a Runnable, retrievers both ways.

    .venv/bin/pip install "layered[langchain]"  &&  .venv/bin/python examples/langchain_interop.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore

from layered import Pipeline
from layered.connectors.langchain import LangChainRetriever, LayeredEmbeddings, LayeredRetriever, as_runnable, to_langchain_document
from layered.generation.transformers_generator import TransformersGenerator
from layered.retrieval.embedders import SentenceTransformerEmbedder
from layered.retrieval.loaders import load_documents

DATA = Path(__file__).resolve().parent / "data" / "medquad_sample.jsonl"
docs = load_documents(DATA)[:200]

# 1. A layered pipeline inside an LCEL chain (invoke, batch, stream and async all work).
pipe = Pipeline.from_defaults(corpus=docs, max_new_tokens=60)
chain = RunnableLambda(lambda row: f"{row['topic']}: what are the symptoms?") | as_runnable(pipe)
print(chain.invoke({"topic": "Graves disease"}))


async def stream_async() -> None:
    async for piece in chain.astream({"topic": "asthma"}):
        print(piece, end="", flush=True)
    print()


asyncio.run(stream_async())

# 2. layered retrieval (hybrid, access control) as a LangChain retriever.
for d in LayeredRetriever(pipeline=pipe, k=2).invoke("body lice treatment"):
    print(d.metadata["layered_source"], round(d.metadata["layered_score"], 3))

# 3. A LangChain vector store as the retriever of a layered pipeline, with layered's embedder.
store = InMemoryVectorStore(embedding=LayeredEmbeddings(SentenceTransformerEmbedder()))
store.add_documents([to_langchain_document(d) for d in docs])
lc_pipe = Pipeline(generator=TransformersGenerator(max_new_tokens=60), retriever=LangChainRetriever(store.as_retriever()))
answer = lc_pipe.ask("How are body lice treated?")
print(answer.text, [s.source for s in answer.sources])
