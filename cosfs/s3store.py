"""A chunk store on an S3-compatible object service (SeaweedFS, Ceph RGW, MinIO, COS).

:class:`S3Store` has exactly the interface of :class:`cosfs.store.LocalStore`
(``put/get/get_range/size/delete/delete_many/list/sync_all/sync_everything/
check_room/statvfs/create/close``), so the data path, the collector and fsck
use either without knowing which. It sits beside ``store`` in the layering:
like it, it holds opaque immutable blobs and never sees plaintext of an
encrypted object (chunks are sealed before they reach it).

Contract:

* **Write-through** (the default). ``put`` returns only once the service
  acknowledged the object (with a Content-MD5 the service checks), so the
  catalog, which commits after ``put`` returned, never references a blob the
  service does not hold; ``sync_all`` has nothing left to do. A blob is the
  object ``<prefix><32 hex digits>`` in the configured bucket.
* **Write-back** (``write_back``). ``put`` stages the blob as a local file of
  an :class:`UploadQueue` and returns; background threads upload the queue.
  ``sync_all`` makes the staged files durable locally (the queue survives a
  crash and is resumed by ``create``), and :meth:`S3Store.wait_uploaded` is
  what an fsync waits for besides.
* **Store objects** (``put_meta``... ``<prefix>.cosfs/<name>``): catalog
  snapshots and the lease, never taken for blobs.
* **Retries.** Timeouts, dropped or refused connections, HTTP 500/502/503/504
  and the throttling codes (``SlowDown``...) are retried with exponential
  backoff and full jitter for up to ``retry_time`` seconds; then the call
  raises :class:`~cosfs.errors.StoreError` with ``EIO`` after one ERROR log
  line naming the endpoint, the operation, the blob and the last error. Other
  errors (access denied, no such bucket) fail at once with a one-line
  message. botocore's own retries are turned off so this is the only policy.
* **Read cache.** Blobs read are kept as files in a local folder, bounded by
  ``cache_size`` (least recently used first out). Blobs are immutable, so the
  cache is never invalidated; a deleted blob leaves it at once. A cache file
  appears under its name only complete (written aside, then renamed); after
  an unclean shutdown the cache is emptied (``drop_cache``), because a rename
  that was not synced may survive a power cut with partial content.
* **Deletes** of released blobs go in batches of up to 1000 keys per
  multi-object delete (``delete_many``), retried like everything else; keys
  the service refused stay for the collector's next pass.
* Free space: packed chunks live in the local catalog, so ``check_room``
  checks the catalog's folder exactly as LocalStore does; ``statvfs``
  reports a large, constant capacity (an S3 bucket has no size).

All methods block; callers run them in worker threads behind their
``trio.CapacityLimiter`` (the connection pool is sized by ``max_connections``
to serve every such thread at once). boto3 clients are thread-safe; the
cache index has its own lock. No S3 signing is done here: boto3 signs.
"""

import base64
import collections
import copy
import errno
import hashlib
import logging
import os
import random
import stat
import threading
import time

import boto3
import botocore.config
import botocore.exceptions

from .durable import fsync_dir as durable_dir_sync
from .errors import StoreError
from .store import LocalStore

log = logging.getLogger(__name__)

#: keys per multi-object delete (the S3 limit)
DELETE_BATCH = 1000
#: backoff of the first retry, and the longest single pause (seconds)
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
#: what statvfs reports: 1 PiB free in 4 KiB blocks
_CAPACITY_BLOCKS = (1 << 50) // 4096

_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                    "Throttling", "ThrottlingException", "RequestTimeTooSkewed",
                    "OperationAborted", "503", "500", "502", "504"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
#: the folder (below the prefix) of the store's own objects: never a blob name
META_DIR = ".cosfs/"
#: store objects above this size are uploaded in parts of this size
META_PART = 16 * 1024 * 1024
_ABSENT = object()
#: the operations that change the store (refused while fenced), and the lease's name
_CHANGES = {"put", "delete", "upload", "bucket creation"}
_LEASE = "lease"


class S3Credentials:
    """An access key pair read from a private file (no secret in ``repr``)."""

    def __init__(self, access_key_id, secret_access_key, session_token=None):
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token

    def __repr__(self):
        return "S3Credentials(%s)" % self.access_key_id


def load_credentials(path):
    """Read an S3 credentials file; StoreError(EACCES) when it is not a private regular file.

    Format: lines ``access_key_id = ...``, ``secret_access_key = ...`` and
    optionally ``session_token = ...``; ``#`` starts a comment line. The file
    must be a regular file (not a symbolic link) with no group or other access
    (``chmod 600``), as the key store and the API credentials file.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        what = "is a symbolic link" if exc.errno == errno.ELOOP else "cannot be read: " + exc.strerror
        raise StoreError("S3 credentials file %s %s" % (path, what), errno=errno.EACCES) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError("S3 credentials file %s is not a regular file" % path,
                             errno=errno.EACCES)
        if st.st_mode & 0o077:
            raise StoreError("S3 credentials file %s has mode %04o: group and others must have "
                             "no access (chmod 600 %s)" % (path, stat.S_IMODE(st.st_mode), path),
                             errno=errno.EACCES)
        with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
            text = f.read()
    finally:
        os.close(fd)
    values = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or name not in ("access_key_id", "secret_access_key", "session_token"):
            raise StoreError("S3 credentials file %s:%d: expected access_key_id = ..., "
                             "secret_access_key = ... or session_token = ..." % (path, lineno),
                             errno=errno.EINVAL)
        values[name] = value.strip()
    for name in ("access_key_id", "secret_access_key"):
        if not values.get(name):
            raise StoreError("S3 credentials file %s: %s is missing" % (path, name),
                             errno=errno.EINVAL)
    return S3Credentials(values["access_key_id"], values["secret_access_key"],
                         values.get("session_token"))


def _error_code(exc):
    """(code, HTTP status) of a botocore ClientError."""
    resp = getattr(exc, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code, status


def _transient(exc):
    if isinstance(exc, (botocore.exceptions.ConnectionError,
                        botocore.exceptions.HTTPClientError,
                        botocore.exceptions.IncompleteReadError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _error_code(exc)
        return code in _TRANSIENT_CODES or status in (500, 502, 503, 504)
    return False


def _missing(exc):
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _error_code(exc)
        return code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket")
    return False


def _describe(exc):
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _error_code(exc)
        msg = exc.response.get("Error", {}).get("Message") or ""
        return ("HTTP %s %s %s" % (status, code, msg)).strip()
    return "%s: %s" % (type(exc).__name__, exc)


def _write_aside(part, path, data):
    """Write ``data`` to the new file ``part`` (0600), then rename it to ``path``: a file
    under ``path`` is complete (not synced: callers sync what must survive a power cut)."""
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.rename(part, path)


class BlobCache:
    """Whole blobs as files in a folder, least recently used out beyond ``limit`` bytes.

    Thread-safe. Files are ``<32 hex>``; a file is written as ``<hex>.<n>.part``
    and renamed, so a complete name is a complete blob.
    """

    def __init__(self, root, limit, *, drop=False):
        self.root = os.fspath(root)
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._index = collections.OrderedDict()  # blob id -> size, oldest first
        self._seq = 0
        # the cache holds what the store holds (plaintext of plain objects): 0700 folders
        os.makedirs(os.path.dirname(self.root), mode=0o700, exist_ok=True)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        found = []
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if len(name) != 32 or drop:
                self._unlink(path)
                continue
            try:
                blob = bytes.fromhex(name)
                st = os.stat(path)
            except (ValueError, OSError):
                self._unlink(path)
                continue
            found.append((st.st_atime, blob, st.st_size))
        for _, blob, size in sorted(found):
            self._index[blob] = size
            self.used += size
        self._trim()

    @staticmethod
    def _unlink(path):
        try:
            os.unlink(path)
        except OSError:
            pass

    def _path(self, blob):
        return os.path.join(self.root, blob.hex())

    def __contains__(self, blob):
        with self._lock:
            return blob in self._index

    def size(self, blob):
        with self._lock:
            return self._index.get(blob)

    def read(self, blob, offset=0, length=None):
        """Bytes of a cached blob, or None when it is not cached."""
        with self._lock:
            if blob not in self._index:
                return None
            self._index.move_to_end(blob)
        try:
            fd = os.open(self._path(blob), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.discard(blob)
            return None
        try:
            if length is None:
                length = os.fstat(fd).st_size - offset
            return os.pread(fd, max(0, length), offset)
        except OSError:
            return None
        finally:
            os.close(fd)

    def add(self, blob, data):
        """Keep ``data`` as blob ``blob``; a failure (a full disk) only costs the caching."""
        if len(data) > self.limit:
            return
        with self._lock:
            if blob in self._index:
                return
            self._seq += 1
            part = "%s.%d.part" % (self._path(blob), self._seq)
        try:
            _write_aside(part, self._path(blob), data)
        except OSError as exc:
            self._unlink(part)
            log.debug("read cache %s: cannot keep blob %s: %s", self.root, blob.hex(), exc)
            return
        with self._lock:
            if blob not in self._index:
                self._index[blob] = len(data)
                self.used += len(data)
            self._trim()

    def discard(self, blob):
        with self._lock:
            size = self._index.pop(blob, None)
            if size is not None:
                self.used -= size
        if size is not None:
            self._unlink(self._path(blob))

    def _trim(self):
        """Evict oldest entries beyond the limit (lock held, or in __init__)."""
        while self.used > self.limit and self._index:
            blob, size = self._index.popitem(last=False)
            self.used -= size
            self._unlink(self._path(blob))


class UploadQueue:
    """Write-back staging: blobs kept as local files until background threads uploaded them.

    The folder is the durable queue: a file ``<32 hex>`` is a blob not yet known to be on
    the service (``<hex>.part`` is one being written, discarded at the next start). So a
    kill of the daemon loses nothing that ``stage`` returned, and :meth:`sync` (fdatasync
    of the staged files, then the folder) makes them survive a power cut; a restart
    (:meth:`start`) queues every staged file again. A file is deleted only after the
    service acknowledged its upload. Uploads that fail (after the store's own retries)
    are retried, with a pause, until they succeed or the blob is deleted; nothing is
    ever dropped.

    ``upload(blob, data)`` and ``remove(blob)`` talk to the service (they raise
    StoreError); ``limit`` bounds the staged bytes: :meth:`stage` waits for room up to
    ``wait`` seconds, then fails with EIO. Thread-safe.
    """

    def __init__(self, root, limit, upload, remove, *, threads=4, wait=60.0, pause=1.0):
        self.root = os.fspath(root)
        self.limit = limit
        self.used = 0
        self.failures = 0
        self.last_error = None
        self._upload = upload
        self._remove = remove
        self._threads_wanted = threads
        self._wait = wait
        self._pause = pause
        self._cond = threading.Condition()
        self._staged = {}  # blob id -> (seq, size)
        self._unsynced = set()
        self._pending = collections.deque()
        self._uploading = set()
        self._cancelled = set()  # deleted while its upload ran: delete the uploaded copy
        self._seq = 0
        self._done = 0  # uploads finished
        self._threads = []
        self._closed = False
        os.makedirs(os.path.dirname(self.root), mode=0o700, exist_ok=True)
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def _path(self, blob):
        return os.path.join(self.root, blob.hex())

    # -- the queue ---------------------------------------------------------------
    def start(self):
        """Queue what an earlier run left staged (oldest first) and start the uploaders."""
        found = []
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if name.endswith(".part"):
                BlobCache._unlink(path)
                continue
            try:
                blob = bytes.fromhex(name) if len(name) == 32 else None
                st = os.stat(path)
            except (ValueError, OSError):
                continue
            if blob is not None:
                found.append((st.st_mtime_ns, blob, st.st_size))
        with self._cond:
            for _, blob, size in sorted(found):
                if blob not in self._staged:
                    self._seq += 1
                    self._staged[blob] = (self._seq, size)
                    self.used += size
                    self._pending.append(blob)
            while len(self._threads) < self._threads_wanted:
                t = threading.Thread(target=self._worker, name="cosfs-upload", daemon=True)
                t.start()
                self._threads.append(t)
            self._cond.notify_all()
        if found:
            log.info("S3 upload queue %s: %d blob(s) left staged by an earlier run queued again",
                     self.root, len(found))

    def close(self, timeout=5.0):
        """Stop the uploaders (what is still staged stays for the next start)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def stage(self, blob, data):
        """Keep ``data`` as blob ``blob`` and queue its upload (see the class doc)."""
        size = len(data)
        deadline = time.monotonic() + self._wait
        with self._cond:
            while self.used and self.used + size > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError("S3 upload queue %s is full (%d bytes wait for upload%s)"
                                     % (self.root, self.used, "; last upload error: %s"
                                        % self.last_error if self.last_error else ""),
                                     errno=errno.EIO)
                self._cond.wait(left)
        path = self._path(blob)
        part = path + ".part"
        try:
            _write_aside(part, path, data)
        except OSError as exc:
            BlobCache._unlink(part)
            raise StoreError("S3 upload queue %s: cannot stage blob %s: %s"
                             % (self.root, blob.hex(), exc.strerror), errno=exc.errno) from None
        with self._cond:
            self._seq += 1
            self._staged[blob] = (self._seq, size)
            self._unsynced.add(blob)
            self.used += size
            self._pending.append(blob)
            self._cond.notify_all()

    def __contains__(self, blob):
        with self._cond:
            return blob in self._staged

    @property
    def count(self):
        with self._cond:
            return len(self._staged)

    @property
    def unsynced_count(self):
        with self._cond:
            return len(self._unsynced)

    def size(self, blob):
        with self._cond:
            entry = self._staged.get(blob)
        return None if entry is None else entry[1]

    def read(self, blob, offset=0, length=None):
        """Bytes of a staged blob, or None when it is not (or no longer) staged."""
        if blob not in self:
            return None
        try:
            fd = os.open(self._path(blob), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # uploaded meanwhile: the service has it
        try:
            if length is None:
                length = os.fstat(fd).st_size - offset
            return os.pread(fd, max(0, length), offset)
        finally:
            os.close(fd)

    def discard(self, blob):
        """Forget a deleted blob: its file goes; an upload in progress is undone after it.
        True when the blob was staged (then the service holds no copy to delete now)."""
        with self._cond:
            entry = self._staged.pop(blob, None)
            if entry is None:
                return False
            self.used -= entry[1]
            self._unsynced.discard(blob)
            if blob in self._uploading:
                self._cancelled.add(blob)
            self._cond.notify_all()
        BlobCache._unlink(self._path(blob))
        return True

    def sync(self):
        """Make every staged blob durable on the local disk (fdatasync, then the folder)."""
        with self._cond:
            blobs = list(self._unsynced)
        if not blobs:
            return
        for blob in blobs:
            try:
                fd = os.open(self._path(blob), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # uploaded (or deleted) meanwhile
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        durable_dir_sync(self.root)
        with self._cond:
            self._unsynced.difference_update(blobs)

    def sync_everything(self):
        """After an unclean stop: every staged file made durable; returns how many."""
        names = [n for n in os.listdir(self.root) if len(n) == 32]
        for name in names:
            try:
                fd = os.open(os.path.join(self.root, name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        durable_dir_sync(self.root)
        return len(names)

    def wait_uploaded(self, timeout=None):
        """Return once every blob staged before this call is on the service. StoreError
        (EIO) when that takes longer than ``timeout`` seconds (the service is failing)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            mark = self._seq
            before = None
            while True:
                waiting = sum(1 for seq, _ in self._staged.values() if seq <= mark)
                if not waiting:
                    return
                if deadline is not None and before is not None and waiting < before:
                    # our part of the queue moves: a long backlog is not a failing service
                    deadline = time.monotonic() + timeout
                before = waiting
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise StoreError("S3 upload queue %s: %d blob(s) not uploaded within "
                                     "%.0f s%s" % (self.root, waiting, timeout,
                                                   "; last upload error: %s" % self.last_error
                                                   if self.last_error else ""),
                                     errno=errno.EIO)
                self._cond.wait(left)

    def _worker(self):
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                blob = self._pending.popleft()
                if blob not in self._staged:
                    continue
                self._uploading.add(blob)
            try:
                data = self.read(blob)
                if data is None and blob in self:
                    # the file went while the blob is queued: nothing left to upload
                    log.error("S3 upload queue %s: the staged file of blob %s is gone; the "
                              "blob is lost (cosfs fsck names the objects)", self.root,
                              blob.hex())
                    with self._cond:
                        self._uploading.discard(blob)
                    self.discard(blob)
                    continue
                if data is not None:
                    self._upload(blob, data)
            except StoreError as exc:
                with self._cond:
                    self._uploading.discard(blob)
                    self.failures += 1
                    self.last_error = str(exc)
                    if blob in self._staged:
                        self._pending.append(blob)
                    self._cancelled.discard(blob)
                time.sleep(self._pause)
                continue
            except Exception:
                log.exception("S3 upload queue %s: upload of %s failed", self.root, blob.hex())
                with self._cond:
                    self._uploading.discard(blob)
                    if blob in self._staged:
                        self._pending.append(blob)
                time.sleep(self._pause)
                continue
            with self._cond:
                self._uploading.discard(blob)
                cancelled = blob in self._cancelled
                self._cancelled.discard(blob)
                entry = self._staged.pop(blob, None)
                if entry is not None:
                    self.used -= entry[1]
                    self._unsynced.discard(blob)
                self.last_error = None
                self._done += 1
                self._cond.notify_all()
            if entry is not None:
                BlobCache._unlink(self._path(blob))
            if cancelled:
                try:
                    self._remove(blob)
                except StoreError as exc:
                    log.warning("S3 upload queue %s: a deleted blob was uploaded and could not "
                                "be removed (fsck will): %s", self.root, exc)


class S3Store:
    """Blobs as objects ``<prefix><hex>`` in one bucket of an S3-compatible service.

    ``settings`` is a :class:`cosfs.config.S3StoreSettings`; ``local_root`` is the
    folder that holds the catalog (its file system gets the free-space reserve
    of :meth:`check_room`); ``drop_cache`` empties the read cache (after an
    unclean shutdown). Nothing touches the network before :meth:`create`.

    For the data path: ``remote`` (its calls wait on the network: never on the trio
    thread). More worker slots or a deeper read-ahead for it were measured and did not
    make cold sequential reads faster, only costlier in CPU (every fetch holds the GIL for
    botocore's request handling and the decryption; more threads only contend for it).
    """

    remote = True

    def __init__(self, settings, local_root, *, drop_cache=False):
        self.settings = settings
        self.endpoint = settings.endpoint
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.root = "%s/%s/%s" % (settings.endpoint.rstrip("/"), settings.bucket, settings.prefix)
        self._room = LocalStore(local_root)
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            # their DEBUG output (tracebacks of every retried request) would drown ours
            if logging.getLogger(noisy).level == logging.NOTSET:
                logging.getLogger(noisy).setLevel(logging.INFO)
        creds = load_credentials(settings.credentials)
        config = botocore.config.Config(
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            retries={"total_max_attempts": 1}, max_pool_connections=settings.max_connections,
            s3={"addressing_style": "path"},
            # Content-MD5 is sent by put itself; newer default checksum trailers
            # (aws-chunked bodies) are not understood by every S3-compatible service
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required")
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=settings.endpoint, region_name=settings.signing_region or "us-east-1",
            aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
            aws_session_token=creds.session_token, verify=settings.verify_tls, config=config)
        self._sizes = None  # blob id -> size seen by list() (uncached copies only)
        # why this machine must not change the store (cosfs.lease); shared with uncached()
        self._fencing = {"reason": None}
        self.cache = None
        if settings.cache_size > 0:
            self.cache = BlobCache(settings.cache, settings.cache_size, drop=drop_cache)
        self.staging = None
        if settings.write_back:
            self.staging = UploadQueue(settings.staging, settings.staging_size, self._put_remote,
                                       self._delete_remote, threads=settings.upload_threads,
                                       wait=settings.retry_time)

    # -- the LocalStore properties the composition root and the tests use ----
    @property
    def headroom(self):
        return self._room.headroom

    @headroom.setter
    def headroom(self, value):
        self._room.headroom = value

    @property
    def unsynced_count(self):
        return 0 if self.staging is None else self.staging.unsynced_count

    def uncached(self):
        """This store without its read cache (same client): what ``cosfs fsck`` checks is
        the service's copy. Blobs it deletes may linger in the cache until evicted; their
        ids are never used again. It also remembers the sizes its ``list`` saw, so fsck's
        ``size`` of each listed blob needs no request of its own."""
        other = copy.copy(self)
        other.cache = None
        other._sizes = {}
        return other

    def fence(self, reason):
        """Refuse every upload and deletion (EIO naming ``reason``) until ``fence(None)``:
        the store's lease was lost (:mod:`cosfs.lease`). Reads go on."""
        self._fencing["reason"] = reason

    def _key(self, blob):
        return self.prefix + blob.hex()

    # -- the retry policy ------------------------------------------------------
    def _call(self, what, blob, fn, absent=None, **kwargs):
        """``fn(Bucket=..., **kwargs)`` with retries of transient errors (see the module doc).

        With ``absent`` (not None), a 404 answer returns ``absent`` instead of failing.
        """
        name = blob.hex() if isinstance(blob, bytes) else blob
        fenced = self._fencing["reason"]
        if fenced is not None and what in _CHANGES and name != _LEASE:
            raise StoreError("S3 store %s: %s of %s refused: %s" % (self.root, what, name,
                                                                  fenced),
                             errno=errno.EIO)
        deadline = time.monotonic() + self.settings.retry_time
        attempt = 0
        while True:
            try:
                return fn(Bucket=self.bucket, **kwargs)
            except Exception as exc:
                if absent is not None and _error_code(exc)[1] == 404:
                    return absent
                if _missing(exc) and what in ("get", "size"):
                    raise StoreError("blob %s is missing" % name, errno=errno.EIO) from None
                if not _transient(exc):
                    log.error("S3 store %s: %s of %s failed: %s", self.root, what, name,
                              _describe(exc))
                    raise StoreError("S3 store %s: %s of %s failed: %s"
                                     % (self.root, what, name, _describe(exc)),
                                     errno=self._errno(exc)) from None
                pause = random.uniform(0, min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt))
                attempt += 1
                if time.monotonic() + pause > deadline:
                    log.error("S3 store %s: %s of %s failed after %d attempt(s) in %.0f s: %s",
                              self.root, what, name, attempt, self.settings.retry_time,
                              _describe(exc))
                    raise StoreError("S3 store %s: %s of %s failed: %s"
                                     % (self.root, what, name, _describe(exc)),
                                     errno=errno.EIO) from None
                log.debug("S3 store %s: %s of %s: %s; retrying in %.2f s", self.root, what,
                          name, _describe(exc), pause)
                time.sleep(pause)

    @staticmethod
    def _errno(exc):
        code, status = _error_code(exc)
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return errno.EACCES
        return errno.EIO

    # -- setup -------------------------------------------------------------------
    def create(self):
        """Check that the bucket is reachable with these credentials (creating it when the
        service says it does not exist). StoreError with one line naming the endpoint."""
        try:
            if self._call("access check", self.bucket, self._client.head_bucket, absent=False):
                return
        except StoreError as exc:
            raise StoreError("S3 store %s: cannot use bucket %s: %s (check the endpoint, "
                             "the bucket and the credentials file %s)"
                             % (self.endpoint, self.bucket, str(exc).split(" failed: ", 1)[-1],
                                self.settings.credentials), errno=exc.errno) from None
        log.info("S3 store %s: creating bucket %s", self.endpoint, self.bucket)
        self._call("bucket creation", self.bucket, self._client.create_bucket)

    def start(self):
        """With write-back, queue what an earlier run left staged and start the uploaders
        (after the store's lease is taken: nothing is uploaded before)."""
        if self.staging is not None:
            self.staging.start()

    def close(self):
        """Stop the uploaders of write-back (staged blobs stay queued for the next start);
        the connection pool is reused if the store is used again."""
        if self.staging is not None:
            self.staging.close()

    def check_room(self, size, what="packed chunk"):
        """StoreError(ENOSPC) unless ``size`` more bytes fit beside the catalog (LocalStore's rule)."""
        self._room.check_room(size, what)

    def statvfs(self):
        """A constant, large capacity: an S3 bucket reports no size."""
        n = _CAPACITY_BLOCKS
        return os.statvfs_result((4096, 4096, n, n, n, 0, 0, 0, 0, 255))

    # -- blob operations (block: run in a worker thread) -----------------------
    def put(self, blob_id, data, writeback=True):
        """Store a new blob: uploaded before this returns (write-through), or with
        write-back staged locally and queued for upload. Raises StoreError.
        (``writeback`` is a hint for local disks; it changes nothing here.)"""
        if self.staging is not None:
            self.staging.stage(blob_id, data)
            return
        self._put_remote(blob_id, data)

    def _put_remote(self, blob_id, data):
        self._put_object(blob_id, self._key(blob_id), data)

    def _put_object(self, name, key, data):
        """PUT ``data`` as ``key`` with a Content-MD5 the service checks (retried)."""
        body = bytes(data)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        self._call("put", name, self._client.put_object, Key=key, Body=body,
                   ContentMD5=md5, ContentType="application/octet-stream")

    def _get_object(self, name, key, absent=None):
        """The whole object ``key`` (``absent`` when it does not exist, if given)."""
        def get(**kw):
            return self._client.get_object(**kw)["Body"].read()
        return self._call("get", name, get, absent=absent, Key=key)

    def _fetch(self, blob_id):
        data = self._get_object(blob_id, self._key(blob_id))
        if self.cache is not None:
            self.cache.add(blob_id, data)
        return data

    def get(self, blob_id):
        """Whole blob (staged, or from the read cache when it is there). StoreError (EIO
        if missing)."""
        if self.staging is not None:
            data = self.staging.read(blob_id)
            if data is not None:
                return data
        if self.cache is not None:
            data = self.cache.read(blob_id)
            if data is not None:
                return data
        return self._fetch(blob_id)

    def get_range(self, blob_id, offset, length):
        """``length`` bytes at ``offset``; short when the blob is (the caller checks).

        With a read cache, a miss fetches the whole blob (one request; chunks are at
        most ``chunk_size`` plus the seal), so the next reads of it stay local.
        """
        if length <= 0:
            return b""
        if self.staging is not None:
            data = self.staging.read(blob_id, offset, length)
            if data is not None:
                return data
        if self.cache is not None:
            data = self.cache.read(blob_id, offset, length)
            if data is not None:
                return data
            return self._fetch(blob_id)[offset:offset + length]

        def ranged(**kw):
            try:
                return self._client.get_object(**kw)["Body"].read()
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc)[1] == 416:  # the range starts past the end
                    return b""
                raise
        return self._call("get", blob_id, ranged, Key=self._key(blob_id),
                          Range="bytes=%d-%d" % (offset, offset + length - 1))

    def size(self, blob_id):
        """Length of a stored blob; StoreError (EIO) when it is missing."""
        if self.staging is not None:
            size = self.staging.size(blob_id)
            if size is not None:
                return size
        if self.cache is not None:
            size = self.cache.size(blob_id)
            if size is not None:
                return size
        if self._sizes:
            size = self._sizes.get(blob_id)
            if size is not None:
                return size
        head = self._call("size", blob_id, self._client.head_object, Key=self._key(blob_id))
        return head["ContentLength"]

    def delete(self, blob_id):
        """Remove a blob; a missing blob is not an error."""
        if self.staging is not None and self.staging.discard(blob_id):
            return
        self._delete_remote(blob_id)

    def _delete_remote(self, blob_id):
        if self._sizes:
            self._sizes.pop(blob_id, None)
        if self.cache is not None:
            self.cache.discard(blob_id)
        self._call("delete", blob_id, self._client.delete_object, Key=self._key(blob_id))

    def delete_many(self, blobs):
        """Delete blobs with multi-object deletes; returns those deleted (missing ones count).

        Keys the service refused are logged and left out of the result, for a later
        retry; a batch that still fails after the retries (logged by the retry policy)
        ends the call with what was deleted so far.
        """
        blobs = list(blobs)
        done = []
        if self.staging is not None:
            staged = {b for b in blobs if self.staging.discard(b)}
            done = list(staged)
            blobs = [b for b in blobs if b not in staged]
        for start in range(0, len(blobs), DELETE_BATCH):
            batch = blobs[start:start + DELETE_BATCH]
            if self.cache is not None:
                for blob in batch:
                    self.cache.discard(blob)
            try:
                reply = self._call(
                    "delete", "%d blobs" % len(batch), self._client.delete_objects,
                    Delete={"Objects": [{"Key": self._key(b)} for b in batch], "Quiet": True})
            except StoreError:
                return done
            failed = {}
            for err in reply.get("Errors", ()):
                if err.get("Code") not in _MISSING_CODES:
                    failed[err.get("Key")] = "%s %s" % (err.get("Code"), err.get("Message", ""))
            for key, why in list(failed.items())[:3]:
                log.warning("S3 store %s: cannot delete %s: %s (will retry)", self.root, key, why)
            done += [b for b in batch if self._key(b) not in failed]
        return done

    def list(self):
        """Yield every blob id under the prefix, and every staged one (for fsck)."""
        seen = set()
        if self.staging is not None:
            for name in os.listdir(self.staging.root):
                if len(name) == 32:
                    try:
                        seen.add(bytes.fromhex(name))
                    except ValueError:
                        continue
            yield from seen
        for blob in self._list_remote():
            if blob not in seen:
                yield blob

    def _list_remote(self):
        token = None
        while True:
            kw = {"Prefix": self.prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self._call("list", self.prefix or "/", self._client.list_objects_v2, **kw)
            for obj in page.get("Contents", ()):
                name = obj["Key"][len(self.prefix):]
                if len(name) == 32:
                    try:
                        blob = bytes.fromhex(name)
                    except ValueError:
                        continue
                    if self._sizes is not None:
                        self._sizes[blob] = obj["Size"]
                    yield blob
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    # -- the store's own objects beside the blobs (catalog snapshots, the lease) ----
    def _meta_key(self, name):
        return self.prefix + META_DIR + name

    def put_meta(self, name, data):
        """Store a small object ``<prefix>.cosfs/<name>`` (replacing it). StoreError."""
        self._put_object(name, self._meta_key(name), data)

    def get_meta(self, name):
        """The bytes of ``<prefix>.cosfs/<name>``, or None when there is no such object."""
        found = self._get_object(name, self._meta_key(name), absent=_ABSENT)
        return None if found is _ABSENT else found

    def upload_meta(self, name, path):
        """Upload the file ``path`` as ``<prefix>.cosfs/<name>``; returns once the service
        stored all of it. Files above ``META_PART`` bytes go as a multipart upload, one part
        in memory at a time (each part retried on its own). StoreError."""
        key = self._meta_key(name)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size <= META_PART:
                self.put_meta(name, f.read())
                return
            upload = self._call("upload", name, self._client.create_multipart_upload,
                                Key=key)["UploadId"]
            try:
                parts = []
                number = 1
                while True:
                    body = f.read(META_PART)
                    if not body:
                        break
                    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
                    etag = self._call("upload", name, self._client.upload_part, Key=key,
                                      UploadId=upload, PartNumber=number, Body=body,
                                      ContentMD5=md5)["ETag"]
                    parts.append({"PartNumber": number, "ETag": etag})
                    number += 1
                self._call("upload", name, self._client.complete_multipart_upload, Key=key,
                           UploadId=upload, MultipartUpload={"Parts": parts})
            except BaseException:
                try:
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                        UploadId=upload)
                except Exception as exc:  # the service drops abandoned uploads itself
                    log.info("could not abort the upload of %s: %s", name, _describe(exc))
                raise

    def download_meta(self, name, path):
        """Download ``<prefix>.cosfs/<name>`` into the file ``path`` (streamed: memory stays
        flat). StoreError (EIO when it is missing)."""
        def download(**kw):
            body = self._client.get_object(**kw)["Body"]
            with open(path, "wb") as f:
                while True:
                    block = body.read(1 << 20)
                    if not block:
                        return
                    f.write(block)
        self._call("get", name, download, Key=self._meta_key(name))

    def list_meta(self, sub_prefix=""):
        """[(name, size, last modified datetime)] of ``<prefix>.cosfs/<sub_prefix>*``,
        in key order."""
        out = []
        token = None
        start = len(self.prefix + META_DIR)
        while True:
            kw = {"Prefix": self._meta_key(sub_prefix)}
            if token:
                kw["ContinuationToken"] = token
            page = self._call("list", kw["Prefix"], self._client.list_objects_v2, **kw)
            for obj in page.get("Contents", ()):
                out.append((obj["Key"][start:], obj["Size"], obj.get("LastModified")))
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def delete_meta(self, name):
        """Remove ``<prefix>.cosfs/<name>``; a missing object is not an error."""
        self._call("delete", name, self._client.delete_object, Key=self._meta_key(name))

    def sync_all(self):
        """Write-through: nothing to do (every ``put`` returned once the service stored the
        blob). Write-back: the staged blobs are made durable on the local disk."""
        if self.staging is not None:
            self.staging.sync()

    def sync_everything(self):
        """After a crash: with write-back, every staged blob made durable; returns how many."""
        return 0 if self.staging is None else self.staging.sync_everything()

    def wait_uploaded(self):
        """Return once every blob stored before this call is on the service (write-back
        waits for its queue, at most ``retry_time``: then StoreError EIO)."""
        if self.staging is not None:
            self.staging.wait_uploaded(self.settings.retry_time)
