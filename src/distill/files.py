"""Writing files so that nothing is ever half-written: the one place the project does it.

Every writer here fills a temporary name in the destination's folder, flushes it to disk, then renames it
onto the final name (``os.replace``, atomic on POSIX), so a reader, or a run killed at any moment, sees the
old file or the new one, never a mix. Folders get the same treatment: built under ``<name>.tmp``, renamed
into place whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_CHUNK = 8 * 2**20


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename durable (survives power loss, not only kill -9); no-op where folders can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    # unique per process and call: two processes writing the same file never share a temp file
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_save(path: str | os.PathLike[str], save: Callable[[Path], Any], durable: bool = True) -> Path:
    """Call ``save(temp_path)`` (``torch.save``, ``np.save``, ...), then rename the result onto ``path``.
    ``durable`` also fsyncs the file and its folder (set False for caches that can be rebuilt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        save(tmp)
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], Any], binary: bool = False,
                 durable: bool = True) -> Path:
    """Open a temp file (text UTF-8, or bytes with ``binary``), let ``write(fh)`` fill it, then rename it onto
    ``path``."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)

    return atomic_save(path, save, durable)


def atomic_write_text(path: str | os.PathLike[str], text: str, durable: bool = True) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), durable=durable)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), binary=True, durable=durable)


def atomic_write_json(path: str | os.PathLike[str], data: Any, indent: int | None = 1, sort_keys: bool = True,
                      durable: bool = True) -> Path:
    def write(fh: IO[str]) -> None:
        json.dump(data, fh, indent=indent, sort_keys=sort_keys, default=str)
        fh.write("\n")

    return atomic_write(path, write, durable=durable)


def atomic_dir(folder: str | os.PathLike[str], fill: Callable[[Path], Any],
               keep_existing: bool = False) -> Path:
    """Build a folder whole or not at all: ``fill`` writes into a fresh temporary folder beside it (a unique
    name, so processes building the same folder do not share one), which then replaces ``folder``. A run
    killed inside ``fill`` leaves only a hidden temporary folder, never a partial one under the final name.
    With ``keep_existing``, a folder another process finished meanwhile is kept and this one discarded."""
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        fill(tmp)
        if keep_existing and folder.exists():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (keep_existing and folder.exists()):  # another process renamed its copy in first
                raise
        fsync_dir(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
