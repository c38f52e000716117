"""Crash-safe training checkpoints: safetensors + JSON, atomic, newest complete one wins.

A checkpoint folder holds the trainable weights, the optimizer's tensors (safetensors), and
the optimizer hyper-parameters, scheduler position, RNG states and loop position (JSON). It
is written with :func:`layered.artifacts.save_folder_atomically`, so its manifest is the
completion marker: a folder without a valid manifest (a kill -9 mid-save) is never picked up.
No pickle: ``torch.load`` is never used.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Sequence

from layered.artifacts import ArtifactError, atomic_write_json, read_json, save_folder_atomically, verify_manifest

PREFIX = "step-"


def _optimizer_tensors(optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(
    root: Path, *, step: int, model: Any, optimizer: Any, scheduler: Any, loop: dict[str, Any], keep: int,
    rng_states: Sequence[Any] | None = None,
) -> Path:
    """Write ``root/step-NNNNNN`` atomically, then delete all but the newest ``keep``.

    ``rng_states``: every data-parallel rank's torch random state, in rank order (rank 0's
    is this process's); each rank resumes with its own.
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from layered.adapters.methods import trainable_state

    def write(folder: Path) -> None:
        save_file(trainable_state(model), str(folder / "trainable.safetensors"))
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors or {"_empty": torch.zeros(1)}, str(folder / "optimizer.safetensors"))
        ranks = {f"torch_rng.{r}": state for r, state in enumerate(rng_states or []) if r > 0}
        save_file({"torch_rng": torch.get_rng_state(), **ranks}, str(folder / "rng.safetensors"))
        np_state: Any = np.random.get_state()  # the legacy tuple
        atomic_write_json(folder / "state.json", {
            "step": step, "loop": loop, "optimizer": meta, "scheduler": scheduler.state_dict(),
            "python_rng": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        })

    path = save_folder_atomically(root / f"{PREFIX}{step:06d}", write)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders whose manifest verifies, oldest first."""
    out = []
    for folder in sorted(root.glob(f"{PREFIX}*")):
        try:
            verify_manifest(folder)
        except ArtifactError:
            continue
        out.append(folder)
    return out


def load_checkpoint(folder: Path, *, model: Any, optimizer: Any, scheduler: Any, rank: int = 0) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNGs (``rank``'s torch state) from ``folder``; returns the loop state."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    state = read_json(folder / "state.json")
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ArtifactError(f"{folder}: checkpoint has weights the model lacks ({missing[0]}); was it made with another method?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict[str, Any] = {"state": {}, "param_groups": state["optimizer"]["param_groups"]}
    for key, value in tensors.items():
        if key == "_empty":
            continue
        idx, slot = key.split(".", 1)
        opt_state["state"].setdefault(int(idx), {})[slot] = value
    for key, value in state["optimizer"]["scalars"].items():
        idx, slot = key.split(".", 1)
        opt_state["state"].setdefault(int(idx), {})[slot] = value
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(folder / "rng.safetensors"))
    if rank and f"torch_rng.{rank}" not in rng:
        raise ArtifactError(f"{folder} holds no random state for rank {rank}; resume with the number of processes that wrote it")
    torch.set_rng_state(rng[f"torch_rng.{rank}" if rank else "torch_rng"])
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy_rng"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    return dict(state["loop"])
