"""Catalog snapshots in the S3 stores: what lets a store outlive the machine that mounts it.

Blobs on an S3 store survive the loss of the mounting machine; the catalog, a
SQLite file on that machine, does not. So the catalog is copied into every S3
store of the config as a sealed snapshot:

* **When.** Every ``interval`` seconds if the catalog changed; before an
  ``fsync`` (or ``fsyncdir``, ``syncfs``, unmount) returns, when ``on_fsync``
  is set (concurrent syncs share one snapshot); and before ``cosfs fsck``
  deletes released blobs. ``covering()`` waits for a snapshot that started
  after it was called, so everything committed before the call is in it.
* **Garbage is held back.** A blob released by a commit is deleted from an S3
  store only when the newest uploaded snapshot lists it as garbage
  (:meth:`Snapshotter.may_delete`): every blob that the newest snapshot
  references is still there, so restoring it loses nothing it recorded.
* **Format** (``docs/format.md``, "Catalog snapshots"): header ``CSNAP``,
  format byte, the length of a wrapped key and the key: a fresh random
  AES-256 key per snapshot, wrapped by the key store's current master key with
  the snapshot's name as associated data (a snapshot renamed or swapped for
  another fails). Then records of ``u32 length || AES-256-GCM ciphertext`` of
  1 MiB segments of the zlib-compressed database; segment ``i`` uses the nonce
  ``i`` (12 bytes, big endian; the key is never reused) and the associated data
  ``SHA-256(header) || u64 i || u8 final``, so a reordered, dropped, truncated
  or altered segment fails with :class:`~cosfs.errors.IntegrityError`.
* **Names** ``catalog-<20-digit ns since the epoch>-<8 hex>.snap`` below the
  store's ``.cosfs/snapshots/``: the newest sorts last. The newest ``keep``
  are kept.

Copies are made with SQLite's backup API from a connection of their own (a
consistent read of committed transactions), in a worker thread; the trio
thread only counts changes and wakes the worker.
"""

import errno
import hashlib
import logging
import os
import sqlite3
import struct
import tempfile
import time
import zlib

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.exceptions import InvalidTag

from .catalog import read_only_uri
from .errors import CosfsError, IntegrityError

log = logging.getLogger(__name__)

MAGIC = b"CSNAP"
FORMAT = 1
SEGMENT = 1 << 20
_HEADER = struct.Struct(">5sBH")
_RECORD = struct.Struct(">I")
_AAD = struct.Struct(">QB")
_TAG = 16
SUB_PREFIX = "snapshots/"
WRAP_CONTEXT = b"cosfs catalog snapshot\0"


def new_name(now_ns=None):
    """A fresh snapshot name; later names sort after earlier ones."""
    return "catalog-%020d-%s.snap" % (time.time_ns() if now_ns is None else now_ns,
                                      os.urandom(4).hex())


def taken_ns(name):
    """Nanoseconds since the epoch in ``name`` (0 if it is not a snapshot name)."""
    try:
        return int(name.split("-")[1])
    except (IndexError, ValueError):
        return 0


def taken_at(name):
    """Seconds since the epoch at which ``name`` was taken (None if it is not a snapshot)."""
    ns = taken_ns(name)
    return ns / 1e9 if ns else None


# -- the sealed format (pure) -------------------------------------------------------

def seal(keys, name, src, dst):
    """Compress and seal the file object ``src`` into ``dst`` as snapshot ``name``."""
    data_key = AESGCM.generate_key(256)
    wrapped = keys.wrap(data_key, WRAP_CONTEXT + name.encode())
    header = _HEADER.pack(MAGIC, FORMAT, len(wrapped)) + wrapped
    dst.write(header)
    context = hashlib.sha256(header).digest()
    aead = AESGCM(data_key)
    squeeze = zlib.compressobj(6)
    pending = b""
    index = 0

    def put(part, final):
        sealed = aead.encrypt(index.to_bytes(12, "big"), part, context + _AAD.pack(index, final))
        dst.write(_RECORD.pack(len(sealed)) + sealed)

    while True:
        block = src.read(SEGMENT)
        pending += squeeze.compress(block) if block else squeeze.flush()
        while len(pending) > SEGMENT:  # the final segment keeps 0 to SEGMENT bytes
            put(pending[:SEGMENT], False)
            pending = pending[SEGMENT:]
            index += 1
        if not block:
            put(pending, True)
            return


def unseal(keys, name, src, dst):
    """Authenticate, decrypt and decompress snapshot ``name`` from ``src`` into ``dst``.

    IntegrityError for anything that is not exactly a snapshot sealed under this
    name with a master key of ``keys`` (KeyStoreError when that key is missing).
    """
    head = src.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise IntegrityError("catalog snapshot %s is truncated" % name)
    magic, fmt, wrapped_len = _HEADER.unpack(head)
    if magic != MAGIC:
        raise IntegrityError("%s is not a cosfs catalog snapshot" % name)
    if fmt != FORMAT:
        raise IntegrityError("catalog snapshot %s has format %d; this release reads format %d"
                             % (name, fmt, FORMAT))
    wrapped = src.read(wrapped_len)
    if len(wrapped) < wrapped_len:
        raise IntegrityError("catalog snapshot %s is truncated" % name)
    data_key = keys.unwrap(wrapped, WRAP_CONTEXT + name.encode())
    context = hashlib.sha256(head + wrapped).digest()
    aead = AESGCM(data_key)
    inflate = zlib.decompressobj()
    index = 0
    while True:
        rec = src.read(_RECORD.size)
        if len(rec) < _RECORD.size:
            raise IntegrityError("catalog snapshot %s is truncated" % name)
        (length,) = _RECORD.unpack(rec)
        if not _TAG <= length <= SEGMENT + _TAG:
            raise IntegrityError("catalog snapshot %s is damaged (segment %d)" % (name, index))
        sealed = src.read(length)
        if len(sealed) < length:
            raise IntegrityError("catalog snapshot %s is truncated" % name)
        nonce = index.to_bytes(12, "big")
        final = None
        for flag in (False, True):
            try:
                part = aead.decrypt(nonce, sealed, context + _AAD.pack(index, flag))
                final = flag
                break
            except InvalidTag:
                continue
        if final is None:
            raise IntegrityError("catalog snapshot %s failed authentication at segment %d"
                                 % (name, index))
        try:
            dst.write(inflate.decompress(part))
        except zlib.error:
            raise IntegrityError("catalog snapshot %s does not decompress" % name) from None
        index += 1
        if final:
            if src.read(1):
                raise IntegrityError("catalog snapshot %s has data after its end" % name)
            dst.write(inflate.flush())
            if not inflate.eof:
                raise IntegrityError("catalog snapshot %s does not decompress" % name)
            return


# -- copies of the catalog ---------------------------------------------------------

def copy_catalog(catalog_path, dst_path):
    """A consistent copy of the committed catalog at ``dst_path``; returns the set of
    blobs it lists as garbage (released, referenced by none of its chunks)."""
    src = sqlite3.connect(read_only_uri(catalog_path), uri=True, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=5000")
        dst = sqlite3.connect(dst_path, isolation_level=None)
        try:
            src.backup(dst)  # one step: one read transaction
            garbage = {bytes(r[0]) for r in dst.execute(
                "SELECT blob FROM garbage g WHERE NOT EXISTS"
                " (SELECT 1 FROM chunks c WHERE c.blob=g.blob)")}
            # the copy must not need a WAL beside it
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    return garbage


def targets_of(stores):
    """The distinct S3 stores among ``stores`` (region -> store), in a stable order."""
    seen = {}
    for region in sorted(stores):
        s = stores[region]
        if hasattr(s, "upload_meta"):
            seen.setdefault((s.endpoint, s.bucket, s.prefix), s)
    return list(seen.values())


def s3_stores_of(stores):
    """Every S3 store among ``stores`` (region -> store): each has its own upload queue."""
    return [stores[r] for r in sorted(stores) if hasattr(stores[r], "upload_meta")]


def take(catalog_path, keys, targets, keep=3, flush=None):
    """Copy, seal and upload one snapshot to every target; prune older ones beyond
    ``keep``. ``flush``: the stores whose write-back queues must be on the service
    before the snapshot goes up (default: ``targets``). Blocks. Returns (name, garbage
    blob set). StoreError if an upload fails."""
    try:
        return _take(catalog_path, keys, targets, keep, targets if flush is None else flush)
    except (OSError, sqlite3.Error) as exc:
        full = getattr(exc, "errno", None) == errno.ENOSPC or "full" in str(exc)
        raise CosfsError("cannot make a catalog snapshot: %s" % exc,
                         errno=errno.ENOSPC if full else errno.EIO) from None


def _take(catalog_path, keys, targets, keep, flush):
    folder = os.path.dirname(os.path.abspath(catalog_path))
    # later than every snapshot there, whatever this machine's clock says: the newest by
    # name is what restore takes, and what the garbage rule protects
    newest = max([taken_ns(n) for n, _, _ in list_snapshots(targets)] + [0])
    name = new_name(max(time.time_ns(), newest + 1))
    started = time.monotonic()
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".snapshot-", suffix=".db") as plain, \
            tempfile.NamedTemporaryFile(dir=folder, prefix=".snapshot-", suffix=".sealed") as out:
        garbage = copy_catalog(catalog_path, plain.name)
        # with write-back, blobs the copy names may still wait in a local queue: the
        # snapshot goes up only after them (everything staged before the copy was made)
        for store in flush:
            if hasattr(store, "wait_uploaded"):
                store.wait_uploaded()
        with open(plain.name, "rb") as src:
            seal(keys, name, src, out)
        out.flush()
        size = out.tell()
        for target in targets:
            target.upload_meta(SUB_PREFIX + name, out.name)
    for target in targets:
        try:
            old = [n for n, _, _ in target.list_meta(SUB_PREFIX)
                   if n.endswith(".snap")][:-keep]
            for n in old:
                target.delete_meta(n)
        except CosfsError as exc:
            log.warning("could not prune old catalog snapshots in %s: %s", target.root, exc)
    log.info("catalog snapshot %s (%d bytes sealed) uploaded to %d store(s) in %.2f s",
             name, size, len(targets), time.monotonic() - started)
    return name, garbage


def list_snapshots(targets):
    """[(name, size, target)] of every snapshot in ``targets``, oldest first."""
    found = []
    for target in targets:
        for n, size, _ in target.list_meta(SUB_PREFIX):
            if n.endswith(".snap"):
                found.append((n[len(SUB_PREFIX):], size, target))
    found.sort(key=lambda item: item[0])
    return found


def fetch(keys, name, target, dst_path):
    """Download and open snapshot ``name`` from ``target`` into a new SQLite file at
    ``dst_path`` (fsynced). IntegrityError if it fails authentication or is not a
    sound database."""
    folder = os.path.dirname(os.path.abspath(dst_path))
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".restore-", suffix=".sealed") as sealed:
        target.download_meta(SUB_PREFIX + name, sealed.name)
        fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(sealed.name, "rb") as src, open(fd, "wb") as dst:
            unseal(keys, name, src, dst)
            dst.flush()
            os.fsync(dst.fileno())
    db = sqlite3.connect(read_only_uri(dst_path), uri=True)
    try:
        result = db.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        result = str(exc)
    finally:
        db.close()
    if result != "ok":
        raise IntegrityError("catalog snapshot %s is not a sound database: %s" % (name, result))


class Snapshotter:
    """Snapshots of one mount's catalog into its S3 stores (see the module doc).

    ``catalog`` is the open :class:`~cosfs.catalog.Catalog` (its ``total_changes``
    tell whether anything changed); ``targets`` the S3 stores; ``limiter`` the
    worker threads' capacity limiter.
    """

    def __init__(self, catalog, keys, targets, limiter, *, interval=30.0, on_fsync=True, keep=3,
                 flush=None):
        self.catalog = catalog
        self.keys = keys
        self.targets = targets
        #: every S3 store with an upload queue to wait for (default: the targets)
        self.flush = list(targets if flush is None else flush)
        self.limiter = limiter
        # waits for upload queues take no worker slot of the data path
        self._wait_limiter = trio.CapacityLimiter(64)
        self.interval = interval
        self.on_fsync = on_fsync
        self.keep = keep
        self.last_name = None
        self.last_time = None
        self.failures = 0
        self._safe = None  # garbage of the newest uploaded snapshot (None: none yet)
        self._changes = None  # catalog.db.total_changes at the start of the last snapshot
        self._started = 0  # snapshots started so far
        self._finished = 0  # ... and finished (successfully or not)
        self._running = False
        self._done = trio.Event()
        self._wakeup = trio.Event()

    def status(self) -> dict:
        """The newest snapshot uploaded by this daemon (name, age) and failures so far
        (for ``cosfs status``)."""
        return {"last": self.last_name,
                "age_seconds": None if self.last_time is None else int(time.time() -
                                                                       self.last_time),
                "failures": self.failures, "stores": [t.root for t in self.targets],
                "interval": self.interval, "on_fsync": self.on_fsync}

    def may_delete(self, blob):
        """Whether a released blob of an S3 store may go: the newest snapshot lists it
        as garbage, so no snapshot that a restore would use references it."""
        return self._safe is not None and blob in self._safe

    def changed(self):
        return self._changes != self.catalog.db.total_changes

    async def run(self):
        """Snapshot at the start (the store as it was opened, e.g. after offline commands)
        and then every ``interval`` seconds when the catalog changed."""
        first = True
        while True:
            if not first:
                with trio.move_on_after(self.interval if self.interval > 0 else 3600):
                    await self._wakeup.wait()
            self._wakeup = trio.Event()
            if (first or self.interval > 0) and self.changed():
                try:
                    await self._snapshot()
                except CosfsError as exc:
                    log.warning("catalog snapshot failed: %s; the next fsync or interval "
                                "tries again", exc)
                except Exception:
                    log.exception("catalog snapshot failed; the next fsync or interval tries "
                                  "again")
            first = False

    async def after_fsync(self):
        """What an fsync waits for besides the local catalog sync: a covering snapshot
        (``on_fsync``), else only the upload of blobs that write-back still queues."""
        if self.on_fsync:
            await self.covering()
        else:
            await self.uploaded()

    async def uploaded(self):
        """Return once every blob stored before this call is on the service."""
        for store in self.flush:
            if getattr(store, "staging", None) is not None:
                await trio.to_thread.run_sync(store.wait_uploaded, limiter=self._wait_limiter)

    async def covering(self):
        """Return once a snapshot that started after this call was uploaded (at once when
        nothing changed since the last one started). Raises StoreError if it failed."""
        while True:
            if self._running:
                # it may have started before our commit: wait, then look again
                await self._done.wait()
                continue
            if self.changed():
                await self._snapshot()
            return

    async def _snapshot(self):
        while self._running:  # one at a time; the next one covers every waiter
            await self._done.wait()
        self._running = True
        self._changes = self.catalog.db.total_changes
        try:
            name, garbage = await trio.to_thread.run_sync(
                take, self.catalog.path, self.keys, self.targets, self.keep, self.flush,
                limiter=self._wait_limiter)
        except BaseException:
            self.failures += 1
            self._changes = None  # try again next time
            raise
        finally:
            self._running = False
            done, self._done = self._done, trio.Event()
            done.set()
        self._safe = garbage
        self.last_name, self.last_time = name, time.time()
