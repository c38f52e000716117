"""The adapter-method hyper-parameters, validated (unknown keys are errors).

:class:`layered.tuning.config.TuneConfig` extends :class:`AdapterConfig` with the training
schedule; a saved adapter's config is a TuneConfig dump, of which serving reads only the
method part (:meth:`AdapterConfig.of`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from pydantic import Field, model_validator

from layered.adapters.names import Method
from layered.strict import StrictModel

#: Every linear projection of a Llama block (LoRA on all of them).
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]


class AdapterConfig(StrictModel):
    """Which method, and its hyper-parameters."""

    label: ClassVar[str] = "adapter config"

    method: Method = "lora"
    # LoRA / DoRA
    rank: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    dora: bool = False
    # prefix tuning
    virtual_tokens: int = Field(default=16, ge=1)
    # bottleneck adapters: width of the down-projection
    bottleneck: int = Field(default=64, ge=1)
    # selective tuning: biases/norms only, or additionally the top-k decoder layers
    top_layers: int = Field(default=0, ge=0)
    # the new adapter's initial weights (training also orders its batches by it)
    seed: int = 0

    @model_validator(mode="after")
    def _lora_has_targets(self) -> "AdapterConfig":
        if self.method == "lora" and not self.target_modules:
            raise ValueError("LoRA needs target_modules")
        return self

    @classmethod
    def of(cls, dump: Mapping[str, Any]) -> "AdapterConfig":
        """The method part of a saved config ``dump`` (a TuneConfig dump: its schedule keys are
        not the adapter's and are left out), validated."""
        return AdapterConfig(**{k: v for k, v in dump.items() if k in AdapterConfig.model_fields})
