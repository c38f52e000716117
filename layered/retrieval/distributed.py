"""Distributed ingestion: embed a corpus's chunks with Ray Data, write the index from the driver.

:class:`RayEmbedding` is an :data:`~layered.retrieval.dense.EmbedFunction` for
``DenseRetriever.add_documents(docs, embed=...)`` (and ``Pipeline.from_defaults`` /
``Pipeline.add_documents``). Loading, content-hash dedup, chunking and the store writes stay in
the calling process (the driver), exactly as on the single-process path, so chunk ids, texts,
metadata and hashes are the same; only the embedding moves. The texts are cut into the batches
:func:`~layered.retrieval.dense.embed_in_batches` would make (sorted by length, ``batch_size``
each); each batch is one row of a Ray dataset, ``Dataset.map_batches`` sends the rows to a fixed
pool of Ray actors (``ActorPoolStrategy``), each of which loads the embedder once, and the
vectors stream back to the driver. An actor embeds exactly the texts one process would embed
together, so the vectors are the ones the single-process path makes (this matters under bf16
autocast, where a text's vector moves by ~1e-3 with its batch's padding).

Resumable: with ``checkpoint_dir`` finished batches are written there as they arrive, in parts
(``part-*.npz``, each renamed into place whole), keyed by the sha256 of the batch's texts and
tied to the embedder's weights fingerprint. A run that was interrupted (Ctrl-C, ``kill -9``, a
lost node) and started again on the same corpus embeds only the batches that no part holds.
The store is still written only once every vector is in, so an interrupted run never leaves a
half-updated index. Remove the folder (:meth:`RayEmbedding.clear`) once the index is saved.

Local Ray (``address=None``) is started with ``workers`` CPUs, no dashboard and a small object
store, and shut down after the run; with ``address`` (``"ray://head:10001"`` or ``"auto"``)
the actors run on that cluster, whose nodes need ``layered`` (and the embedder's model)
installed. A Ray already initialised by the caller is used as it is and left running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from layered.errors import ArtifactError, ConfigError
from layered.protocols import Embedder

log = logging.getLogger(__name__)

RAY_MISSING = "distributed ingestion needs Ray, which is not installed: pip install 'layered[ray]'"
IDENTITY_FILE = "embedder.json"


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data), or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is the `data` extra of ray)
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def embedder_factory(embedder: Embedder) -> Callable[[], Embedder]:
    """How an actor builds its own copy of ``embedder`` (a model never travels in the object store).

    A packaged model is named (each node resolves its own install); an owned (fine-tuned) or
    user model is a folder path, which must exist on every node.
    """
    from layered.retrieval.embedders import SentenceTransformerEmbedder

    if isinstance(embedder, SentenceTransformerEmbedder):
        model = str(embedder.path) if embedder.owned else embedder.model
        return partial(SentenceTransformerEmbedder, model, batch_size=embedder.batch_size, device=embedder.device,
                       precision=embedder.precision, max_seq_length=embedder.max_seq_length)
    from_config, config = getattr(type(embedder), "from_config", None), getattr(embedder, "config", None)
    if callable(from_config) and callable(config):
        return partial(from_config, config())
    raise ConfigError(f"a {type(embedder).__name__} cannot be rebuilt on Ray workers (it has no config()/from_config())")


def embedder_identity(embedder: Embedder) -> str:
    """What made a vector: the weights fingerprint, else a digest of the embedder's config."""
    fingerprint = getattr(embedder, "fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    config = getattr(embedder, "config", None)
    if callable(config):
        return hashlib.sha256(json.dumps(config(), sort_keys=True, default=str).encode()).hexdigest()
    raise ConfigError(f"a {type(embedder).__name__} has neither a fingerprint nor a config(); its vectors cannot be checkpointed")


def batch_key(texts: Sequence[str]) -> bytes:
    """The checkpoint key of one embedding batch: sha256 over its texts, in order."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.digest()


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Row numbers of ``texts`` cut into batches exactly as :func:`~layered.retrieval.dense.embed_in_batches` cuts them."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


class _EmbedActor:
    """One Ray actor of the pool: builds the embedder once, then embeds batch after batch.

    A dataset row is one whole embedding batch (its row numbers and texts), so each ``embed``
    call gets exactly the texts one process would embed together, whatever Ray's block sizes.
    """

    def __init__(self, factory: Callable[[], Embedder], identity: str, threads: int) -> None:
        try:
            import torch

            torch.set_num_threads(max(1, threads))
        except ImportError:  # an embedder without torch (e.g. hashing)
            pass
        self.embedder = factory()
        warm_up = getattr(self.embedder, "warm_up", None)
        if callable(warm_up):
            warm_up()
        if embedder_identity(self.embedder) != identity:
            raise ArtifactError("a Ray worker loaded another embedder than the driver's (different weights); "
                                "install the same layered and model on every node")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, rows, vectors = [], [], []
        for batch_id, row_numbers, texts in zip(batch["batch"], batch["rows"], batch["texts"]):
            vectors.append(np.asarray(self.embedder.embed([str(t) for t in texts]), dtype=np.float32))
            rows.append(np.asarray(row_numbers, dtype=np.int64))
            ids.append(np.full(len(rows[-1]), batch_id, dtype=np.int64))
        return {"batch": np.concatenate(ids), "row": np.concatenate(rows), "vector": np.concatenate(vectors)}


def _actor_class(factory: Callable[[], Embedder], identity: str, threads: int) -> type:
    """``_EmbedActor`` with its arguments bound in (pickled with the class, not put in the object store)."""

    class EmbedActor(_EmbedActor):
        def __init__(self) -> None:
            super().__init__(factory, identity, threads)

    return EmbedActor


def _write_part(path: Path, keys: np.ndarray, sizes: np.ndarray, vectors: np.ndarray) -> None:
    """Write one checkpoint part whole: a temporary file, flushed, then renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, keys=keys, sizes=sizes, vectors=vectors)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoint:
    """Embedding batches already done, in ``folder/part-*.npz``, for one embedder identity.

    Kept per whole batch (keyed by :func:`batch_key`): a resumed run re-embeds a batch with the
    same texts as before, so its vectors are the ones an uninterrupted run makes.
    """

    def __init__(self, folder: str | Path, identity: str, dim: int, *, flush_rows: int = 4096) -> None:
        self.folder, self.identity, self.dim, self.flush_rows = Path(folder), identity, dim, flush_rows
        self._keys: list[bytes] = []
        self._vectors: list[np.ndarray] = []
        self._rows = 0

    def load(self) -> dict[bytes, np.ndarray]:
        """``{batch key: vectors}`` from every complete part; parts of another embedder are removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob("*.tmp"):  # a part being written when the run stopped
            leftover.unlink()
        meta = self.folder / IDENTITY_FILE
        saved = json.loads(meta.read_text()) if meta.is_file() else None
        if saved != {"embedder": self.identity, "dim": self.dim}:
            parts = sorted(self.folder.glob("part-*.npz"))
            if parts:
                log.warning("%s holds vectors of another embedder; discarding its %d parts", self.folder, len(parts))
            for part in parts:
                part.unlink()
            tmp = meta.with_name(meta.name + ".tmp")
            tmp.write_text(json.dumps({"embedder": self.identity, "dim": self.dim}))
            os.replace(tmp, meta)
            return {}
        found: dict[bytes, np.ndarray] = {}
        for part in sorted(self.folder.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as z:
                    keys, sizes, vectors = z["keys"], z["sizes"], z["vectors"]
            except (OSError, ValueError, KeyError) as e:
                log.warning("skipping unreadable checkpoint part %s (%s)", part, e)
                continue
            if keys.shape != (len(sizes), 32) or vectors.shape != (int(sizes.sum()), self.dim):
                log.warning("skipping checkpoint part %s: unexpected shapes", part)
                continue
            found.update(zip((bytes(k) for k in keys), np.split(vectors, np.cumsum(sizes)[:-1])))
        return found

    def add(self, key: bytes, vectors: np.ndarray) -> None:
        """One finished batch; written out with others once ``flush_rows`` vectors are waiting."""
        self._keys.append(key)
        self._vectors.append(np.asarray(vectors, dtype=np.float32))
        self._rows += len(vectors)
        if self._rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._keys:
            return
        keys = np.frombuffer(b"".join(self._keys), dtype=np.uint8).reshape(len(self._keys), 32)
        sizes = np.array([len(v) for v in self._vectors], dtype=np.int64)
        _write_part(self.folder / f"part-{uuid.uuid4().hex}.npz", keys, sizes, np.concatenate(self._vectors))
        self._keys, self._vectors, self._rows = [], [], 0


class RayEmbedding:
    """Embed chunk texts on Ray Data (see the module docstring); pass as ``embed=`` to ``add_documents``.

    ``workers``: actors in the pool (default: local Ray, this machine's CPUs; a cluster, its CPUs
    divided by ``cpus_per_worker``). ``checkpoint_dir``: where vectors are kept until the index
    is saved (None: not resumable). ``batch_size``: texts per ``embed`` call, cut from the
    length-sorted texts as in one process (default 64, the single-process batch).
    ``flush_rows``: vectors per checkpoint part. ``stats`` says what the last call reused from
    the checkpoint and embedded.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        address: str | None = None,
        checkpoint_dir: str | Path | None = None,
        batch_size: int = 64,
        cpus_per_worker: float = 1.0,
        batches_per_block: int = 16,
        flush_rows: int = 4096,
        object_store_mb: int = 256,
    ) -> None:
        for name, value in (("workers", workers if workers is not None else 1), ("batch_size", batch_size),
                            ("batches_per_block", batches_per_block), ("flush_rows", flush_rows), ("object_store_mb", object_store_mb)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if not cpus_per_worker > 0:
            raise ConfigError(f"cpus_per_worker must be positive, got {cpus_per_worker}")
        require_ray()
        self.workers, self.address = workers, address
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.batch_size, self.cpus_per_worker, self.flush_rows = batch_size, cpus_per_worker, flush_rows
        self.batches_per_block, self.object_store_mb = batches_per_block, object_store_mb
        self.stats: dict[str, int] = {"texts": 0, "reused": 0, "embedded": 0}

    @classmethod
    def beside(cls, out: str | Path, **options: Any) -> "RayEmbedding":
        """Checkpointed in ``OUT.ingest`` beside the pipeline folder ``out`` (``layered index``)."""
        out = Path(out).absolute()
        return cls(checkpoint_dir=out.with_name(out.name + ".ingest"), **options)

    def clear(self) -> None:
        """Remove the checkpoint folder (once the index built from it is saved)."""
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
            shutil.rmtree(self.checkpoint_dir)

    @contextmanager
    def resumable(self) -> Iterator[None]:
        """Around indexing *and saving*: on Ctrl-C, say where the finished batches are kept; on
        success, say what was resumed and remove the checkpoint (the vectors are saved now)."""
        try:
            yield
        except KeyboardInterrupt:
            if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
                log.warning("the batches embedded so far are kept in %s: run the same command again to resume", self.checkpoint_dir)
            raise
        if self.stats["reused"]:
            log.info("resumed: %d chunks from the interrupted run, %d embedded now", self.stats["reused"], self.stats["embedded"])
        self.clear()

    def __call__(self, embedder: Embedder, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
        self.stats = {"texts": len(texts), "reused": 0, "embedded": 0}
        if not texts:
            return out
        identity = embedder_identity(embedder)
        batches = length_sorted_batches(texts, self.batch_size)
        keys = [batch_key([texts[i] for i in rows]) for rows in batches]
        checkpoint = None
        staged: dict[bytes, np.ndarray] = {}
        if self.checkpoint_dir is not None:
            checkpoint = Checkpoint(self.checkpoint_dir, identity, embedder.dim, flush_rows=self.flush_rows)
            staged = checkpoint.load()
        todo: list[int] = []
        for b, rows in enumerate(batches):
            vectors = staged.get(keys[b])
            if vectors is not None and len(vectors) == len(rows):
                out[rows] = vectors
                self.stats["reused"] += len(rows)
            else:
                todo.append(b)
        if self.stats["reused"]:
            log.info("resuming: %d of %d chunks were embedded by an earlier run (%s)", self.stats["reused"], len(texts), self.checkpoint_dir)
        if not todo:
            return out
        pending = {b: len(batches[b]) for b in todo}  # rows still to come back, per batch

        def sink(batch_ids: np.ndarray, rows: np.ndarray, vectors: np.ndarray) -> None:
            out[rows] = vectors
            for b in batch_ids.tolist():
                pending[b] -= 1
                if pending[b] == 0:
                    del pending[b]
                    if checkpoint is not None:
                        checkpoint.add(keys[b], out[batches[b]])

        self._run(embedder, identity, [(b, batches[b], [texts[i] for i in batches[b]]) for b in todo], sink, progress=progress)
        if checkpoint is not None:
            checkpoint.flush()
        if pending:
            raise ArtifactError(f"Ray returned no vectors for {sum(pending.values())} chunks; run again to resume")
        self.stats["embedded"] = sum(len(batches[b]) for b in todo)
        return out

    def _connect(self, ray: Any) -> bool:
        """Start (or join) Ray; True when this call started it and must shut it down."""
        if ray.is_initialized():
            return False
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": False}
        if self.address:
            ray.init(address=self.address, **quiet)
        else:
            cpus = math.ceil((self.workers or os.cpu_count() or 1) * self.cpus_per_worker)
            ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=self.object_store_mb * 2**20, **quiet)
        return True

    def _run(self, embedder: Embedder, identity: str, batches: list[tuple[int, list[int], list[str]]],
             sink: Callable[[np.ndarray, np.ndarray, np.ndarray], None], *, progress: bool) -> None:
        import pyarrow as pa
        from tqdm.auto import tqdm

        ray = require_ray()
        started = self._connect(ray)
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the driver draws one bar for the whole run
            context.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_worker))
            # Blocks (what an actor takes at a time) of whole batches: ~4 per worker, at most batches_per_block.
            per_block = max(1, min(self.batches_per_block, math.ceil(len(batches) / (4 * workers))))
            blocks = [pa.table({"batch": [b for b, _, _ in part], "rows": [rows for _, rows, _ in part],
                                "texts": [texts for _, _, texts in part]})
                      for part in (batches[s:s + per_block] for s in range(0, len(batches), per_block))]
            workers = min(workers, len(blocks))  # an actor with no block to take would only load the model
            total = sum(len(rows) for _, rows, _ in batches)
            log.info("embedding %d chunks on Ray with %d workers", total, workers)
            actor = _actor_class(embedder_factory(embedder), identity, max(1, int(self.cpus_per_worker)))
            dataset = ray.data.from_arrow(blocks).map_batches(
                actor, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=self.cpus_per_worker,
            )
            with tqdm(total=total, desc=f"embedding ({workers} Ray workers)", unit="chunk", disable=not progress, leave=False) as bar:
                for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    rows = np.asarray(batch["row"], dtype=np.int64)
                    sink(np.asarray(batch["batch"], dtype=np.int64), rows, np.asarray(batch["vector"], dtype=np.float32))
                    bar.update(len(rows))
        finally:
            if started:
                ray.shutdown()
