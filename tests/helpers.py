"""In-process builders for the tests below the FUSE tier.

``fs_env`` opens a fresh store in a temporary folder (through the same
``open_store``/``build`` the daemon uses), creates the two test buckets and
runs the data path's background work in a trio nursery. ``trio_test`` turns an
``async def`` test into a plain pytest test that runs under ``trio.run``.
``FaultyStore`` wraps a ``LocalStore`` and fails on demand, so the tests can
check what the data path does when the chunk store misbehaves.
"""

import errno
import functools
import os
import pathlib
import shutil
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from cosfs import config as cosfs_config
from cosfs.errors import StoreError
from cosfs.filesystem import Ctx
from cosfs.mount import build, ensure_buckets, open_store
from cosfs.store import LocalStore

APPID = "1250000000"
PLAIN = "plain-" + APPID
ENC = "enc-" + APPID
REGION = "ap-guangzhou"


TMPFS = "/dev/shm"


@pytest.fixture
def tmp_path(tmp_path):
    """pytest's ``tmp_path``, moved to tmpfs when there is one (import it into a test module).

    These tiers test logic, not the disk: on a shared machine their many small
    fsyncs and the store's 512 fan-out directories would make them several
    times slower on a real disk. Removed after the test.
    """
    if not os.access(TMPFS, os.W_OK):
        yield tmp_path
        return
    folder = tempfile.mkdtemp(prefix="cosfs-test-", dir=TMPFS)
    try:
        yield pathlib.Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def trio_test(fn):
    """Run an ``async def`` test function under ``trio.run`` (pytest fixtures still work)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


def make_config(folder, *, chunk_size="64KiB", write_buffer=None, cache_size="1MiB", **extra):
    """A Config whose store and keys live in ``folder`` (created as needed)."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    data = {
        "store": "data",
        "keys": "keys",
        "appid": APPID,
        "region": REGION,
        "regions": [REGION, "ap-shanghai"],
        "buckets": [{"name": PLAIN}, {"name": ENC, "encryption": "AES256"}],
        "chunk_size": chunk_size,
        "cache_size": cache_size,
        "write_buffer": write_buffer if write_buffer is not None else chunk_size,
    }
    data.update(extra)
    return cosfs_config.from_dict(data, base_dir=folder)


class FaultyStore:
    """A LocalStore wrapper that fails the operations a test arms.

    ``fail(op, err=errno.EIO, times=None)`` makes ``op`` ("put", "get",
    "get_range", "delete", "sync_all") raise StoreError with ``err``; ``times``
    limits how many calls fail (None: until ``heal``). ``short_reads = True``
    halves every get/get_range result. ``hide(blob)`` makes a blob look missing.
    ``cold = True`` makes every ``nowait`` read report that it would wait for the disk;
    ``delay`` (seconds) slows every other ranged read down, as a disk that seeks;
    ``tells`` overrides ``tells_cold`` (whether the file system can tell a cold read).
    Every other attribute is the wrapped store's. Thread-safe like LocalStore.
    """

    def __init__(self, inner):
        self.inner = inner
        self._faults = {}
        self._lock = threading.Lock()
        self.short_reads = False
        self.cold = False
        self.tells = None  # what tells_cold says (None: what the wrapped store says)
        self.delay = 0
        self.hidden = set()
        self.calls = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fail(self, op, err=errno.EIO, times=None):
        with self._lock:
            self._faults[op] = [err, times]

    def heal(self):
        with self._lock:
            self._faults.clear()
        self.short_reads = False
        self.hidden.clear()

    def hide(self, blob_id):
        self.hidden.add(blob_id)

    def _check(self, op, blob_id=None):
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            fault = self._faults.get(op)
            if fault is not None:
                err, times = fault
                if times is not None:
                    if times <= 0:
                        del self._faults[op]
                        fault = None
                    else:
                        fault[1] -= 1
                        if fault[1] <= 0:
                            del self._faults[op]
            if fault is not None:
                raise StoreError("injected %s failure: %s" % (op, os.strerror(err)), errno=err)
        if blob_id is not None and blob_id in self.hidden and op != "put":
            raise StoreError("blob %s is missing" % blob_id.hex(), errno=errno.EIO)

    def put(self, blob_id, data, writeback=True):
        self._check("put")
        return self.inner.put(blob_id, data, writeback)

    def get(self, blob_id):
        self._check("get", blob_id)
        data = self.inner.get(blob_id)
        return data[:len(data) // 2] if self.short_reads else data

    @property
    def tells_cold(self):
        return self.inner.tells_cold if self.tells is None else self.tells

    def get_range(self, blob_id, offset, length, nowait=False):
        if nowait:
            with self._lock:
                self.calls["get_range_nowait"] = self.calls.get("get_range_nowait", 0) + 1
            if self.cold:
                return None
        elif self.delay:
            time.sleep(self.delay)
        self._check("get_range", blob_id)
        data = self.inner.get_range(blob_id, offset, length, nowait=nowait)
        if data is None:
            return None
        return data[:len(data) // 2] if self.short_reads else data

    def size(self, blob_id):
        self._check("size", blob_id)
        return self.inner.size(blob_id)

    def delete(self, blob_id):
        self._check("delete")
        return self.inner.delete(blob_id)

    def delete_many(self, blobs):
        # blob by blob through delete (and its faults), as LocalStore does
        return LocalStore.delete_many(self, blobs)

    def sync_all(self):
        self._check("sync_all")
        return self.inner.sync_all()

    def list(self):
        return self.inner.list()


@dataclass
class Env:
    """What ``fs_env`` yields: the opened store, its data path and filesystem layer."""

    config: object
    store: object
    objects: object
    fs: object
    nursery: object
    faulty: dict

    @property
    def catalog(self):
        return self.store.catalog

    def bucket(self, name=PLAIN):
        return self.fs.bucket_inode(name)

    @property
    def region_store(self):
        return self.store.stores[REGION]

    def blobs(self, region=REGION):
        return set(self.store.stores[region].list())

    async def new_file(self, name, bucket=PLAIN, parent=None, ctx=None):
        """Create and open a regular file; returns (fh, ino)."""
        parent = self.bucket(bucket) if parent is None else parent
        fh, inode = await self.fs.create(parent, name.encode() if isinstance(name, str) else name,
                                         0o644, os.O_RDWR, ctx or Ctx())
        return fh, inode.id

    async def drain_gc(self):
        """Delete every collectable garbage blob now."""
        await self.objects.collect_garbage()


@asynccontextmanager
async def fs_env(tmp_path, *, faulty=False, reopen_config=None, **config_kw):
    """Open (or create) a store under ``tmp_path`` and yield an :class:`Env`.

    ``faulty=True`` wraps every region store in a :class:`FaultyStore`
    (``env.faulty[region]``). At exit everything is committed, garbage is
    collected and the store is closed, unless the body raised.
    """
    cfg = reopen_config or make_config(tmp_path, **config_kw)
    store = open_store(cfg, create=True)
    try:
        wrapped = {}
        if faulty:
            for region, s in list(store.stores.items()):
                wrapped[region] = store.stores[region] = FaultyStore(s)
        objects, fs = build(store)
        ensure_buckets(fs, cfg)
        async with trio.open_nursery() as nursery:
            objects.attach(nursery)
            env = Env(cfg, store, objects, fs, nursery, wrapped)
            try:
                yield env
                for s in wrapped.values():
                    s.heal()
                await objects.commit_all()
                await objects.collect_garbage()
            finally:
                nursery.cancel_scope.cancel()
    finally:
        store.close()
