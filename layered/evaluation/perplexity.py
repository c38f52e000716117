"""The forgetting check: perplexity of a causal LM on held-out general text.

Fine-tuning on a narrow task can erode a model's general language ability. ``fit`` reports
the perplexity of the base and the tuned model on a shipped public-domain sample
(``data/general_text.txt``, see its README): a large rise means the adapter forgot more than
it should (lower the learning rate or steps, or the LoRA rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from layered.errors import InputError


def general_text() -> str:
    """The shipped public-domain sample (about 20 kB of English narrative)."""
    return resources.files("layered.evaluation").joinpath("data/general_text.txt").read_text(encoding="utf-8")


def perplexity(model: Any, tokenizer: Any, text: str, *, max_tokens: int = 1024, window: int = 256) -> float:
    """exp(mean next-token loss) over the first ``max_tokens`` tokens of ``text``.

    The text is scored in consecutive ``window``-token pieces (no overlap), so the result
    does not depend on the model's context length; deterministic, no gradients.
    """
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0][:max_tokens]
    if len(ids) < 2:
        raise InputError("perplexity needs a text of at least two tokens")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            piece = ids[start:start + window + 1].unsqueeze(0).to(device)
            if piece.shape[1] < 2:
                break
            logits = model(input_ids=piece[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], piece[0, 1:], reduction="sum")
            total, count = total + float(loss), count + piece.shape[1] - 1
    model.train(was_training)
    return float(torch.exp(torch.tensor(total / count)))


@dataclass(frozen=True)
class ForgettingReport:
    """Perplexity on general text before and after tuning."""

    base: float
    tuned: float

    @property
    def change(self) -> float:
        """Relative change of the tuned model's perplexity (0.05 = 5% higher than the base)."""
        return self.tuned / self.base - 1.0

    def __str__(self) -> str:
        return f"perplexity on general text: base {self.base:.2f} -> tuned {self.tuned:.2f} ({self.change:+.1%})"
