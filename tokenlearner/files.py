"""Atomic file writes: a reader, or a process killed mid-write, never sees half a file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterator

from tokenlearner import processes

# .<stem>.<writer's pid>-<writer's start ticks>-<random><suffix>: a process killed
# mid-write leaves one behind, and `remove_stale_temporaries` can tell it is dead.
_TEMPORARY = re.compile(r"\..+\.(\d+)-(\d+)-[0-9a-f]{12}(\.[^.]*)?")


def _new_file_beside(path: Path) -> Path:
    """An empty file with a fresh hidden name beside `path`, named after this process. It
    is created with mode 0666 so that the kernel applies the umask as for any new file;
    `tempfile.mkstemp` would make it 0600, and reading the umask means setting it
    process-wide for a moment, which another thread writing a file at that moment would see."""
    writer = processes.identity()
    while True:
        candidate = path.with_name(f".{path.stem}.{writer['pid']}-{writer['start_ticks'] or 0}-"
                                   f"{secrets.token_hex(6)}{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix) to write; on success it
    replaces `path` in one rename, on failure it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _new_file_beside(path)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries in `folder` (not below it) whose writer no longer runs, as a
    run killed mid-write leaves them; return what was deleted."""
    removed = []
    for path in Path(folder).glob(".*"):
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        pid, ticks = int(match[1]), int(match[2])
        if not processes.alive({"pid": pid, "start_ticks": ticks or None}):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def exclusive(lock: str | os.PathLike) -> Iterator[None]:
    """Held by one thread of one process on the machine at a time: an `flock` on the file
    `lock` (made if missing), which separate opens of the file contend for, even in one
    process, and which the kernel lets go when its holder dies."""
    import fcntl

    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_held(lock: str | os.PathLike) -> bool:
    """Whether someone holds `exclusive(lock)` now."""
    import fcntl

    if not Path(lock).exists():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in `path`; a missing, unreadable or unparsable file raises `ValueError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except OSError as error:  # a folder, or a file this user may not read
        raise ValueError(f"{path} cannot be read ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
