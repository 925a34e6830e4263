"""The chunk store: immutable blobs of opaque bytes, named by random 16-byte ids.

The store never interprets what it holds; for encrypted objects it only ever
sees sealed bytes. A blob is written once under a fresh name and never
modified, so readers can cache by blob id without invalidation.

Layout of :class:`LocalStore`: ``<root>/<first two hex digits>/<32 hex digits>``.
A blob is written straight to its final name: a crash mid-write leaves at worst
a partial blob that the catalog never references (an orphan that the next start
after the crash, ``mount.remove_orphans``, or ``cosfs fsck`` removes), because the catalog commits only after ``put`` returned, and makes a
commit durable only after :meth:`LocalStore.sync_all` made its blobs durable.

All methods block; callers on the trio thread run them with
``trio.to_thread.run_sync`` (see ``objects``). Every OS failure becomes a
:class:`~cosfs.errors.StoreError` carrying the original errno.
"""

import collections
import concurrent.futures
import errno
import logging
import os
import threading

from . import durable
from .errors import StoreError

log = logging.getLogger(__name__)


#: Threads that fsync blobs and directories in parallel at a durability point
#: (fsync waits for the disk, not the CPU; the file system batches concurrent ones).
SYNC_THREADS = 8
#: From this many unsynced blobs on, a durability point is one syncfs(2) of the store's file
#: system where that promises as much as fdatasync of each (see :class:`durable.WholeSync`):
#: 3,000 blobs of 24 KiB took 0.9-1.1 s and 0.5 s of CPU one by one, 0.15 s that way.
#: Below it, the blobs go one by one, and other files' dirty pages do not delay the sync.
SYNCFS_MIN_BLOBS = 32

#: Blobs at least this large start their write-back as soon as they are written,
#: so that the durability point has little left to wait for.
EARLY_WRITEBACK = 256 * 1024

#: Blob writes fail with ENOSPC while less than this (at most 1/32 of the file system) would
#: stay free: the catalog beside the blobs keeps room to record deletions, so a full store
#: can be cured by deleting objects (SQLite needs space even to delete rows).
RESERVE_MAX = 4 * 1024 * 1024


#: Read-only descriptors of recently read blobs kept open: a random read of a blob
#: is then one pread, with no open and close around it.
OPEN_BLOBS = 256

_PAGE = os.sysconf("SC_PAGE_SIZE")


class _OpenBlob:
    """A cached read-only descriptor; closed once evicted and no reader uses it."""

    __slots__ = ("fd", "users", "evicted")

    def __init__(self, fd):
        self.fd = fd
        self.users = 0
        self.evicted = False


def blob_name(blob_id: bytes) -> str:
    """Hex name of a blob id."""
    return blob_id.hex()


class LocalStore:
    """Blobs in a local directory.

    ``put`` writes into the page cache only: that survives a kill of the
    daemon. The store remembers which blobs are not yet on stable storage;
    :meth:`sync_all` fdatasyncs each of them and fsyncs every directory that
    gained one, the only primitives every file system honours (see
    :mod:`cosfs.durable`), or, for many blobs on ext3, ext4, xfs or btrfs, makes
    them all durable with one syncfs. The data path calls it before any catalog commit
    that must survive a machine crash, so a durable catalog never points at a
    blob that a power loss could take away.
    """

    def __init__(self, root):
        self.root = os.fspath(root)
        #: callable giving more bytes to keep free besides the reserve (the catalog's WAL,
        #: which its checkpoint may need as room in the database file)
        self.headroom = None
        self._unsynced = set()
        #: blobs whose fdatasync failed: see _sync_blob
        self._suspect = set()
        self._lock = threading.Lock()
        #: held for a whole sync_all: a second caller must not return while blobs it
        #: depends on are still being synced by the first
        self._sync_lock = threading.Lock()
        self._pool = None
        #: durable.WholeSync of the store's file system, False where there is none; opened
        #: before the first blob is written, so that its syncfs sees every write-back error
        self._whole = None
        self._sizeless_warned = False
        self._open = collections.OrderedDict()  # blob id -> _OpenBlob, oldest first
        self._nowait = hasattr(os, "RWF_NOWAIT")  # see get_range

    # -- setup -----------------------------------------------------------
    def create(self):
        """Create the directory tree (idempotent); new directories are durable on return."""
        try:
            durable.makedirs(self.root, 0o700)
            created = False
            for i in range(256):
                d = os.path.join(self.root, "%02x" % i)
                if not os.path.isdir(d):
                    os.makedirs(d, mode=0o700, exist_ok=True)
                    created = True
            if created:
                durable.fsync_dir(self.root)
        except OSError as exc:
            raise StoreError("cannot create chunk store %s: %s" % (self.root, exc.strerror),
                             errno=exc.errno) from None

    def _path(self, blob_id: bytes) -> str:
        name = blob_id.hex()
        return os.path.join(self.root, name[:2], name)

    def check_room(self, size, what="packed chunk"):
        """StoreError(ENOSPC) unless ``size`` more bytes (data the catalog will hold, which
        lives beside the blobs) fit while the catalog's reserve stays free."""
        self._check_room(None, size, what)

    def _check_room(self, blob_id, size, what=None):
        """StoreError(ENOSPC) unless ``size`` bytes fit and the catalog's reserve stays free.

        A file system that reports no size (0 blocks, as some FUSE and network
        file systems do) cannot be checked: the write is let through, and the
        first such write logs one warning.
        """
        try:
            sv = os.statvfs(self.root)
        except OSError:
            return  # the write itself will say what is wrong
        if sv.f_blocks == 0:
            if not self._sizeless_warned:
                self._sizeless_warned = True
                log.warning("the file system of chunk store %s reports no size; the free-space "
                            "reserve for the catalog is not enforced", self.root)
            return
        reserve = min(RESERVE_MAX, sv.f_blocks * sv.f_frsize // 32)
        if self.headroom is not None:
            reserve += self.headroom()
        free = (sv.f_bfree if os.geteuid() == 0 else sv.f_bavail) * sv.f_frsize
        if free < size + reserve:
            raise StoreError("cannot write %s: %s (%d KiB are kept for the catalog)"
                             % (what or "blob " + blob_id.hex(), os.strerror(errno.ENOSPC),
                                reserve // 1024), errno=errno.ENOSPC)

    # -- blob operations (block: run in a worker thread) -----------------
    def put(self, blob_id: bytes, data, writeback=True) -> None:
        """Store ``data`` (bytes-like) as a new blob. Raises StoreError; never overwrites.

        ``writeback``: start writing a large blob to the disk at once (see
        :data:`EARLY_WRITEBACK`). False for a blob that will likely be replaced before
        any commit names it: deleted before the kernel writes it back, it never costs
        the disk anything.
        """
        path = self._path(blob_id)
        self._check_room(blob_id, len(data))
        if self._whole is None:
            self._open_whole()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError("cannot create blob %s: %s" % (blob_id.hex(), exc.strerror),
                             errno=exc.errno) from None
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            os.close(fd)
            self._unlink_quietly(path)
            raise StoreError("cannot write blob %s: %s" % (blob_id.hex(), exc.strerror),
                             errno=exc.errno) from None
        if writeback and len(data) >= EARLY_WRITEBACK:
            durable.start_writeback(fd)
        os.close(fd)
        with self._lock:
            self._unsynced.add(blob_id)

    def get(self, blob_id: bytes) -> bytes:
        """Whole blob. Raises StoreError (EIO if missing)."""
        path = self._path(blob_id)
        try:
            with open(path, "rb", buffering=0) as f:
                return f.read()
        except FileNotFoundError:
            raise StoreError("blob %s is missing" % blob_id.hex(), errno=errno.EIO) from None
        except OSError as exc:
            raise StoreError("cannot read blob %s: %s" % (blob_id.hex(), exc.strerror),
                             errno=exc.errno) from None

    def get_range(self, blob_id: bytes, offset: int, length: int, nowait=False):
        """``length`` bytes at ``offset``; a short result means the blob is short (caller checks).

        Reads through a cached descriptor (blobs never change once written). With
        ``nowait``, None instead of waiting for the disk when the bytes are not all in
        the page cache (``RWF_NOWAIT``; the kernel starts reading them meanwhile): the
        caller on the trio thread then reads in a worker. Where the file system cannot
        tell, the read simply waits.
        """
        ob = self._acquire(blob_id)
        try:
            if nowait and self._nowait:
                data = self._read_nowait(ob.fd, offset, length)
                if data is not False:
                    return data
            return os.pread(ob.fd, length, offset)
        except OSError as exc:
            raise StoreError("cannot read blob %s: %s" % (blob_id.hex(), exc.strerror),
                             errno=exc.errno) from None
        finally:
            self._release(ob)

    @property
    def tells_cold(self):
        """Whether ``get_range(nowait=True)`` can tell a read that would wait for the disk
        (False once the file system refused ``RWF_NOWAIT``)."""
        return self._nowait

    def _read_nowait(self, fd, offset, length):
        """The bytes, None if the read would wait, False if the file system cannot say."""
        buf = bytearray(length)
        try:
            n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            log.info("chunk store %s: no RWF_NOWAIT reads (%s); cold reads wait on the "
                     "trio thread", self.root, exc.strerror)
            self._nowait = False
            return False
        # short: the end of the blob, or only the pages before an uncached one (then it
        # ends on a page boundary)
        if n < length and (offset + n) % _PAGE == 0 and offset + n < os.fstat(fd).st_size:
            return None
        del buf[n:]
        return buf

    def _acquire(self, blob_id):
        with self._lock:
            ob = self._open.get(blob_id)
            if ob is not None:
                self._open.move_to_end(blob_id)
                ob.users += 1
                return ob
        try:
            fd = os.open(self._path(blob_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError("blob %s is missing" % blob_id.hex(), errno=errno.EIO) from None
        except OSError as exc:
            raise StoreError("cannot open blob %s: %s" % (blob_id.hex(), exc.strerror),
                             errno=exc.errno) from None
        ob = _OpenBlob(fd)
        ob.users = 1
        with self._lock:
            if blob_id in self._open or os.fstat(fd).st_nlink == 0:
                # another reader cached it meanwhile, or it was deleted while being opened
                # (a cached descriptor would hold its space): use it for this read only
                ob.evicted = True
            else:
                self._open[blob_id] = ob
                while len(self._open) > OPEN_BLOBS:
                    self._evict(self._open.popitem(last=False)[1])
        return ob

    def _release(self, ob):
        with self._lock:
            ob.users -= 1
            if ob.evicted and not ob.users:
                os.close(ob.fd)

    @staticmethod
    def _evict(ob):
        """Close ``ob`` now or, if a read is under way, when it ends (lock held)."""
        ob.evicted = True
        if not ob.users:
            os.close(ob.fd)

    def close(self):
        """Close the cached descriptors (the store stays usable)."""
        with self._lock:
            while self._open:
                self._evict(self._open.popitem()[1])

    def _open_whole(self):
        """Decide, once and before the first blob is written, whether syncs may use syncfs."""
        folders = [os.path.join(self.root, "%02x" % i) for i in range(256)]
        whole = durable.WholeSync.open(self.root, folders)
        with self._lock:
            if self._whole is None:
                self._whole = whole or False
                if whole:
                    log.debug("chunk store %s is on %s: many blobs are synced by syncfs",
                              self.root, whole.kind)

    def size(self, blob_id: bytes) -> int:
        """Length of a stored blob; StoreError if missing."""
        try:
            return os.stat(self._path(blob_id)).st_size
        except OSError as exc:
            raise StoreError("blob %s: %s" % (blob_id.hex(), exc.strerror), errno=exc.errno) from None

    def delete(self, blob_id: bytes) -> None:
        """Remove a blob; a missing blob is not an error."""
        with self._lock:
            self._unsynced.discard(blob_id)
            self._suspect.discard(blob_id)
            ob = self._open.pop(blob_id, None)
            if ob is not None:
                self._evict(ob)
        self._unlink_quietly(self._path(blob_id), report=True)

    def delete_many(self, blobs):
        """Delete blobs in order; returns those deleted. Stops at the first failure, which
        it logs as a warning (the rest stays for a later retry)."""
        done = []
        try:
            for blob in blobs:
                self.delete(blob)
                done.append(blob)
        except StoreError as exc:
            log.warning("garbage collection: %s (will retry)", exc)
        return done

    def _unlink_quietly(self, path, report=False):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if report:
                raise StoreError("cannot delete %s: %s" % (os.path.basename(path), exc.strerror),
                                 errno=exc.errno) from None

    def sync_all(self) -> None:
        """Make every blob written so far, and its directory entry, durable (blocks).

        Each unsynced blob is fdatasynced and then each directory that gained
        one is fsynced, spread over :data:`SYNC_THREADS` threads. On failure
        the blobs stay listed as unsynced and StoreError is raised: the caller
        must not make durable any catalog state that references them.
        """
        with self._sync_lock:
            self._sync_all(self._whole)

    def _sync_all(self, whole):
        with self._lock:
            blobs, self._unsynced = self._unsynced, set()
        if not blobs:
            return
        try:
            if whole and len(blobs) >= SYNCFS_MIN_BLOBS and not self._suspect:
                try:
                    whole.sync()
                except OSError:
                    # the error is now collected: a later syncfs would not see it again,
                    # but the fdatasync of each blob still reports its own
                    self._whole = False
                    raise
            else:
                order = list(blobs)
                present = [b for b, ok in zip(order, self._each(self._sync_blob, order)) if ok]
                dirs = {os.path.dirname(self._path(b)) for b in present}
                self._each(durable.fsync_dir, dirs)
        except OSError as exc:
            with self._lock:
                self._unsynced |= blobs
            log.error("chunk store %s: cannot make blobs durable: %s", self.root, exc)
            raise StoreError("cannot sync blobs: %s" % exc.strerror, errno=exc.errno) from None

    def sync_everything(self) -> int:
        """Make every blob in the store durable (after a crash of an earlier process, whose
        record of unsynced blobs was lost with it). Returns the number of blobs."""
        blobs = list(self.list())
        with self._lock:
            self._unsynced.update(blobs)
        with self._sync_lock:
            # one by one: a write-back error of the earlier process may have been collected
            # by a syncfs since, but fdatasync of the blob still reports it
            self._sync_all(None)
        return len(blobs)

    def _sync_blob(self, blob_id):
        """fdatasync one blob; False if it was deleted meanwhile (superseded before commit).

        The kernel reports a write-back error once: after a failed fdatasync, a second
        one answers 0 whatever the disk holds, and the page cache need not hold the
        blob's bytes any more (btrfs re-reads them, a failed allocation drops them). So
        a blob whose fdatasync failed stays suspect: every later sync fails with EIO
        until the blob is deleted (superseded or collected) or the daemon restarts.
        """
        path = self._path(blob_id)
        with self._lock:
            suspect = blob_id in self._suspect
        if suspect:
            if not os.path.lexists(path):
                with self._lock:
                    self._suspect.discard(blob_id)
                return False
            raise OSError(errno.EIO, "an earlier fdatasync of blob %s failed: its data may "
                          "not be on the disk" % blob_id.hex())
        try:
            durable.fdatasync_path(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            with self._lock:
                self._suspect.add(blob_id)
            log.error("chunk store %s: fdatasync of blob %s failed (%s): durability points "
                      "fail until it is deleted or the daemon restarts; check the disk and "
                      "run 'cosfs fsck --verify' once unmounted", self.root, blob_id.hex(),
                      exc.strerror)
            raise
        return True

    def _each(self, fn, items):
        """[fn(item) for item in items], in parallel threads when there are several."""
        items = list(items)
        if len(items) <= 2:
            return [fn(i) for i in items]
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    SYNC_THREADS, thread_name_prefix="cosfs-sync")
            pool = self._pool
        return list(pool.map(fn, items))

    @property
    def unsynced_count(self):
        return len(self._unsynced)

    def list(self):
        """Yield every blob id in the store (for fsck)."""
        for sub in sorted(os.listdir(self.root)):
            d = os.path.join(self.root, sub)
            if len(sub) != 2 or not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                if len(name) == 32:
                    try:
                        yield bytes.fromhex(name)
                    except ValueError:
                        continue

    def statvfs(self):
        """os.statvfs of the store's file system."""
        return os.statvfs(self.root)
