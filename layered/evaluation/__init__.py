"""Evaluation, in two layers.

* Metrics (leaves, importing no other part of layered that runs anything):
  :mod:`~layered.evaluation.metrics` (token F1, ROUGE-L, recall/MRR/nDCG@k) and
  :mod:`~layered.evaluation.perplexity` (the forgetting check).
* Drivers above them: :mod:`~layered.evaluation.retrieval` (retrievers on BEIR data),
  :mod:`~layered.evaluation.comparison` (prompt-only vs few-shot vs RAG vs RAG + adapter on
  one pipeline) and :mod:`~layered.evaluation.workflow` (the ``layered compare`` workflow:
  task, adapter, comparison, report files).
"""
