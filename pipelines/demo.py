"""The bundled assistants' demo (``layered demo NAME``): the cached pipeline, then answers.

:func:`prepare` reuses the pipeline cached by an earlier run (or indexes the bundled data once),
switches to the requested backend and loads the model; :func:`answers` answers the sample
questions (or the caller's), one at a time, so a caller can print each as it is ready.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from layered.pipelines import assistant, cache_folder
from layered.types import Answer

log = logging.getLogger(__name__)

WHAT_IS_INDEXED = {"medical": "all 16,407 MedQuAD pages", "support": "the product manuals and agent guidelines"}


def prepare(
    name: str, *, cache_dir: str | Path | None = None, rebuild: bool = False, backend: str = "llamacpp",
    max_new_tokens: int | None = None, progress: bool = False,
) -> Any:
    """The assistant ``name``'s pipeline with its shipped adapters, warmed up on ``backend``.

    ``max_new_tokens`` (None: the assistant's own) is checked by the generator against its window.
    """
    module = assistant(name)
    cache = cache_folder(name, cache_dir)
    t = time.perf_counter()
    if rebuild or not cache.exists():
        log.info("first run: indexing %s (later runs reuse the saved index)", WHAT_IS_INDEXED[name])
    pipe, reused = module.load_or_build(cache, rebuild=rebuild, progress=progress)
    log.info("%s %s: %d passages (%.1fs)", "reusing the saved index in" if reused else "indexed and saved to", cache,
             len(pipe.retriever), time.perf_counter() - t)
    log.info("data: %s", module.ATTRIBUTION)
    if backend == "llamacpp":
        pipe = pipe.serve_with("llamacpp", adapter_dir=cache.with_name(cache.name + ".lora"))
    if max_new_tokens is not None:
        pipe.generator.max_new_tokens = max_new_tokens  # validated by the generator
    pipe.warm_up()
    log.info("ready in %.1fs (%s backend, adapters: %s)", time.perf_counter() - t, backend,
             ", ".join(pipe.generator.adapters) or "none")
    return pipe


def answers(name: str, pipe: Any, questions: Sequence[str] = (), *, audience: str = "patient") -> Iterator[tuple[str, Answer]]:
    """``(question, answer)`` for each of ``questions`` (default: the assistant's sample questions).

    Medical answers are written for ``audience``; support questions are routed to the policy
    adapter or the manuals, and the sample questions' ``{{slot}}`` values are filled in.
    """
    module = assistant(name)
    if name == "medical":
        for question in questions or module.DEMO_QUESTIONS:
            yield question, pipe.ask(question, audience=audience)
        return
    asked = [(q, {}) for q in questions] if questions else list(module.DEMO_QUESTIONS)
    for question, slots in asked:
        question = module.fill_slots(question, slots)
        yield question, module.ask(pipe, question, **slots)
