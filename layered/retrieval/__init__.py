"""Retrieval: loaders, chunkers, embedders, vector stores, BM25, hybrid search and reranking."""
