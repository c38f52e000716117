"""Base for pydantic configs: unknown keys are errors, and every validation error is one line."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from layered.errors import ConfigError


class StrictModel(BaseModel):
    """``extra="forbid"``; a validation error becomes ``ConfigError("invalid <label>: <field>: <why>")``."""

    model_config = ConfigDict(extra="forbid")
    label: ClassVar[str] = "config"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err.get("loc", ())) or self.label
            raise ConfigError(f"invalid {self.label}: {where}: {err['msg']}") from None
