"""One configuration for every tuning run: the adapter method (:class:`~layered.adapters.config.AdapterConfig`)
plus the training schedule, validated, saved beside the adapter as JSON."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from layered.adapters.config import ALL_LINEAR, AdapterConfig
from layered.adapters.names import Method

__all__ = ["ALL_LINEAR", "Method", "TuneConfig", "short_lora"]


class TuneConfig(AdapterConfig):
    """Method hyper-parameters and the training schedule (unknown keys are errors)."""

    label: ClassVar[str] = "tuning config"

    # schedule
    learning_rate: float = Field(default=2e-4, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    eval_every: int = Field(default=20, ge=1)
    patience: int | None = Field(default=None, ge=1, description="early stopping after this many evals without improvement")
    # "auto": bf16 autocast when the CPU has native bf16. Measured here
    # (benchmarks/training_throughput.py): 2.1x the fp32 tokens/s, loss 1.211 vs 1.207 fp32.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    # Recompute activations in the backward pass instead of keeping them. Measured here
    # (benchmarks/training_memory.py, LoRA on 4 x ~1,200-token RAG prompts): peak memory
    # 11.2 -> 4.8 GB for 8% fewer tokens/s, same loss. "auto": on, except for prefix tuning
    # (its prefixes live in the attention cache, which recomputation does not reproduce).
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    # LoRA dropout masks: "fast" draws them from 16-bit slices of 64-bit random words
    # (layered.tuning.dropout; same distribution up to 2^-16 in p, a quarter of the draws),
    # "torch" uses torch's dropout, whose random stream the shipped adapters were trained with.
    dropout_masks: Literal["fast", "torch"] = "fast"
    checkpoint_every: int = Field(default=20, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _schedule_fits(self) -> "TuneConfig":
        if self.method == "prefix" and self.gradient_checkpointing is True:
            raise ValueError("prefix tuning cannot use gradient_checkpointing (its prefixes live in the attention cache)")
        return self

    @property
    def recomputes_activations(self) -> bool:
        """Whether training uses gradient checkpointing (``"auto"`` resolved)."""
        if self.gradient_checkpointing == "auto":
            return self.method != "prefix"
        return bool(self.gradient_checkpointing)


def short_lora(steps: int) -> TuneConfig:
    """The short LoRA recipe of the bundled assistants: rank 16 (alpha 32) on every linear
    layer of a Llama block, learning rate 1e-3, batch 4, ``steps`` optimizer steps, validated
    half way and at the end, one checkpoint at the end."""
    return TuneConfig(rank=16, alpha=32, learning_rate=1e-3, max_steps=steps, batch_size=4, eval_every=max(steps // 2, 1),
                      checkpoint_every=steps, target_modules=list(ALL_LINEAR))
