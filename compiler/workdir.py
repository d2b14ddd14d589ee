"""A tune's scratch folder: beside its database, never in /tmp, and never left behind for long.

Built kernels and every other temporary file of a run (TVM's, the workers') go to a folder of its
own under `<db folder>/.<db name>.runs/`, made the process's temporary directory (tempfile and
TMPDIR, which child processes inherit). It is removed when the run ends, also on Ctrl-C or
SIGTERM (turned into KeyboardInterrupt); after a SIGKILL the next run removes it: each run holds a
lock on its folder, and a run starting up removes every folder whose lock nobody holds.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK = ".lock"


def _holder_gone(folder: Path) -> bool:
    try:
        with open(folder / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def clean_stale(base: Path) -> None:
    """Remove the folders of runs that ended without removing theirs (killed)."""
    for folder in base.glob("run-*"):
        if (folder / LOCK).exists() and _holder_gone(folder):
            shutil.rmtree(folder, ignore_errors=True)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def run_folder(db_path: Path) -> Iterator[Path]:
    """The run's scratch folder (see the module docstring); SIGTERM interrupts like Ctrl-C."""
    base = db_path.parent / f".{db_path.name}.runs"
    base.mkdir(parents=True, exist_ok=True)
    clean_stale(base)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    fd, locked = tempfile.mkstemp(prefix=".lock-", dir=base)  # locked before a cleaner sees it
    lock = os.fdopen(fd, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.replace(locked, folder / LOCK)
    saved = tempfile.tempdir, os.environ.get("TMPDIR"), signal.getsignal(signal.SIGTERM)
    tempfile.tempdir, os.environ["TMPDIR"] = str(folder), str(folder)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        signal.signal(signal.SIGTERM, saved[2])
        shutil.rmtree(folder, ignore_errors=True)
        lock.close()
