"""Safe persistence: atomic file and folder writes, and a sha256 manifest checked on load.

A saved folder is complete only when its ``manifest.json`` exists: the manifest is written
last and lists the sha256 of every other file. Folders are written beside their target
under a temporary name and swapped in with ``os.replace``, so a crash at any moment leaves
either the old folder or the new one, never a mixture. No pickle is used anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from layered.errors import ArtifactError, IntegrityError

MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory entry itself is flushed.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory (deepest first), then ``root``."""
    dirs = []
    for p in root.rglob("*"):
        if p.is_symlink():
            continue
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        _fsync_dir(d)
    _fsync_dir(root)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is fsynced and renamed
    onto ``path`` (all or nothing), on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename (all or nothing)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted UTF-8 JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning a parse error into an :class:`ArtifactError`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ArtifactError(f"{path} is missing; the saved folder is incomplete") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e})") from e


def write_manifest(folder: Path, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file under ``folder`` and write ``manifest.json`` (last, atomically)."""
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"files": files, **(extra or {})}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def verify_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; return the manifest.

    Raises :class:`ArtifactError` when the folder or its manifest is missing and
    :class:`IntegrityError` when a file is missing, changed, or not listed.
    """
    folder = Path(folder)
    recover_interrupted_swap(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a saved folder (it does not exist)")
    manifest: dict[str, Any] = read_json(folder / MANIFEST)
    listed = _checked_listing(folder, manifest)
    links = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink()]
    if links:  # a link can point anywhere: a saved folder is plain files only
        raise IntegrityError(f"{folder} holds symbolic links ({', '.join(sorted(links)[:3])}); refusing to load it")
    for rel, digest in listed.items():
        p = folder / rel
        if not p.is_file():
            raise IntegrityError(f"{p} is listed in the manifest but missing; re-save the folder")
        if sha256_file(p) != digest:
            raise IntegrityError(f"{p} does not match its sha256 in {MANIFEST}: it was modified after saving; refusing to load it")
    extra = [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.relative_to(folder).as_posix() not in listed
    ]
    if extra:
        raise IntegrityError(f"{folder} holds files not in its manifest ({', '.join(sorted(extra)[:3])}); refusing to load it")
    return manifest


def _checked_listing(folder: Path, manifest: Any) -> dict[str, str]:
    """The manifest's ``files`` table, refusing anything but relative paths inside ``folder`` -> sha256."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise IntegrityError(f"{folder / MANIFEST} must be an object with a 'files' table; refusing to load it")
    for rel, digest in files.items():
        parts = rel.replace("\\", "/").split("/")
        if not rel or rel.startswith("/") or ".." in parts or "" in parts or ":" in parts[0] or rel == MANIFEST:
            raise IntegrityError(f"{folder / MANIFEST} lists {rel[:80]!r}, a path outside the folder; refusing to load it")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise IntegrityError(f"{folder / MANIFEST}: the entry for {rel[:80]!r} is not a sha256; refusing to load it")
    return files


def recover_interrupted_swap(target: str | os.PathLike[str]) -> None:
    """Finish a swap that a crash interrupted: put the old folder back when ``target`` is missing.

    Call it before deciding whether ``target`` holds a saved folder (``save_folder_atomically``
    and ``verify_manifest`` do).
    """
    target = Path(target)
    # A crash between the two renames of save_folder_atomically leaves only the old folder,
    # renamed aside; put it back so the previous complete state is what loads.
    if target.exists():
        return
    for old in sorted(target.parent.glob(f".{target.name}.*.old")):
        if (old / MANIFEST).is_file():
            os.replace(old, target)
            return


def check_replaceable(target: str | os.PathLike[str]) -> None:
    """Raise :class:`ArtifactError` when ``target`` is a folder that saving there would destroy:
    one holding files but no manifest (so not a folder this library saved), such as a
    user's own folder given as an output path. Missing, empty and saved folders pass."""
    target = Path(target)
    if target.is_dir() and not (target / MANIFEST).is_file() and any(target.iterdir()):
        raise ArtifactError(f"{target} holds files that layered did not save; refusing to replace it: choose a new or empty folder")


def save_folder_atomically(
    target: str | os.PathLike[str],
    write: Callable[[Path], None],
    *,
    manifest_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Build a folder with ``write(tmp_folder)``, add a manifest, then swap it in for ``target``.

    If ``write`` raises, ``target`` is left untouched; a ``target`` folder that this library
    did not save is never replaced (:func:`check_replaceable`). The swap renames the old folder aside,
    renames the new one into place and only then deletes the old one. One writer per target
    is assumed: temp folders left by a writer that was killed are removed here.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{target} exists and is not a folder; choose another path")
    recover_interrupted_swap(target)  # after this, any old copy left beside target is redundant
    check_replaceable(target)
    for pattern in (f".{target.name}.*.partial", f".{target.name}.*.old"):
        for leftover in target.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        write(tmp)
        write_manifest(tmp, manifest_extra)
        # Parts write their files (FAISS index, chunks, adapters) with their own writers: make
        # every byte and directory entry durable before the old folder can be deleted.
        _fsync_tree(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
