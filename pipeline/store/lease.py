"""A writer's lease: at most one teacher run writes (or resumes) a given store at a time.

The lease is a small JSON file (an object on a remote store) next to the store,
``<name>.zarr.lease``: the holder's token, pid, host, when it was taken, and the
path being written (the staging copy, which tasks joining the run attach to).
A second writer of the same store *waits* while the lease is live, re-checking
whether the store has been published meanwhile (then it simply reuses it).

A lease is live while its holder renews it: a thread touches it every
``RENEW_S`` seconds. It is stale, and broken by the next writer, when it has not
been renewed for ``TTL_S`` seconds, or at once when its holder ran on this host
and that process is gone (a SIGKILLed run is resumed without waiting).

Local files are created with ``link()``, which fails if the name exists: an
atomic exclusive create whose content is complete from the first instant.
Object stores have no such primitive here; there the lease is written if absent
and read back, so two writers racing within one round trip may both proceed.
That is harmless for the same content (both write identical objects, and a
complete store is never reopened) and is documented as the object-store limit.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Callable

from pipeline.errors import StoreError
from pipeline.locks import create_exclusive, pid_alive
from pipeline.store.paths import local_path

log = logging.getLogger(__name__)

TTL_S = 120.0
RENEW_S = 10.0
POLL_S = 0.5
BREAK_GRACE_S = 30.0  # a break marker older than this was left by a process that died while breaking


@dataclass(frozen=True)
class LeaseInfo:
    token: str
    pid: int
    host: str
    acquired_at: float
    renewed_at: float
    writing: str  # the path being written: the staging copy (local) or the store itself (object store)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired_at))
        return f"pid {self.pid} on {self.host}, since {since}"


def lease_path(store: str) -> str:
    return f"{store.rstrip('/')}.lease"


class _Backend:
    """Exclusive create, read, renew and remove of one small file, locally or through fsspec."""

    def __init__(self, path: str, storage_options: dict | None) -> None:
        self.path, self.local = path, local_path(path)
        if self.local is None:
            import fsspec

            self.fs, self.key = fsspec.core.url_to_fs(path, **(storage_options or {}))

    def create(self, info: LeaseInfo) -> bool:
        data = json.dumps(asdict(info)).encode()
        if self.local is not None:
            return create_exclusive(self.local, data, token=info.token)
        if self.fs.exists(self.key):
            return False
        self.fs.pipe_file(self.key, data)
        got = self.read()
        return got is not None and got.token == info.token  # the last of two racing writers wins

    def read(self) -> LeaseInfo | None:
        try:
            if self.local is not None:
                with open(self.local, "rb") as f:
                    raw = f.read(4096)
                mtime = os.stat(self.local).st_mtime
            else:
                self.fs.invalidate_cache(self.key)
                raw, mtime = self.fs.cat_file(self.key)[:4096], 0.0
        except FileNotFoundError:
            return None
        try:
            d = json.loads(raw)
            info = LeaseInfo(token=str(d["token"]), pid=int(d["pid"]), host=str(d["host"]),
                             acquired_at=float(d["acquired_at"]), renewed_at=float(d["renewed_at"]),
                             writing=str(d["writing"]))
        except (ValueError, KeyError, TypeError):  # torn or damaged: live only while its file is fresh
            info = LeaseInfo(token="?", pid=-1, host="?", acquired_at=mtime, renewed_at=0.0, writing="")
        # Local leases are renewed by touching the file (which cannot resurrect a removed one).
        return LeaseInfo(**{**asdict(info), "renewed_at": max(info.renewed_at, mtime)})

    def renew(self, info: LeaseInfo) -> None:
        if self.local is not None:
            os.utime(self.local)
        else:
            self.fs.pipe_file(self.key, json.dumps({**asdict(info), "renewed_at": time.time()}).encode())

    def remove(self) -> None:
        try:
            if self.local is not None:
                os.remove(self.local)
            else:
                self.fs.rm_file(self.key)
        except FileNotFoundError:
            pass


def is_stale(info: LeaseInfo, now: float | None = None) -> bool:
    """Not renewed for TTL_S, or held by a process of this host that no longer exists."""
    now = time.time() if now is None else now
    if now - info.renewed_at > TTL_S:
        return True
    return info.host == socket.gethostname() and not pid_alive(info.pid)


class Lease:
    """A held lease: renewed by a daemon thread until :meth:`release` (or until someone else holds it)."""

    _held: dict[str, "Lease"] = {}  # by token: this process's leases, so a release stops their renewal
    _lock = threading.Lock()

    def __init__(self, backend: _Backend, info: LeaseInfo) -> None:
        self.backend, self.info = backend, info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="store-lease", daemon=True)
        self._thread.start()
        with Lease._lock:
            Lease._held[info.token] = self

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                now = self.backend.read()
                if now is None or now.token != self.info.token:
                    return  # released (by another task of this run) or taken over: nothing to renew
                self.backend.renew(self.info)
            except OSError:  # a transient storage error: try again at the next tick
                continue

    @property
    def token(self) -> str:
        return self.info.token

    def release(self) -> None:
        release(self.backend.path, self.info.token)


def release(path: str, token: str, storage_options: dict | None = None) -> None:
    """Give up the lease at ``path`` if ``token`` still holds it (a task of the run may release another's)."""
    with Lease._lock:
        held = Lease._held.pop(token, None)
    if held is not None:
        held._stop.set()
    backend = held.backend if held is not None else _Backend(path, storage_options)
    info = backend.read()
    if info is not None and info.token == token:
        backend.remove()


def current(store: str, storage_options: dict | None = None) -> LeaseInfo | None:
    """The live lease on ``store``, if any."""
    info = _Backend(lease_path(store), storage_options).read()
    return None if info is None or is_stale(info) else info


def acquire(store: str, *, writing: str, published: Callable[[], bool],
            storage_options: dict | None = None) -> Lease | None:
    """Take the lease on ``store``, waiting while another live writer holds it.

    Returns None instead when ``published()`` becomes true (checked before, while
    waiting, and once more after taking the lease): the store is there to reuse.
    """
    backend = _Backend(lease_path(store), storage_options)
    waited = False
    while True:
        if published():
            return None
        now = time.time()
        mine = LeaseInfo(token=uuid.uuid4().hex, pid=os.getpid(), host=socket.gethostname(), acquired_at=now,
                         renewed_at=now, writing=writing)
        if backend.create(mine):
            lease = Lease(backend, mine)
            if published():  # finished by the holder we just replaced
                lease.release()
                return None
            return lease
        held = backend.read()
        if held is None:
            continue  # released between our attempt and the read
        if is_stale(held):
            log.warning("breaking the stale lease on %s (%s)", store, held.describe())
            _break(backend, held)
            continue
        if not waited:
            log.warning("another writer holds %s (%s); waiting for it to publish", backend.path, held.describe())
            waited = True
        time.sleep(POLL_S)


def _break(backend: _Backend, stale: LeaseInfo) -> None:
    """Remove a stale lease, unless someone replaced it meanwhile (a short marker serialises the breakers)."""
    if backend.local is None:
        backend.remove()
        return
    marker = f"{backend.local}.break"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - os.stat(marker).st_mtime > BREAK_GRACE_S:
                os.remove(marker)
        except FileNotFoundError:
            pass
        time.sleep(POLL_S)
        return
    try:
        os.close(fd)
        again = backend.read()
        if again is not None and again.token == stale.token:
            backend.remove()
    finally:
        os.remove(marker)


def require(store: str, storage_options: dict | None = None) -> LeaseInfo:
    """The live lease a task joining a run's teacher pass works under; refused if nobody holds one."""
    info = current(store, storage_options)
    if info is None:
        raise StoreError("store", f"no live writer holds {lease_path(store)!r}: there is no unfinished write of "
                         f"{store!r} to join", "rerun the teacher, which creates (or resumes) the store first")
    return info
