"""Safe persistence: atomic file and folder writes, and a sha256 manifest checked on load.

A saved folder is complete only when its ``manifest.json`` exists: the manifest is written
last and lists the sha256 of every other file. Folders are written beside their target
under a temporary name and swapped in with ``os.replace``, so a crash at any moment leaves
either the old folder or the new one, never a mixture. No pickle is used anywhere.

One writer at a time: :func:`folder_lock` holds a lock file beside the target
(``.NAME.lock``, holding the writer's pid) for a whole load-update-save cycle, and
:func:`save_folder_atomically` takes it too. The lock is an OS lock on the open file
(``flock``), so a writer killed with ``kill -9`` leaves no stale lock: the next writer takes
it over. A second writer fails at once with one :class:`~layered.errors.FolderBusyError`
line naming the holder, or waits up to ``wait`` seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from layered.errors import ArtifactError, FolderBusyError, IntegrityError

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


#: How often a waiting writer tries the lock again (seconds).
LOCK_POLL_S = 0.1

# Locks this process holds: lock path -> [fd, depth, thread]; a thread may re-enter its own lock
# (the CLI holds it around loading, updating and saving; save_folder_atomically takes it again).
_held: dict[str, list[int]] = {}
_held_guard = threading.Lock()


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of the saved folder ``target``: ``.NAME.lock`` beside it."""
    target = Path(target).expanduser().resolve()
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def folder_lock(target: str | os.PathLike[str], *, wait: float = 0.0) -> Iterator[Path]:
    """Hold the write lock of the saved folder ``target`` (re-entrant within a thread).

    When another process (or thread) holds it, wait up to ``wait`` seconds, then raise
    :class:`~layered.errors.FolderBusyError` naming the holder's pid. The lock dies with its
    holder (an OS lock on the open file), so a writer killed with ``kill -9`` leaves nothing
    to clean up; the lock file is removed when released.
    """
    path = lock_path(target)
    key, me = str(path), threading.get_ident()
    with _held_guard:
        entry = _held.get(key)
        if entry is not None and entry[2] == me:
            entry[1] += 1
    if entry is not None and entry[2] == me:
        try:
            yield path
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    fd = _acquire(path, Path(target), wait)
    with _held_guard:
        _held[key] = [fd, 1, me]
    try:
        yield path
    finally:
        with _held_guard:
            del _held[key]
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiter that opened this file sees it gone and opens anew
        os.close(fd)


def _acquire(path: Path, target: Path, wait: float) -> int:
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise ArtifactError(f"cannot create the lock file {path} ({e.strerror or e}); choose a folder you can write") from None
        try:
            if _try_lock(fd, path):
                try:
                    current = os.path.samestat(os.fstat(fd), os.stat(path))
                except FileNotFoundError:
                    current = False
                if current:  # else the last holder removed the file before we locked it: open it again
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
                    return fd
                os.close(fd)
                continue
            holder = _holder(path)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait:g}s" if wait > 0 else ""
            raise FolderBusyError(f"{target} is being written by another process ({holder}){waited}; "
                                  "let it finish (layered index --wait SECONDS waits for it)")
        time.sleep(LOCK_POLL_S)


def _try_lock(fd: int, path: Path) -> bool:
    """Take the OS lock on ``fd`` without blocking; False when someone else holds it."""
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except (BlockingIOError, PermissionError):
        return False
    except OSError as e:
        raise ArtifactError(f"cannot lock {path} ({e.strerror or e}); this file system may not support locks") from None


def _holder(path: Path) -> str:
    """Who holds the lock, from its file: ``pid N since TIME`` (or ``pid unknown``)."""
    try:
        pid, since = (path.read_text(encoding="utf-8", errors="replace").splitlines() + ["", ""])[:2]
    except OSError:
        return "pid unknown"
    return f"pid {pid}, since {since}" if pid.strip().isdigit() else "pid unknown"


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
    olds = [old for old in sorted(target.parent.glob(f".{target.name}.*.old")) if (old / MANIFEST).is_file()]
    if not olds:
        return
    try:
        with folder_lock(target):  # a writer holding it is mid-swap, not crashed: leave its folders alone
            if not target.exists() and olds[0].is_dir():
                os.replace(olds[0], target)
    except ArtifactError:
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
    lock_wait: float = 0.0,
) -> Path:
    """Build a folder with ``write(tmp_folder)``, add a manifest, then swap it in for ``target``.

    If ``write`` raises, ``target`` is left untouched; a ``target`` folder that this library
    did not save is never replaced (:func:`check_replaceable`). The swap renames the old folder aside,
    renames the new one into place and only then deletes the old one. It holds the target's
    :func:`folder_lock` (waiting up to ``lock_wait`` seconds for another writer), so temp
    folders left beside it can only be a killed writer's and are removed here.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{target} exists and is not a folder; choose another path")
    with folder_lock(target, wait=lock_wait):
        return _save_locked(target, write, manifest_extra)


def _save_locked(target: Path, write: Callable[[Path], None], manifest_extra: Mapping[str, Any] | None) -> Path:
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
