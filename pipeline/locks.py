"""Who holds what: report folders' run locks, and the primitives the store's writer lease is built on.

Both are small JSON files naming their holder (pid, host), created exclusively: a fully written
temporary file hard-linked into place, so the name is never seen half written and a second creator
fails. A holder on this host whose process is gone is stale and taken over; one on another host is
respected, since its process cannot be checked from here. The lease adds renewal and a time-to-live
for object stores (:mod:`pipeline.store.lease`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

from pipeline.errors import UserError

log = logging.getLogger(__name__)

LOCK = ".lock"


def create_exclusive(path: str, data: bytes, *, token: str) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True when this call created it.

    ``token`` names the temporary file, unique to the caller. Where the filesystem has no hard links,
    ``O_EXCL`` creates it instead (a reader may then see it torn, and must treat that as stale).
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{token}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if the name exists: exclusive, and complete when visible
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    finally:
        os.remove(tmp)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_gone(pid: object, host: object) -> bool:
    """Whether a holder is certainly gone: its pid is not a number, or it ran here and its process exited."""
    if not isinstance(pid, int):
        return True
    return host == socket.gethostname() and not pid_alive(pid)


# ---------------------------------------------------------------- run locks (report folders)


def check_not_running(path: str) -> None:
    """Refuse a report folder that a live run holds (see :func:`run_lock`)."""
    holder = _lock_holder(os.path.join(path, LOCK))
    if holder is not None and not holder_gone(holder.get("pid"), holder.get("host")):
        raise _busy(path, holder)


@contextlib.contextmanager
def run_lock(path: str) -> Iterator[None]:
    """Hold ``path/.lock`` while a run writes into its report folder; a second run is refused in one line."""
    os.makedirs(path, exist_ok=True)
    lock = os.path.join(path, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(3):
        if create_exclusive(lock, json.dumps(me).encode(), token=f"{os.getpid()}.{threading.get_ident()}"):
            break
        holder = _lock_holder(lock)
        if holder is not None and not holder_gone(holder.get("pid"), holder.get("host")):
            raise _busy(path, holder)
        # Stale (or vanished meanwhile): move it aside under a name of our own, so two takers never both
        # remove a lock the other has just created.
        aside = f"{lock}.stale.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(lock, aside)
            os.remove(aside)
        log.warning("took over the stale lock of %s (%s)", path, holder)
    else:
        raise UserError("run_name", f"{path} could not be locked", "retry, or pass another --run-name")
    try:
        yield
    finally:
        if _lock_holder(lock) == me:
            os.remove(lock)


def _lock_holder(lock: str) -> dict | None:
    try:
        with open(lock) as f:
            holder = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: not written by run_lock, so nobody can be holding it
    return holder if isinstance(holder, dict) else {}


def _busy(path: str, holder: dict) -> UserError:
    return UserError("run_name", f"{path} is in use by another run (pid {holder.get('pid')} on "
                     f"{holder.get('host')}, since {holder.get('started')})",
                     f"wait for it, or pass another --run-name; if no run is using it, delete {LOCK} there")
