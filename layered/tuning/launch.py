"""Data-parallel training over several processes, launched by torchrun.

``layered tune ... --nproc N`` (or :func:`tune` from Python) starts N copies of the tune
command under ``torchrun``; any script that calls :meth:`layered.Pipeline.fit` or
:func:`layered.tuning.trainer.train` does the same when started by ``torchrun`` itself (several
GPUs, several nodes). Each process ("rank") computes the gradient of its share of every
global batch, the gradients are summed across ranks (one all-reduce per optimizer step,
gloo on CPU, NCCL on GPUs), and every rank then takes the same optimizer step, so the
weights stay identical. The global batch is ``batch_size`` examples whatever the number of
processes: N processes train the same model as one process with the same config, faster.

Rank 0 alone writes checkpoints, metrics and the tuned pipeline; checkpoints carry every
rank's random state, so a run killed at any rank resumes exactly (``--resume``) with the same
number of processes. Across nodes, the run folder must be on a filesystem they all see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from layered.errors import ConfigError

#: Size of one all-reduce of gradients (elements): large enough for few messages, small
#: enough not to double the memory of full fine-tuning.
BUCKET = 8 * 1024 * 1024
#: The ``layered`` command line each rank of :func:`run_cli` runs (JSON list).
ARGV_ENV = "LAYERED_TORCHRUN_ARGV"


def launched() -> bool:
    """Whether this process was started by torchrun for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class DataParallel:
    """This process's place in a torchrun launch, and the collectives the trainer needs."""

    rank: int
    size: int
    local_rank: int
    device: Any

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Sequence[int]) -> list[int]:
        """This rank's rows of one global batch (strided, so shares differ by at most one row)."""
        return list(batch[self.rank::self.size])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def sum_gradients(self, params: Sequence[Any]) -> None:
        """Sum the gradients of ``params`` over all ranks, in place (a missing gradient counts as zero)."""
        import torch
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        start = 0
        while start < len(params):
            bucket: list[Any] = []
            n = 0
            while start < len(params) and (not bucket or n + params[start].numel() <= BUCKET):
                bucket.append(params[start])
                n += params[start].numel()
                start += 1
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()

    def broadcast_parameters(self, params: Sequence[Any]) -> None:
        """Give every rank rank 0's values of ``params`` (the starting weights)."""
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a small picklable value, sent only between our own processes)."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rng(self) -> list[Any]:
        """Every rank's torch CPU random state, in rank order (on every rank)."""
        import torch
        import torch.distributed as dist

        mine = torch.get_rng_state()
        if self.device.type != "cpu":
            mine = mine.to(self.device)
        states = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(states, mine)
        return [s.cpu() for s in states]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


_GROUP: DataParallel | None = None


def data_parallel() -> DataParallel | None:
    """The process group of this torchrun launch (joined on first call), or None in a single process.

    NCCL and this rank's GPU when CUDA is available, else gloo on CPU.
    """
    global _GROUP
    if _GROUP is not None or not launched():
        return _GROUP
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _GROUP = DataParallel(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, device=device)
    return _GROUP


def finish() -> None:
    """Leave the process group (at the end of a command), if this process joined one."""
    global _GROUP
    if _GROUP is not None:
        import torch.distributed as dist

        dist.destroy_process_group()
        _GROUP = None


def torchrun_command(args: Sequence[str], *, nproc: int, module: str | None = "layered.cli") -> list[str]:
    """The command that runs ``python -m module args`` (or the script ``args[0]``) in ``nproc``
    processes on this machine, through torchrun (``torch.distributed.run``)."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    target = ["-m", module] if module else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *target, *args]


def run_cli(argv: Sequence[str], *, nproc: int) -> int:
    """Run ``layered ARGV`` in ``nproc`` processes under torchrun; returns the exit status (non-zero when any rank failed).

    The command line travels in an environment variable, not torchrun's own arguments:
    torchrun's parser would take an option such as ``--nproc`` for an abbreviation of its
    ``--nproc-per-node``.
    """
    env = {**os.environ, ARGV_ENV: json.dumps(list(argv))}
    return subprocess.run(torchrun_command([], nproc=nproc, module=__name__), env=env, check=False).returncode


def tune(
    data: str | Path,
    *,
    pipeline: str | Path,
    nproc: int,
    out: str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    options: Sequence[str] = (),
) -> Path:
    """``layered tune DATA --pipeline PIPELINE --nproc N`` from Python: fine-tune in ``nproc``
    data-parallel processes and return the folder of the tuned pipeline.

    ``data`` is a data file or a ``.toml``/``.json`` recipe (TuneConfig fields plus ``data``);
    ``options`` are further ``layered tune`` flags (``["--method", "ia3", "--steps", "40"]``).
    """
    from layered.errors import LayeredError

    args = ["tune", str(data), "--pipeline", str(pipeline), "--nproc", str(nproc), *options]
    if out is not None:
        args += ["--out", str(out)]
    if run_dir is not None:
        args += ["--run-dir", str(run_dir)]
    if resume:
        args.append("--resume")
    status = run_cli(args, nproc=nproc)
    if status != 0:
        raise LayeredError(f"data-parallel tuning in {nproc} processes failed (exit status {status}); see the ranks' errors above")
    return Path(out or pipeline)


if __name__ == "__main__":  # one rank of run_cli
    from layered.cli import main

    sys.exit(main(json.loads(os.environ[ARGV_ENV])))
