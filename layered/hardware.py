"""What this machine's hardware can do fast (checked lazily; imports torch only when called)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether the CPU runs bfloat16 matrix math natively (AVX-512 BF16 / AMX via oneDNN)."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
