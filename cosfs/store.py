"""The chunk store: immutable blobs of opaque bytes, named by random 16-byte ids.

The store never interprets what it holds; for encrypted objects it only ever
sees sealed bytes. A blob is written once under a fresh name and never
modified, so readers can cache by blob id without invalidation.

Layout of :class:`LocalStore`: ``<root>/<first two hex digits>/<32 hex digits>``.
A blob is written straight to its final name: a crash mid-write leaves at worst
a partial blob that the catalog never references (an orphan that ``cosfs fsck``
removes), because the catalog commits only after ``put`` returned.

All methods block; callers on the trio thread run them with
``trio.to_thread.run_sync`` (see ``objects``). Every OS failure becomes a
:class:`~cosfs.errors.StoreError` carrying the original errno.
"""

import ctypes
import errno
import logging
import os
import threading

from .errors import StoreError

log = logging.getLogger(__name__)


#: Above this many unsynced blobs, sync the whole file system at once.
SYNCFS_THRESHOLD = 64

#: Blob writes fail with ENOSPC while less than this (at most 1/32 of the file system) would
#: stay free: the catalog beside the blobs keeps room to record deletions, so a full store
#: can be cured by deleting objects (SQLite needs space even to delete rows).
RESERVE_MAX = 4 * 1024 * 1024


def _syncfs(path):
    """syncfs(2) on the file system holding ``path``; False if unavailable or failed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return False
    try:
        return libc.syncfs(fd) == 0
    except AttributeError:
        return False
    finally:
        os.close(fd)


def blob_name(blob_id: bytes) -> str:
    """Hex name of a blob id."""
    return blob_id.hex()


class LocalStore:
    """Blobs in a local directory.

    ``put`` writes into the page cache only: that survives a kill of the
    daemon. The store remembers which blobs are not yet on stable storage;
    :meth:`sync_all` fsyncs them and their directories. The data path calls it
    before any catalog commit that must survive a machine crash, so a durable
    catalog never points at a blob that a power loss could take away.
    """

    def __init__(self, root):
        self.root = os.fspath(root)
        #: callable giving more bytes to keep free besides the reserve (the catalog's WAL,
        #: which its checkpoint may need as room in the database file)
        self.headroom = None
        self._unsynced = set()
        self._lock = threading.Lock()

    # -- setup -----------------------------------------------------------
    def create(self):
        """Create the directory tree (idempotent)."""
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for i in range(256):
                os.makedirs(os.path.join(self.root, "%02x" % i), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError("cannot create chunk store %s: %s" % (self.root, exc.strerror),
                             errno=exc.errno) from None

    def _path(self, blob_id: bytes) -> str:
        name = blob_id.hex()
        return os.path.join(self.root, name[:2], name)

    def _check_room(self, blob_id, size):
        """StoreError(ENOSPC) unless ``size`` bytes fit and the catalog's reserve stays free."""
        try:
            sv = os.statvfs(self.root)
        except OSError:
            return  # the write itself will say what is wrong
        reserve = min(RESERVE_MAX, sv.f_blocks * sv.f_frsize // 32)
        if self.headroom is not None:
            reserve += self.headroom()
        free = (sv.f_bfree if os.geteuid() == 0 else sv.f_bavail) * sv.f_frsize
        if free < size + reserve:
            raise StoreError("cannot write blob %s: %s (%d KiB are kept for the catalog)"
                             % (blob_id.hex(), os.strerror(errno.ENOSPC), reserve // 1024),
                             errno=errno.ENOSPC)

    # -- blob operations (block: run in a worker thread) -----------------
    def put(self, blob_id: bytes, data) -> None:
        """Store ``data`` (bytes-like) as a new blob. Raises StoreError; never overwrites."""
        path = self._path(blob_id)
        self._check_room(blob_id, len(data))
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

    def get_range(self, blob_id: bytes, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; a short result means the blob is short (caller checks)."""
        path = self._path(blob_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError("blob %s is missing" % blob_id.hex(), errno=errno.EIO) from None
        except OSError as exc:
            raise StoreError("cannot open blob %s: %s" % (blob_id.hex(), exc.strerror),
                             errno=exc.errno) from None
        try:
            return os.pread(fd, length, offset)
        except OSError as exc:
            raise StoreError("cannot read blob %s: %s" % (blob_id.hex(), exc.strerror),
                             errno=exc.errno) from None
        finally:
            os.close(fd)

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
        self._unlink_quietly(self._path(blob_id), report=True)

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
        """Make every blob written so far, and its directory entry, durable (blocks)."""
        with self._lock:
            blobs, self._unsynced = self._unsynced, set()
        if len(blobs) > SYNCFS_THRESHOLD and _syncfs(self.root):
            return  # one syncfs beats hundreds of fsyncs (e.g. after a large sequential write)
        dirs = set()
        try:
            for blob_id in blobs:
                path = self._path(blob_id)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # deleted meanwhile (superseded before commit)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                dirs.add(os.path.dirname(path))
        except OSError as exc:
            with self._lock:
                self._unsynced |= blobs
            raise StoreError("cannot sync blobs: %s" % exc.strerror, errno=exc.errno) from None
        for d in dirs:
            try:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StoreError("cannot sync %s: %s" % (d, exc.strerror), errno=exc.errno) from None

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
