"""Cheaper LoRA dropout masks for training.

PEFT's LoRA applies ``torch.nn.Dropout`` to the input of every adapted projection: with LoRA on
all seven projections of a Llama block that is a fresh mask per projection, per layer, drawn
again when checkpointed activations are recomputed. On CPU, torch draws one random number per
element for it (``aten::bernoulli_``: 14% of a LoRA training step on RAG rows here).

:func:`fast_lora_dropout` swaps those modules, for the length of a training run, for
:class:`FastDropout`, which cuts four 16-bit uniform draws out of each 64-bit random word: the
same inverted dropout (each element kept with probability ``1 - p``, ``p`` rounded to a multiple
of 2^-16, survivors scaled by ``1 / (1 - p)``), from a quarter of the draws. The masks come from
torch's generator, so seeding, checkpoint recomputation (which replays the generator) and
resumed runs behave as with ``nn.Dropout``; the random stream differs, so a run with these
masks does not repeat a run with torch's step for step (``TuneConfig.dropout_masks`` picks).
The original modules are put back when training ends, so a saved or served model is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator


@functools.cache
def _fast_dropout_type() -> type:
    import torch

    class FastDropout(torch.nn.Module):
        """Inverted dropout with masks from 16-bit slices of 64-bit random words."""

        def __init__(self, p: float) -> None:
            super().__init__()
            if not 0 <= p < 1:
                raise ValueError(f"dropout probability must be in [0, 1), got {p}")
            self.p = p
            self.threshold = -32768 + round(p * 65536)  # int16 draws below it are dropped
            self.scale = 1.0 / (1.0 - (self.threshold + 32768) / 65536)

        def forward(self, x: Any) -> Any:
            if not self.training or self.threshold == -32768:
                return x
            n = x.numel()
            words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)  # every bit uniform
            keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
            return x * keep * self.scale  # bool and python float keep x's dtype

        def extra_repr(self) -> str:
            return f"p={self.p}"

    return FastDropout


def FastDropout(p: float) -> Any:  # named as the class it builds; built on first use so importing layered needs no torch
    """A :class:`torch.nn.Module` applying inverted dropout with probability ``p`` (see module docstring)."""
    return _fast_dropout_type()(p)


@contextlib.contextmanager
def fast_lora_dropout(model: Any, enabled: bool = True) -> Iterator[int]:
    """Within the block, every ``nn.Dropout`` of ``model``'s LoRA layers (PEFT's ``lora_dropout``)
    is a :class:`FastDropout` of the same probability; yields how many were swapped. The original
    modules are restored on exit, however the block ends."""
    import torch

    swapped: list[tuple[Any, str, Any]] = []
    if enabled:
        for module in model.modules():
            holder = getattr(module, "lora_dropout", None)
            if isinstance(holder, torch.nn.ModuleDict):
                for name, drop in list(holder.items()):
                    if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                        holder[name] = FastDropout(drop.p).train(drop.training)
                        swapped.append((holder, name, drop))
    try:
        yield len(swapped)
    finally:
        for holder, name, drop in swapped:
            holder[name] = drop
