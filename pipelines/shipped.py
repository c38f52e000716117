"""Adapters shipped inside the package, each with its recipe, data, training report and hashes.

A shipped adapter is a folder under ``pipelines/data/adapters/NAME/``:

* ``adapter.safetensors``: the LoRA weights (no pickle);
* ``recipe.toml``: the :class:`~layered.tuning.config.TuneConfig` it was trained with plus a
  ``data`` key naming ``train.jsonl``, the exact examples (so ``layered tune recipe.toml
  --pipeline NAME`` retrains it);
* ``metrics.jsonl`` and ``loss.png``: the training run as the trainer wrote them;
* ``report.json``: data sha256, base model and package versions, layered version, steps,
  validation losses, wall time;
* ``manifest.json``: the sha256 of every file above, checked before the weights are used.

:func:`write` makes such a folder from a finished run (maintainers, once); :class:`ShippedAdapter`
reads and verifies it (every user, at load).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from layered.artifacts import atomic_write_bytes, atomic_write_json, sha256_file
from layered.errors import ArtifactError

ROOT = Path(__file__).resolve().parent / "data" / "adapters"
FILES = ("adapter.safetensors", "recipe.toml", "train.jsonl", "metrics.jsonl", "loss.png", "report.json")


@dataclass(frozen=True)
class ShippedAdapter:
    """One shipped adapter folder (see module docstring)."""

    folder: Path

    @classmethod
    def named(cls, name: str) -> "ShippedAdapter":
        return cls(ROOT / name)

    @property
    def weights(self) -> Path:
        return self.folder / "adapter.safetensors"

    @property
    def data(self) -> Path:
        return self.folder / "train.jsonl"

    def verify(self) -> "ShippedAdapter":
        """Check every file against ``manifest.json``; :class:`ArtifactError` names the first mismatch."""
        manifest = self.folder / "manifest.json"
        if not manifest.is_file():
            raise ArtifactError(f"{self.folder} has no manifest.json: the shipped adapter is missing or incomplete; reinstall layered")
        expected = json.loads(manifest.read_text(encoding="utf-8"))
        for name in FILES:
            path = self.folder / name
            if not path.is_file() or sha256_file(path) != expected.get(name):
                raise ArtifactError(f"{path} does not match its sha256 in {manifest}; reinstall layered")
        return self

    def recipe(self) -> dict[str, Any]:
        """The recipe's tuning options (the ``data`` key removed)."""
        import tomllib

        options = tomllib.loads((self.folder / "recipe.toml").read_text(encoding="utf-8"))
        options.pop("data", None)
        return options

    def config(self) -> dict[str, Any]:
        """The recipe as a validated TuneConfig dump (what the generator's adapter slot stores)."""
        from layered.tuning.config import TuneConfig

        return TuneConfig(**self.recipe()).model_dump()

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads((self.folder / "report.json").read_text(encoding="utf-8"))
        return report

    def install(self, generator: Any, name: str, *, default: bool = True) -> None:
        """Verify the folder and add its weights to a transformers generator as adapter ``name``."""
        self.verify()
        generator.add_adapter(name, self.config(), self.weights, default=default)


def recipe_toml(options: dict[str, Any], *, comment: str) -> str:
    """A TuneConfig recipe as TOML (scalars and lists of strings only), ``data = "train.jsonl"`` first."""
    lines = [f"# {line}" for line in comment.splitlines()] + ['data = "train.jsonl"']
    for key, value in options.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value!r}")
        elif isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(json.dumps(v) for v in value)}]")
    return "\n".join(lines) + "\n"


def write_inputs(folder: Path, *, options: dict[str, Any], examples: Sequence[Any], comment: str) -> Path:
    """Write a new adapter's recipe and training data; returns the recipe's path (train it with
    :func:`layered.tuning.fit.read_recipe` + ``Pipeline.fit``, as ``layered tune`` does)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(json.dumps({"question": e.question, "answer": e.answer}, ensure_ascii=False) + "\n" for e in examples)
    atomic_write_bytes(folder / "train.jsonl", rows.encode())
    atomic_write_bytes(folder / "recipe.toml", recipe_toml(options, comment=comment).encode())
    return folder / "recipe.toml"


def write_outputs(folder: Path, *, generator: Any, adapter: str, run_dir: Path, report: Any, extra: dict[str, Any] | None = None) -> ShippedAdapter:
    """Write the trained weights, the run's metrics and loss curve, the report and the manifest."""
    import layered
    from layered import models

    from safetensors.torch import save_file

    weights = {k: v.detach().to("cpu").contiguous() for k, v in generator.adapter_weights(adapter).items()}
    save_file(weights, str(folder / "adapter.safetensors"))
    for name in ("metrics.jsonl", "loss.png"):
        shutil.copyfile(run_dir / name, folder / name)
    base = generator.model_name
    forgetting = getattr(report, "forgetting", None)
    atomic_write_json(folder / "report.json", {
        "base_model": base, "base_package_version": models.PACKAGED[base].version() if base in models.PACKAGED else None,
        "layered_version": layered.__version__, "data_sha256": sha256_file(folder / "train.jsonl"),
        "steps": report.steps, "seconds": round(report.seconds, 1), "tokens_per_second": round(report.tokens_per_second, 1),
        "train_loss": report.train_loss, "val_losses": [[s, v] for s, v in report.val_losses],
        "general_text_perplexity": None if forgetting is None else {"base": forgetting.base, "tuned": forgetting.tuned},
        **(extra or {}),
    })
    atomic_write_json(folder / "manifest.json", {name: sha256_file(folder / name) for name in FILES})
    return ShippedAdapter(folder).verify()
