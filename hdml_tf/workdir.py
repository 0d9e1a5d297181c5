"""A workdir's safety: one writer at a time, and writes that cannot half-happen.

`WorkdirLock` is an OS-level lock (``fcntl.flock`` on ``<dir>/.lock``): the kernel
releases it when the process ends, however it ends, so a ``kill -9`` never leaves a
stale lock and no ``--force`` is needed. A second writer fails at once with one line
naming the directory and the process that holds it (written into the lock file by the
holder).

`atomic_write`, `append_row` and `write_json` leave the previous complete file as it
was when a write fails part-way (a full disk, a storage error) and raise `WriteError`,
whose message is one line naming the path.
"""

import contextlib
import csv
import datetime
import fcntl
import json
import os
import socket
import sys
import tempfile

LOCK_NAME = ".lock"


class WorkdirError(RuntimeError):
    """A workdir cannot be used as asked (busy, or nothing in it restores)."""


class WriteError(OSError):
    """A file could not be written; the previous complete file is kept."""


class WorkdirLock:
    """Exclusive use of ``directory`` while held (a context manager).

    Args:
      directory: created if missing.
      what: who holds it, written into the lock file for the message a second writer
        gets (default: this process's command line).

    Raises:
      WorkdirError: on entering, when another process holds the lock.
    """

    def __init__(self, directory, what=None):
        self.directory = os.fspath(directory)
        self.what = what or " ".join(os.path.basename(a) if i == 0 else a
                                     for i, a in enumerate(sys.argv))
        self._file = None

    def __enter__(self):
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, LOCK_NAME)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise WorkdirError(f"{self.directory} is in use by {holder}; wait for it to "
                               "end or use another directory") from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {started} "
                     f"({self.what})")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()  # the holder's line is for while it holds the lock
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def locked(directory, enabled=True):
    """`WorkdirLock` of ``directory``, or nothing when not ``enabled``."""
    return WorkdirLock(directory) if enabled else contextlib.nullcontext()


def _failed(path, error):
    reason = (error.strerror if isinstance(error, OSError) else None) or str(error)
    return WriteError(f"could not write {path}: {reason}; the previous file is kept")


def atomic_write(path, write, mode="w"):
    """Write ``path`` through ``write(file)`` into a temporary file beside it, then
    rename it over ``path``: readers see the old file or the new one, never a part.

    Raises:
      WriteError: the write failed (the temporary file is removed, ``path`` is as it was).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise _failed(path, error) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, payload):
    """``payload`` as JSON at ``path``, atomically (`atomic_write`)."""
    atomic_write(path, lambda f: json.dump(payload, f, indent=2, sort_keys=True,
                                           default=float))


def append_row(path, fields, row):
    """Append one CSV row under ``fields`` (the header first, for a new file); a
    failed write truncates the file back to the rows it had."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    size = 0 if new else os.path.getsize(path)
    try:
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fields))
            if new:
                writer.writeheader()
            writer.writerow(row)
            f.flush()
    except OSError as error:
        with open(path, "a") as f:
            f.truncate(size)
        raise _failed(path, error) from None
