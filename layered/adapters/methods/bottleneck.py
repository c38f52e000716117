"""Bottleneck adapters (Houlsby et al., 2019): down-projection, non-linearity, up-projection
and a residual, inserted after the attention and MLP block of every decoder layer.

The up-projection starts at zero, so a fresh adapter leaves the model's outputs unchanged;
only adapter weights train.
"""

from __future__ import annotations

from typing import Any

from layered.errors import ConfigError
from layered.adapters.config import AdapterConfig


def _adapter_block(hidden: int, bottleneck: int) -> Any:
    import torch.nn as nn

    class Bottleneck(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Linear(hidden, bottleneck)
            self.act = nn.GELU()
            self.up = nn.Linear(bottleneck, hidden)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

        def forward(self, h: Any) -> Any:
            return h + self.up(self.act(self.down(h)))

    return Bottleneck()


def _wrap(block: Any, adapter: Any) -> Any:
    import torch.nn as nn

    class WithAdapter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block, self.adapter = block, adapter

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            out = self.block(*args, **kwargs)
            if isinstance(out, tuple):  # attention returns (hidden, weights, ...)
                return (self.adapter(out[0]), *out[1:])
            return self.adapter(out)

    return WithAdapter()


def apply(model: Any, config: AdapterConfig) -> Any:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ConfigError("bottleneck adapters need a decoder with model.layers (Llama-style)")
    for param in model.parameters():
        param.requires_grad = False
    hidden = int(model.config.hidden_size)
    for layer in layers:
        layer.self_attn = _wrap(layer.self_attn, _adapter_block(hidden, config.bottleneck))
        layer.mlp = _wrap(layer.mlp, _adapter_block(hidden, config.bottleneck))
    return model
