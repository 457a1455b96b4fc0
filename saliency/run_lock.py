"""One run at a time in a run folder: an advisory lock on ``DIR/.saliency.lock``.

Two ``saliency explain`` runs on the same folder would each save a manifest of their own
records, and the last save wins: the other run's records are lost although its outputs exist.
Merging at every save cannot fix that without a lock either (a read-merge-write by one run can
still interleave with another's), and the two runs may disagree on settings, so a second run is
refused instead. The lock is ``fcntl.flock`` on a file that stays in the folder: the kernel
releases it when its process exits, however it exits, so a lock left by a killed run never
blocks. The file holds the holder's process id, for the message. Where ``fcntl`` does not exist
(Windows), runs are not locked.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from saliency.errors import SaliencyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".saliency.lock"


class FolderInUseError(SaliencyError, RuntimeError):
    """Another live process holds the run folder's lock."""


@dataclass
class RunLock:
    """The held lock of one run folder (release it, or let the process exit)."""

    path: Path
    descriptor: int | None

    def release(self, *, remove: bool = False) -> None:
        """Release the lock (``remove``: also delete the file, e.g. for a folder that is
        removed again because the run did not start)."""
        if self.descriptor is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.descriptor)
        self.descriptor = None


def lock_run_folder(folder: Path) -> RunLock:
    """Take the lock of ``folder`` (an existing folder) without waiting.

    Raises:
        FolderInUseError: Another running process holds it.
        OSError: The lock file cannot be created (e.g. a read-only folder).
    """
    path = folder / LOCK_NAME
    # O_NOFOLLOW: a symbolic link planted under the lock's name is never followed
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags, 0o644)
    if fcntl is None:  # pragma: no cover - Windows
        return RunLock(path, descriptor)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(descriptor)
        os.close(descriptor)
        raise FolderInUseError(
            f"{folder} is in use by another saliency run{holder}; wait for it to finish, or "
            "choose another --out"
        ) from None
    except BaseException:
        os.close(descriptor)
        raise
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return RunLock(path, descriptor)


def _holder(descriptor: int) -> str:
    """`` (process N)`` from the lock file, when it says."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(descriptor, 32, 0).decode("ascii").strip()
        return f" (process {int(text)})"
    return ""
