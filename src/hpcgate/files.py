"""Small file helpers every part uses: private directories, atomic private writes,
files re-read when they change.

Neutral on purpose: the hub, the lab, the job's ``hpcgate-singleuser`` and the sandbox
import it; it imports nothing of hpcgate.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

#: (modification time in ns, size, inode): what :class:`ReloadingFile` compares.
Fingerprint = tuple[int, int, int]


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700. Returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_atomic(path: str | os.PathLike[str], text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` atomically, the file created with ``mode`` (0600).

    The text goes to ``<path>.tmp`` (created with ``mode``, so a secret is never
    readable by others, not even for a moment) and replaces ``path`` in one rename:
    a reader sees the old content or the new one, never half of it.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    # an existing tmp file keeps its old mode through O_CREAT: set it
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """``(mtime_ns, size, inode)`` of ``path``; :class:`OSError` if it cannot be stat'ed."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ReloadingFile(Generic[T]):
    """What ``load`` made of a file, made again whenever the file changes.

    :meth:`get` stats the file on every call and calls ``load(path)`` again when its
    modification time, size or inode differ from those of the last successful load.
    A load that raises is tried again on the next call (nothing half-loaded is kept).
    Thread-safe: the fingerprint and the value are swapped together.
    """

    def __init__(self, path: str | os.PathLike[str], load: Callable[[str], T]):
        self.path = os.fspath(path)
        self._load = load
        self._seen: Fingerprint | None = None
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """The current value; :class:`OSError` when the file cannot be stat'ed."""
        with self._lock:
            now = fingerprint(self.path)
            if now != self._seen:
                self._value = self._load(self.path)
                self._seen = now
            return self._value  # type: ignore[return-value]
