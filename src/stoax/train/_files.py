"""Files that survive a crash: atomic writes, removal of what a killed writer left, folder locks.

* :func:`atomic_write` writes a file under a hidden temporary name beside it
  (``.NAME.stoax-tmp-PID-RANDOM``), flushes it to disk and renames it over ``NAME``: a reader sees
  the old file or the new one, never half of one. A failed write removes its temporary file and
  leaves ``NAME`` as it was.
* A writer holds an OS lock (``flock``) on its temporary file while it writes. The kernel drops
  that lock when the process ends, however it ends (SIGKILL included), so
  :func:`remove_stale_temps` can tell a temporary file of a killed writer (its lock is free) from
  one being written right now (its lock is held), with no guessing from process ids or ages.
* :class:`FolderLock` is the same idea for a whole folder: an ``flock`` on ``FOLDER/.stoax-lock``
  held while a run writes there. A second run finds it held and refuses; a lock file left by a
  killed run holds no lock, and the next run takes it over.

On a platform without ``fcntl`` (Windows) the writes are still atomic, but nothing is locked and
stale temporary files are not removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]  # no locking there: checked before use

__all__ = [
    "FolderBusyError",
    "FolderLock",
    "atomic_write",
    "atomic_write_text",
    "exchange",
    "remove_stale_temps",
    "remove_tree",
]

TEMP_MARK = ".stoax-tmp-"
LOCK_NAME = ".stoax-lock"
_TEMP = re.compile(r"^\..+\.stoax-tmp-\d+-[0-9a-f]{8}$")


# -- atomic writes -------------------------------------------------------------------------------


def _write_error(err: OSError, path: Path, what: str) -> OSError:
    """``err`` again, with a message that names ``path`` (not the temporary file) and says what
    to do; the same class and errno, so callers that catch ``OSError`` still do."""
    why = err.strerror or str(err)
    hint = {
        errno.ENOSPC: " Free some space on that disk (or write elsewhere) and try again.",
        errno.EDQUOT: " You are over your disk quota: free some space and try again.",
        errno.EACCES: " Check the folder's permissions.",
        errno.EROFS: " The file system is read-only: write elsewhere.",
    }.get(err.errno or 0, "")
    kept = f" {path} was left as it was." if path.exists() else ""
    message = f"cannot write {what} {path}: {why.rstrip('.')}.{kept}{hint}"
    return type(err)(err.errno, message) if err.errno is not None else type(err)(message)


def _check_folder(path: Path, what: str) -> None:
    folder = path.parent
    if folder.is_dir():
        return
    if folder.exists():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"cannot write {what} {path}: {folder} is a file, not a folder. Choose another path.",
        )
    raise FileNotFoundError(
        errno.ENOENT,
        f"cannot write {what} {path}: the folder {folder} does not exist. Create the folder "
        "first (os.makedirs), or choose another path.",
    )


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, what: str = "the file") -> Iterator[IO[bytes]]:
    """Open a binary file that replaces ``path`` when the block ends without an error.

    ``what`` names the file in error messages (``"the checkpoint"``). A failure (an exception in
    the block, a full disk, ...) removes the temporary file and raises an ``OSError`` naming
    ``path``; ``path`` itself is untouched.

    Example:
        >>> import os, tempfile
        >>> from stoax.train._files import atomic_write
        >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
        >>> with atomic_write(path) as f:
        ...     _ = f.write(b"hello")
        >>> open(path).read(), os.listdir(os.path.dirname(path))
        ('hello', ['a.txt'])
    """
    path = Path(path)
    _check_folder(path, what)
    remove_stale_temps(path.parent)
    try:
        fd, tmp = _create_temp(path)
    except OSError as err:
        raise _write_error(err, path, what) from None
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as err:
        raise _write_error(err, path, what) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(fd)  # releases the lock only now: the file is renamed or gone


def atomic_write_text(path: str | os.PathLike[str], text: str, *, what: str = "the file") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, what=what) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, locked temporary file beside ``path``."""
    while True:
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)  # a cleaner holds it only for a moment
        if _same_file(fd, tmp):
            return fd, tmp
        os.close(fd)  # a cleaner took it for a stale file and removed it: take another name


def _same_file(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    there = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder``; return their paths.

    A temporary file of :func:`atomic_write` is stale when nobody holds its lock: its writer is
    gone. Files being written right now are left alone. Best effort: a folder that cannot be
    listed or written is skipped.
    """
    if fcntl is None:
        return []
    try:
        names = [name for name in os.listdir(folder) if _TEMP.match(name)]
    except OSError:
        return []
    removed = []
    for name in names:
        path = Path(folder) / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # renamed or removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass  # held: a live writer
        finally:
            os.close(fd)
    return removed


# -- folder locks --------------------------------------------------------------------------------


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """An exclusive lock on a folder, held by this process until :meth:`release`.

    The lock is an ``flock`` on ``FOLDER/.stoax-lock``, which also records who holds it (process
    id, host, start time, command). The kernel releases an ``flock`` when its process ends, so a
    lock file left by a killed run blocks nobody: the next :meth:`acquire` takes it over.
    :meth:`release` removes the file.

    Example:
        >>> import tempfile
        >>> from stoax.train._files import FolderBusyError, FolderLock
        >>> folder = tempfile.mkdtemp()
        >>> lock = FolderLock.acquire(folder)
        >>> try:
        ...     FolderLock.acquire(folder)
        ... except FolderBusyError as err:
        ...     print("busy")
        busy
        >>> lock.release()
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, folder: str | os.PathLike[str], *, command: str | None = None) -> FolderLock:
        """Lock ``folder`` (which must exist); raise :class:`FolderBusyError` if a live process
        holds it, and ``OSError`` if the lock file cannot be created (a read-only folder)."""
        path = Path(folder) / LOCK_NAME
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            if fcntl is None:
                return cls(path, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise FolderBusyError(holder) from None
                raise
            if not _same_file(fd, path):  # its holder removed it as we opened it: try again
                os.close(fd)
                continue
            info = {
                "pid": os.getpid(),
                "host": os.uname().nodename if hasattr(os, "uname") else "",
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": command if command is not None else " ".join(sys.argv),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            return cls(path, fd)
        raise FolderBusyError("the lock file keeps changing")  # pragma: no cover

    def moved_to(self, folder: str | os.PathLike[str]) -> None:
        """Record that the locked folder was renamed to ``folder`` (the lock moves with it)."""
        self.path = Path(folder) / LOCK_NAME

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):  # remove it while still holding it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """Who holds a lock, as its lock file says (for the error message)."""
    try:
        info: dict[str, Any] = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return "another process"
    where = f" on {info['host']}" if info.get("host") else ""
    since = f", since {info['started']}" if info.get("started") else ""
    command = f": {info['command']}" if info.get("command") else ""
    return f"process {info.get('pid', '?')}{where}{since}{command}"


# -- swapping folders ----------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.renameat2
    except (OSError, AttributeError):  # an old C library
        return None


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap the folders at ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); return False, having changed nothing, where that is not available
    (another OS, an old kernel or C library, a file system without it)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a folder and everything in it; a missing folder is fine."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
