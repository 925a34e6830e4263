"""The catalog: every piece of metadata of a cosfs store, in one SQLite database.

Tables (see docs/format.md, "Catalog"):
  meta            key/value settings (schema version, key check values, chunk size)
  inodes          one row per file, directory, symlink or special file; encryption state
  dentries        (parent, name) -> inode; a directory has exactly one dentry
  chunks          (inode, index) -> blob id and plaintext length; the sealed bytes of a
                  small chunk are packed into the row itself (``data``) instead of a blob
  xattrs          user extended attributes
  buckets         top-level directories: name, region
  bucket_configs  per-bucket configuration documents (encryption, ...)
  garbage         blobs no longer referenced, deleted from the store after commit
  uploads         multipart uploads in progress; upload_parts: their parts (nameless inodes)

Concurrency rule: the catalog is used only from the trio thread. A run of
calls with no ``await`` in between is therefore atomic with respect to other
FUSE requests; :meth:`Catalog.transaction` additionally makes it atomic on
disk (one SQLite transaction). Never ``await`` inside a transaction.

Durability: WAL journal with ``synchronous=NORMAL``: a commit survives a kill
of the daemon; :meth:`Catalog.transaction` with ``durable=True`` syncs the WAL
so that it, and every commit before it, survives a machine crash.
"""

import contextlib
import errno
import itertools
import logging
import os
import sqlite3
import stat
import time
import pathlib
from dataclasses import dataclass, field
from typing import Optional

from .durable import fsync_dir
from .errors import CosfsError, FsError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
#: Versions an older cosfs wrote that this one upgrades in place at open (see docs/format.md).
_UPGRADES = {
    # 1 -> 2: chunks may carry their sealed bytes (packed small chunks)
    1: ("ALTER TABLE chunks ADD COLUMN data BLOB",),
    # 2 -> 3: a blob may be referenced by several chunk rows (noncurrent versions share
    # the blobs of the content they were copied from; the tables are ADDED_TABLES). An
    # older cosfs would free shared blobs, so it must not open such a catalog.
    2: (),
    # 3 -> 4: the parts of a multipart upload are written at their offset in the final
    # object (their bytes are the last ``size`` of their inode) and an upload's part 0 is
    # its sealing identity; an older cosfs would read each part from byte 0 and complete
    # such an upload with zeros in it, so it must not open such a catalog.
    3: (),
}
#: SQL condition on a chunk row ``c``: no other inode's chunk row references its blob (a
#: noncurrent version's copy: see Catalog.clone_inode). Only such blobs become garbage.
_UNSHARED = "NOT EXISTS (SELECT 1 FROM chunks d WHERE d.blob=c.blob AND d.inode<>c.inode)"
#: SQL condition on a replication task ``q``: no older task of the same key is queued.
_FIRST_OF_KEY = ("NOT EXISTS (SELECT 1 FROM replication_queue p WHERE p.bucket=q.bucket"
                 " AND p.key=q.key AND p.seq<q.seq)")
#: The WAL file is cut back to this size when it restarts after a checkpoint.
WAL_SIZE_LIMIT = 4 * 1024 * 1024
ROOT_INODE = 1


def read_only_uri(path):
    """The SQLite URI that opens the database at ``path`` read-only (``uri=True``)."""
    return pathlib.Path(os.path.abspath(path)).as_uri() + "?mode=ro"

#: The chunks table. A rowid table: its rows hold packed chunks (up to 16 KiB of data),
#: and a seek in a WITHOUT ROWID table reads the whole record of every overflowing row it
#: compares with (measured: twice the time of a lookup through the primary key's index).
#: Catalogs made before have the WITHOUT ROWID form; see Catalog._rebuild_chunks.
_CHUNKS_TABLE = """CREATE TABLE %s (
    inode INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    blob BLOB NOT NULL,
    length INTEGER NOT NULL,
    data BLOB,
    PRIMARY KEY (inode, idx)
)"""

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE inodes (
    id INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    bucket INTEGER NOT NULL DEFAULT 0,
    object_id BLOB,
    enc TEXT,
    enc_request TEXT,
    wrapped_key BLOB,
    etag TEXT,
    version_id TEXT,
    target BLOB
);
CREATE TABLE dentries (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    inode INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX dentries_inode ON dentries (inode);
{CHUNKS};
CREATE INDEX chunks_blob ON chunks (blob, inode);
CREATE TABLE xattrs (
    inode INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (inode, name)
) WITHOUT ROWID;
CREATE TABLE buckets (
    inode INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    region TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE bucket_configs (
    bucket INTEGER NOT NULL,
    kind TEXT NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (bucket, kind)
) WITHOUT ROWID;
CREATE TABLE garbage (blob BLOB PRIMARY KEY, region TEXT NOT NULL) WITHOUT ROWID;
""".replace("{CHUNKS}", _CHUNKS_TABLE % "chunks")

#: Multipart uploads in progress (cosfs.keyspace). Created in every catalog when it is
#: opened, old ones included: an older cosfs ignores them (docs/format.md, "Catalog").
_UPLOAD_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    bucket INTEGER NOT NULL,
    key BLOB NOT NULL,
    initiated_ns INTEGER NOT NULL,
    enc_request TEXT,
    enc TEXT,
    meta BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_key ON uploads (bucket, key, id);
CREATE TABLE IF NOT EXISTS upload_parts (
    upload TEXT NOT NULL,
    number INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    PRIMARY KEY (upload, number)
) WITHOUT ROWID;
"""

#: Object versions and replication (cosfs.versions, cosfs.services.replication): added to
#: every catalog when it is opened, like the upload tables (docs/format.md, "Catalog").
#: ``versions`` holds the noncurrent versions and delete markers of keys in versioned
#: buckets (the current version is the object under its name); a version's content is a
#: *holder* inode: nlink 1, no name, its own chunk rows (sharing blobs with the object it
#: was copied from). ``replication_status`` is a version's x-cos-replication-status.
_VERSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket INTEGER NOT NULL,
    key BLOB NOT NULL,
    version_id TEXT,
    inode INTEGER,
    mtime_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_key ON versions (bucket, key, seq);
CREATE INDEX IF NOT EXISTS versions_inode ON versions (inode);
CREATE TABLE IF NOT EXISTS replication_status (
    inode INTEGER PRIMARY KEY,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS replication_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket INTEGER NOT NULL,
    key BLOB NOT NULL,
    version_id TEXT,
    op TEXT NOT NULL,
    dest TEXT NOT NULL,
    gen INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ns INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS replication_queue_key ON replication_queue (bucket, key, version_id);
"""

#: tables added after schema version 2, each created (with its indexes) when the catalog is
#: opened without it: name of the table whose absence triggers it -> statements
ADDED_TABLES = {"upload_parts": _UPLOAD_SCHEMA, "replication_queue": _VERSION_SCHEMA}

#: Inventory deliveries (cosfs.services.inventory): the last delivery of each inventory of
#: a bucket, so that the schedule survives restarts and an interrupted delivery can be
#: cleaned up (docs/format.md, "Catalog"). ``finished_ns`` is NULL while it runs;
#: ``written`` lists (JSON) the report keys it published so far.
_INVENTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS inventory_deliveries (
    bucket INTEGER NOT NULL,
    id TEXT NOT NULL,
    job TEXT NOT NULL,
    period TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER,
    dest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    written TEXT NOT NULL,
    summary TEXT,
    PRIMARY KEY (bucket, id)
) WITHOUT ROWID;
"""
ADDED_TABLES["inventory_deliveries"] = _INVENTORY_SCHEMA

#: Directories the key-level core created only because a key needed them (``a/`` for a PUT
#: of ``a/b``), as COS has no directories: removed again when a delete through a key
#: empties them (cosfs.keyspace). A directory made with mkdir or PUT ``dir/`` is not here.
_IMPLIED_SCHEMA = """
CREATE TABLE IF NOT EXISTS implied_dirs (inode INTEGER PRIMARY KEY);
"""
ADDED_TABLES["implied_dirs"] = _IMPLIED_SCHEMA

INODE_COLUMNS = ("id", "mode", "uid", "gid", "rdev", "size", "atime_ns", "mtime_ns",
                 "ctime_ns", "nlink", "bucket", "object_id", "enc", "enc_request",
                 "wrapped_key", "etag", "version_id", "target")
_SELECT_INODE = "SELECT %s FROM inodes" % ", ".join(INODE_COLUMNS)
_INODE_INDEX = {name: i for i, name in enumerate(INODE_COLUMNS)}

#: Inode rows kept in memory (about 500 bytes each, with their place in the dict); the
#: oldest quarter goes when full. Listings fill it (their rows join it), so it and SQLite's
#: page cache (:data:`PAGE_CACHE_KIB`) are most of what the daemon holds beside one entry
#: per inode the kernel holds: 32,768 rows and 48 MiB keep a daemon that listed a store of
#: 1,000,000 objects under 200 MiB.
INODE_CACHE_SIZE = 32768
#: SQLite's page cache of the catalog, in KiB.
PAGE_CACHE_KIB = 48 * 1024
#: Chunk rows kept in memory (about 150 bytes each; packed rows are not kept); the rows of
#: the oldest quarter of the inodes go when full.
CHUNK_CACHE_SIZE = 65536
#: Stored lengths (see Catalog.stored_length) kept in memory; all go when full.
STORED_CACHE_SIZE = 65536
_MISSING = object()


@dataclass
class Inode:
    """One row of ``inodes``. Mutable copy; write back with :meth:`Catalog.update_inode`."""

    id: int
    mode: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    bucket: int
    object_id: Optional[bytes]
    enc: Optional[str]
    enc_request: Optional[str]
    wrapped_key: Optional[bytes]
    etag: Optional[str]
    version_id: Optional[str]
    target: Optional[bytes]

    @property
    def is_dir(self):
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self):
        return stat.S_ISREG(self.mode)


@dataclass(frozen=True)
class Chunk:
    """One chunk of an object: ``length`` plaintext bytes sealed as blob ``blob``.

    ``data`` holds the sealed bytes of a packed chunk (kept in the catalog row);
    None means they are a blob in the region's chunk store.
    """

    idx: int
    blob: bytes
    length: int
    data: Optional[bytes] = field(default=None, repr=False)

    @property
    def packed(self):
        return self.data is not None


#: CLOCK_REALTIME_COARSE of Linux (the time module names it only from Python 3.13 on)
_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)
_clock_fd = None


def now_ns():
    """Now, in ns since the epoch: the one clock for every timestamp cosfs sets.

    It is the kernel's clock for file timestamps, which also dates ``touch`` on
    the mount (``UTIME_NOW`` reaches the daemon as a time the kernel took, and
    pyfuse3 passes it on as a plain value). It is read by having the kernel stamp
    a file of our own (a memfd) with the current time, so a stamp is never
    earlier than one the kernel gave any file before, nor later than one it
    gives after. ``time.time_ns()`` runs up to a clock tick ahead of that clock
    and ``CLOCK_REALTIME_COARSE`` up to a tick behind it (multigrain timestamps,
    Linux 6.13+): with either, a later operation could get an earlier time.
    Falls back to ``CLOCK_REALTIME_COARSE`` if no memfd can be made. Any thread;
    two system calls.
    """
    global _clock_fd
    if _clock_fd is None:
        try:
            _clock_fd = os.memfd_create("cosfs-clock", os.MFD_CLOEXEC)
        except (AttributeError, OSError) as exc:
            log.warning("no memfd for the clock (%s): timestamps use CLOCK_REALTIME_COARSE", exc)
            _clock_fd = -1
    if _clock_fd >= 0:
        try:
            os.utime(_clock_fd, None)
            return os.fstat(_clock_fd).st_mtime_ns
        except OSError:
            pass
    return time.clock_gettime_ns(_COARSE)


TIME_MIN_NS = -(1 << 63)   # the times the catalog stores: signed 64-bit nanoseconds,
TIME_MAX_NS = (1 << 63) - 1  # from 1677-09-21 to 2262-04-11


def clamp_ns(t):
    """``t`` (ns since the epoch) brought into the range the catalog stores, as a local
    file system brings a time into the range of its inodes (ext4: 1901 to 2446)."""
    return TIME_MIN_NS if t < TIME_MIN_NS else TIME_MAX_NS if t > TIME_MAX_NS else t


class Catalog:
    """The SQLite catalog. Methods run on the trio thread and do not block for long."""

    def __init__(self, path, *, create=False):
        self.path = os.fspath(path)
        self._depth = 0
        self._inodes = {}  # ino -> row tuple: see get_inode
        self._parents = {}  # ino -> (parent, name): see parent_of
        self._chunks = {}  # ino -> {idx: Chunk or None}: see chunk
        self._chunk_rows = 0  # entries in _chunks
        self._stored = {}  # ino -> plaintext bytes its chunk rows hold: see stored_length
        #: inodes made by this catalog that have had no chunk rows since: chunk() and
        #: stored_length() answer them without a query (a new file's first commit)
        self._chunkless = set()
        self._missing = None  # (parent, name) last found missing: see lookup
        self._inode_count = None  # see inode_count
        self._buckets = {}  # inode -> bucket row or None: see bucket_by_inode
        self._configs = {}  # (bucket inode, kind) -> document or None: see get_bucket_config
        #: (dev, ino) of the WAL and database files when their folder was last fsynced
        self._synced_names = None
        exists = os.path.exists(self.path)
        if not exists and not create:
            raise CosfsError("no catalog at %s (mount once to create the store)" % self.path,
                             errno=errno.ENOENT, code="NoSuchStore")
        self.db = None
        try:
            self._open(exists)
        except BaseException:
            # a refused catalog must not stay open (a long-lived caller would hold its fd)
            if self.db is not None:
                self.db.close()
            raise

    def _open(self, exists):
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if not exists:
                os.chmod(self.path, 0o600)
                # packed chunks make the catalog hold data: pages freed by deletions go back
                # to the file system at each checkpoint (see checkpoint); only possible
                # before the database's first page is written
                self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=OFF")
            self.db.execute("PRAGMA cache_size=-%d" % PAGE_CACHE_KIB)
            # Packed chunks of plain objects hold plaintext: a deleted one must not linger.
            # FAST zeroes what was deleted within pages at no extra I/O; the pages that
            # deletions free are cut off the file at the next checkpoint (auto-vacuum).
            # (ON would also write every freed page full of zeros into the WAL: on a full
            # disk, deleting files must need as little room as possible.)
            self.db.execute("PRAGMA secure_delete=FAST")
            self.db.execute("PRAGMA busy_timeout=5000")
            # Checkpoints are run by the data path after it synced the blobs that the
            # checkpointed commits reference (see objects.ObjectStore.checkpoint).
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            # a burst of changes grows the WAL; without a limit it keeps that size for good
            self.db.execute("PRAGMA journal_size_limit=%d" % WAL_SIZE_LIMIT)
            if not exists or not self._has_schema():
                self._create_schema()
                # a new catalog references no blob: make the database file, its WAL and
                # their names durable at once (later only the WAL changes between
                # checkpoints, and SQLite syncs those)
                self.sync()
            else:
                self._check_schema()
                self._rebuild_chunks()
            for table, schema in ADDED_TABLES.items():
                if not self._has_table(table):
                    with self.transaction():
                        for statement in schema.split(";"):
                            if statement.strip():
                                self.db.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise CosfsError("catalog %s is unusable: %s" % (self.path, exc),
                             code="CorruptCatalog") from None

    # -- schema ----------------------------------------------------------
    def _has_schema(self):
        return self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is not None

    def _create_schema(self):
        t = now_ns()
        with self.transaction():
            # executescript() would COMMIT the open transaction: run statements one by one.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.set_meta("schema_version", SCHEMA_VERSION)
            self.db.execute(
                "INSERT INTO inodes (id, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, nlink)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 2)",
                (ROOT_INODE, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), t, t, t))

    def _has_table(self, name):
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                               (name,)).fetchone() is not None

    def _check_schema(self):
        version = self.get_meta("schema_version")
        if version in _UPGRADES:
            self._upgrade(version)
            version = self.get_meta("schema_version")
        if version != SCHEMA_VERSION:
            raise CosfsError("catalog %s has schema version %r, this cosfs reads %d"
                             % (self.path, version, SCHEMA_VERSION), code="CorruptCatalog")

    def _rebuild_chunks(self):
        """Give a catalog made before chunks became a rowid table that form (same rows,
        same meaning: older releases read either). One transaction, made durable; if it
        fails (no room for the copy), the catalog keeps working in the old form."""
        row = self.db.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name='chunks'").fetchone()
        if row is None or "WITHOUT ROWID" not in row[0].upper():
            return
        # the copy and the WAL that carries it take about three times the table: never
        # eat into the room a full disk needs to delete (the store's reserve)
        size = (self.db.execute("PRAGMA page_count").fetchone()[0]
                * self.db.execute("PRAGMA page_size").fetchone()[0])
        try:
            sv = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            room = sv.f_bavail * sv.f_frsize
        except OSError:
            room = 0
        if room < 3 * size + 64 * 1024 * 1024:
            log.warning("catalog %s: not enough free space to rebuild the chunk table (%d MiB "
                        "needed); it keeps its older, slower form", self.path,
                        (3 * size >> 20) + 64)
            return
        try:
            with self.transaction():
                self.db.execute(_CHUNKS_TABLE % "chunks_rowid")
                self.db.execute("INSERT INTO chunks_rowid SELECT inode, idx, blob, length, data"
                                " FROM chunks")
                self.db.execute("DROP TABLE chunks")
                self.db.execute("ALTER TABLE chunks_rowid RENAME TO chunks")
                self.db.execute("CREATE INDEX chunks_blob ON chunks (blob, inode)")
        except (sqlite3.DatabaseError, CosfsError) as exc:
            log.warning("catalog %s: could not rebuild the chunk table (%s); it keeps its "
                        "older, slower form", self.path, exc)
            return
        self.sync()
        log.warning("catalog %s: chunk table rebuilt as a rowid table", self.path)

    def _upgrade(self, version):
        """Bring an older catalog to SCHEMA_VERSION in one transaction, made durable."""
        with self.transaction():
            while version in _UPGRADES:
                for statement in _UPGRADES[version]:
                    self.db.execute(statement)
                version += 1
            self.set_meta("schema_version", version)
        self.sync()
        log.warning("catalog %s upgraded to format version %d (older cosfs releases can no "
                    "longer open it)", self.path, version)
        if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            try:  # rebuilt once, so that freed pages can go back to the file system
                self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self.db.execute("VACUUM")
                self.sync()
            except sqlite3.DatabaseError as exc:
                log.warning("catalog %s: could not enable releasing free pages (%s); deleted "
                            "packed data stays reusable by the catalog only", self.path, exc)

    def sync(self):
        """Make every commit so far durable: fsync the WAL, the database file and, when
        either file is new since the last sync, the directory holding their names.

        Writes nothing, so it works on a full disk. Blocks (call it on the trio
        thread only after the blobs those commits reference were synced).
        """
        ids = []
        for path in (self.path + "-wal", self.path):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CosfsError("cannot sync the catalog: %s" % exc.strerror,
                                 errno=exc.errno) from None
            try:
                st = os.fstat(fd)
                ids.append((st.st_dev, st.st_ino))
                os.fsync(fd)
            except OSError as exc:
                raise CosfsError("cannot sync the catalog: %s" % exc.strerror,
                                 errno=exc.errno) from None
            finally:
                os.close(fd)
        if ids != self._synced_names:
            # SQLite creates the WAL anew after the last connection closed it; a file
            # whose name is not durable is lost with everything in it
            try:
                fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            except OSError as exc:
                raise CosfsError("cannot sync the catalog's folder: %s" % exc.strerror,
                                 errno=exc.errno) from None
            self._synced_names = ids

    def wal_size(self):
        """Bytes in the write-ahead log file (0 if none)."""
        try:
            return os.stat(self.path + "-wal").st_size
        except OSError:
            return 0

    def checkpoint(self, truncate=False):
        """Copy the WAL into the database file (syncs both); call after blobs are synced.
        ``truncate`` also cuts the WAL file to nothing, giving its space back. Pages that
        deletions freed are first cut off the database file (outside any transaction)."""
        self.release_free_pages()
        try:
            self.db.execute("PRAGMA wal_checkpoint(%s)" % ("TRUNCATE" if truncate else "PASSIVE"))
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc):
                raise
            # the database file could not take the WAL's pages (a full disk): nothing is
            # lost, the WAL keeps them and the next checkpoint tries again
            raise CosfsError("catalog checkpoint: %s" % exc, errno=errno.ENOSPC,
                             code="CatalogFull") from None

    def release_free_pages(self):
        """Give the pages on the free list back to the file system (catalogs created with
        incremental auto-vacuum; a no-op for older ones). One commit of its own."""
        if self._depth or not self.db.execute("PRAGMA freelist_count").fetchone()[0]:
            return
        if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return
        try:
            # executescript steps the pragma to the end (execute frees one page per step)
            self.db.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.DatabaseError as exc:
            log.warning("catalog %s: could not release free pages: %s", self.path, exc)

    def close(self):
        try:
            self.release_free_pages()
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            log.warning("catalog checkpoint at close failed", exc_info=True)
        self.db.close()

    # -- transactions ----------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, durable=False):
        """One atomic SQLite transaction; nests (inner levels join the outer one).

        ``durable=True`` (outermost level only) commits with a WAL sync so
        the commit, and every earlier one, survives a machine crash.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if durable:
            self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._forget_cached()  # it may hold rows of the rolled-back changes
            if self.db.in_transaction:  # SQLite rolls back by itself after some errors
                self.db.execute("ROLLBACK")
            if durable:
                self.db.execute("PRAGMA synchronous=NORMAL")
            raise
        self._depth = 0
        try:
            if durable:
                # An empty transaction writes nothing and would sync nothing.
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('last_sync', ?)", (now_ns(),))
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._forget_cached()
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass
            full = "full" in str(exc)
            raise CosfsError("catalog commit failed: %s" % exc,
                             errno=errno.ENOSPC if full else errno.EIO,
                             code="CatalogFull" if full else None) from None
        finally:
            if durable:
                self.db.execute("PRAGMA synchronous=NORMAL")

    def _forget_cached(self):
        """Empty the write-through caches (after a rollback they may hold undone rows)."""
        self._inodes.clear()
        self._parents.clear()
        self._missing = None
        self._chunks.clear()
        self._chunk_rows = 0
        self._stored.clear()
        self._chunkless.clear()
        self._inode_count = None
        self._buckets.clear()
        self._configs.clear()

    # -- meta ------------------------------------------------------------
    def get_meta(self, key, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key, value):
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- inodes ----------------------------------------------------------
    def get_inode(self, ino) -> Inode:
        """A fresh, mutable copy of inode ``ino`` (FsError ENOENT if there is none).

        Rows are served from a write-through cache: every change to ``inodes`` goes
        through this class, so the cache and the database agree, inside a transaction
        as well; a rolled-back transaction empties it.
        """
        row = self._inodes.get(ino)
        if row is None:
            row = self.db.execute(_SELECT_INODE + " WHERE id=?", (ino,)).fetchone()
            if row is None:
                raise FsError(errno.ENOENT, "no inode %d" % ino)
            self._cache_inode(row)
        return Inode(*row)

    def _cache_inode(self, row):
        """Keep ``row`` (INODE_COLUMNS, as read from ``inodes``) in the inode cache."""
        if row[0] not in self._inodes and len(self._inodes) >= INODE_CACHE_SIZE:
            for old in list(itertools.islice(self._inodes, INODE_CACHE_SIZE // 4)):
                del self._inodes[old]
        self._inodes[row[0]] = row

    def new_inode(self, *, mode, uid, gid, rdev=0, nlink=1, bucket=0, target=None,
                  object_id=None, enc_request=None, enc=None, wrapped_key=None, size=0,
                  t=None) -> Inode:
        """Insert an inode (inside a transaction) and return it. ``enc`` and
        ``wrapped_key``: the encryption recorded for a new object and its data key."""
        t = now_ns() if t is None else t
        cur = self.db.execute(
            "INSERT INTO inodes (mode, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns,"
            " nlink, bucket, object_id, enc, enc_request, wrapped_key, target)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (mode, uid, gid, rdev, size, t, t, t, nlink, bucket, object_id, enc, enc_request,
             wrapped_key, target))
        # the row as SQLite now holds it (column defaults: etag, version_id NULL)
        row = (cur.lastrowid, mode, uid, gid, rdev, size, t, t, t, nlink, bucket, object_id, enc,
               enc_request, wrapped_key, None, None, target)
        if len(self._chunkless) >= INODE_CACHE_SIZE:
            self._chunkless.clear()
        self._chunkless.add(cur.lastrowid)
        self._count_inodes(1)
        self._inodes[cur.lastrowid] = row
        return Inode(*row)

    def update_inode(self, ino, **fields):
        if not fields:
            return
        cols = ", ".join("%s=?" % k for k in fields)
        self.db.execute("UPDATE inodes SET %s WHERE id=?" % cols, (*fields.values(), ino))
        row = self._inodes.get(ino)
        if row is not None:
            row = list(row)
            for k, v in fields.items():
                row[_INODE_INDEX[k]] = v
            self._inodes[ino] = tuple(row)

    def delete_inode(self, ino, region):
        """Remove an inode with its chunks (to garbage) and xattrs."""
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO garbage (blob, region) SELECT blob, ? FROM chunks c"
                " WHERE inode=? AND data IS NULL AND " + _UNSHARED, (region, ino))
            self.db.execute("DELETE FROM chunks WHERE inode=?", (ino,))
            self.db.execute("DELETE FROM xattrs WHERE inode=?", (ino,))
            self.db.execute("DELETE FROM replication_status WHERE inode=?", (ino,))
            self.db.execute("DELETE FROM implied_dirs WHERE inode=?", (ino,))
            if self.db.execute("DELETE FROM inodes WHERE id=?", (ino,)).rowcount:
                self._count_inodes(-1)
            self._inodes.pop(ino, None)
            self._parents.pop(ino, None)
            self._chunks_changed(ino)

    def clone_inode(self, ino, *, nlink=1) -> int:
        """A copy of inode ``ino`` with its chunk rows, xattrs and replication status, and
        no name (inside a transaction). The copy shares the original's blobs and sealing
        identity, so it reads as the original's committed content did; blobs go to garbage
        only once no chunk row references them (:meth:`garbage`). Returns its number."""
        cols = [c for c in INODE_COLUMNS if c not in ("id", "nlink")]
        cur = self.db.execute(
            "INSERT INTO inodes (%s, nlink) SELECT %s, ? FROM inodes WHERE id=?"
            % (", ".join(cols), ", ".join(cols)), (nlink, ino))
        new = cur.lastrowid
        self._count_inodes(1)
        self._chunks_changed(new)
        self.db.execute("INSERT INTO chunks SELECT ?, idx, blob, length, data FROM chunks"
                        " WHERE inode=?", (new, ino))
        self.db.execute("INSERT INTO xattrs SELECT ?, name, value FROM xattrs WHERE inode=?",
                        (new, ino))
        self.db.execute("INSERT INTO replication_status SELECT ?, status FROM replication_status"
                        " WHERE inode=?", (new, ino))
        return new

    def unlinked_inodes(self):
        """Inodes without any name (left by a crash while they were open)."""
        return [r[0] for r in self.db.execute("SELECT id FROM inodes WHERE nlink<=0")]

    def inode_count(self):
        """Number of inodes (what ``df -i`` shows in use). Counted once, then kept up to
        date by the methods that add and remove inodes (a count is a full scan: 25 ms
        for a million inodes, on the trio thread)."""
        if self._inode_count is None:
            self._inode_count = self.db.execute("SELECT count(*) FROM inodes").fetchone()[0]
        return self._inode_count

    def _count_inodes(self, delta):
        if self._inode_count is not None:
            self._inode_count += delta

    def usage_by_encryption(self, apart=False):
        """[(bucket inode, stored encryption label or None, objects, bytes)] of the linked
        regular files of every bucket (current objects; noncurrent versions have no name,
        parts of multipart uploads are not objects).

        One full scan of the inode table: half a second for a million objects. With
        ``apart``, through a read-only connection of its own, which sees the last commit:
        callable from a worker thread while the trio thread goes on."""
        sql = ("SELECT bucket, enc, count(*), coalesce(sum(size), 0) FROM inodes "
               "WHERE bucket != 0 AND nlink > 0 AND (mode & 61440) = 32768 "
               "AND id NOT IN (SELECT inode FROM upload_parts) "
               "GROUP BY bucket, enc")
        if not apart:
            return self.db.execute(sql).fetchall()
        db = sqlite3.connect(read_only_uri(self.path), uri=True)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    # -- dentries --------------------------------------------------------
    def lookup(self, parent, name) -> Optional[int]:
        """The inode named ``name`` in ``parent``, or None.

        The last name found missing is remembered until a dentry changes: the
        kernel's LOOKUP of a new name is followed by the CREATE that checks it again.
        """
        key = (parent, name)
        if key == self._missing:
            return None
        row = self.db.execute("SELECT inode FROM dentries WHERE parent=? AND name=?",
                              key).fetchone()
        if row is None:
            self._missing = key
            return None
        return row[0]

    def add_dentry(self, parent, name, ino):
        self._missing = None
        self.db.execute("INSERT INTO dentries VALUES (?, ?, ?)", (parent, name, ino))

    def remove_dentry(self, parent, name):
        self._missing = None
        for (gone,) in self.db.execute(
                "DELETE FROM dentries WHERE parent=? AND name=? RETURNING inode", (parent, name)):
            self._parents.pop(gone, None)

    def set_dentry(self, parent, name, ino):
        """Point (parent, name) at ``ino``, replacing the entry it had, if any."""
        self.remove_dentry(parent, name)
        self._parents.pop(ino, None)
        self._missing = None
        self.db.execute("INSERT INTO dentries VALUES (?, ?, ?)", (parent, name, ino))

    def has_children(self, parent) -> bool:
        return self.db.execute("SELECT 1 FROM dentries WHERE parent=? LIMIT 1",
                               (parent,)).fetchone() is not None

    def parent_of(self, ino):
        """(parent, name) of a directory's single dentry (of one of a file's names), or
        None for the root and nameless inodes. Cached like inodes (see get_inode)."""
        row = self._parents.get(ino)
        if row is None:
            row = self.db.execute("SELECT parent, name FROM dentries WHERE inode=? LIMIT 1",
                                  (ino,)).fetchone()
            if row is not None:
                if len(self._parents) >= INODE_CACHE_SIZE:
                    self._parents.clear()
                self._parents[ino] = row
        return row

    def list_dir(self, parent, after=None, limit=None, stored=False):
        """[(name, Inode)] sorted by name; ``after`` resumes after a name. ``stored``: also
        learn each entry's :meth:`stored_length` in the same query (a listing with
        attributes reports them all)."""
        sql = ("SELECT d.name, %s%s FROM dentries d JOIN inodes i ON i.id=d.inode"
               " WHERE d.parent=?" % (
                   ", ".join("i." + c for c in INODE_COLUMNS),
                   ", CASE WHEN i.size > 0 AND (i.mode & 61440) = 32768 THEN"
                   " (SELECT total(length) FROM chunks c WHERE c.inode=i.id) END"
                   if stored else ""))
        args = [parent]
        if after is not None:
            sql += " AND d.name>?"
            args.append(after)
        sql += " ORDER BY d.name"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        out = []
        cache = self._stored
        for r in self.db.execute(sql, args):
            row = r[1:-1] if stored else r[1:]
            # the rows join the inode cache (as get_inode's do): a listing with attributes
            # is followed by requests for its entries (open, stat), which then find them in
            # memory instead of reading the table again (from the disk, when it is cold)
            self._cache_inode(row)
            inode = Inode(*row)
            if stored and r[-1] is not None:  # a regular file with content (others: none)
                if len(cache) >= STORED_CACHE_SIZE:
                    cache.clear()
                cache[inode.id] = int(r[-1])
            out.append((r[0], inode))
        return out

    def longest_relative_key(self, parent) -> int:
        """Length of the longest path below directory ``parent`` (``a/b/c``, a directory
        with its trailing ``/``), 0 if the directory is empty."""
        row = self.db.execute(
            "WITH RECURSIVE t(ino, len) AS ("
            " SELECT inode, length(name) FROM dentries WHERE parent=?"
            " UNION ALL SELECT d.inode, t.len + 1 + length(d.name)"
            " FROM dentries d JOIN t ON d.parent=t.ino)"
            " SELECT coalesce(max(t.len + ((i.mode & 61440) = 16384)), 0)"
            " FROM t JOIN inodes i ON i.id=t.ino", (parent,)).fetchone()
        return row[0]

    # -- chunks ----------------------------------------------------------
    def chunks(self, ino):
        return [Chunk(*r) for r in self.db.execute(
            "SELECT idx, blob, length, data FROM chunks WHERE inode=? ORDER BY idx", (ino,))]

    def chunk(self, ino, idx) -> Optional[Chunk]:
        """Chunk ``idx`` of inode ``ino`` (None: a hole or past the end).

        Served from a write-through cache like :meth:`get_inode`: every change to
        ``chunks`` goes through this class and updates or drops the inode's cached
        rows; a rolled-back transaction empties it.
        """
        rows = self._chunks.get(ino)
        if rows is not None:
            ch = rows.get(idx, _MISSING)
            if ch is not _MISSING:
                return ch
        if ino in self._chunkless:
            return None
        row = self.db.execute(
            "SELECT idx, blob, length, data FROM chunks WHERE inode=? AND idx=?",
            (ino, idx)).fetchone()
        ch = None if row is None else Chunk(*row)
        self._cache_chunk(ino, idx, ch)
        return ch

    def _cache_chunk(self, ino, idx, ch):
        """Remember ``ch`` (None: no row) as chunk ``idx`` of ``ino``. Packed rows are not
        kept: their sealed bytes would make the cache's memory grow with file sizes."""
        rows = self._chunks.get(ino)
        if ch is not None and ch.packed:
            if rows is not None and rows.pop(idx, _MISSING) is not _MISSING:
                self._chunk_rows -= 1
                if not rows:
                    del self._chunks[ino]
            return
        if rows is None or idx not in rows:
            if self._chunk_rows >= CHUNK_CACHE_SIZE:
                for old in list(itertools.islice(self._chunks, len(self._chunks) // 4 + 1)):
                    self._chunk_rows -= len(self._chunks.pop(old))
                rows = self._chunks.get(ino)
            if rows is None:
                rows = self._chunks[ino] = {}
            self._chunk_rows += 1
        rows[idx] = ch

    def stored_length(self, ino) -> int:
        """Plaintext bytes held by the chunk rows of ``ino``: its content less the chunks
        that are holes (never written, or cut off and grown again), which are stored
        as nothing. What ``st_blocks`` reports for a committed object.

        Cached like the chunk rows (every change to them drops the inode's entry).
        """
        n = self._stored.get(ino)
        if n is None:
            if ino in self._chunkless:
                return 0
            n = int(self.db.execute("SELECT total(length) FROM chunks WHERE inode=?",
                                    (ino,)).fetchone()[0])
            if len(self._stored) >= STORED_CACHE_SIZE:
                self._stored.clear()
            self._stored[ino] = n
        return n

    def _chunks_changed(self, ino):
        """Chunk rows of ``ino`` change: drop what the cache holds of them."""
        self._stored.pop(ino, None)
        self._chunkless.discard(ino)
        rows = self._chunks.pop(ino, None)
        if rows is not None:
            self._chunk_rows -= len(rows)

    def set_chunk(self, ino, idx, blob, length, region, data=None):
        """Point chunk ``idx`` at a new blob, or pack its sealed bytes ``data`` into the row.

        A stored blob that is replaced goes to garbage; a packed one simply goes.
        """
        stored = 0 if ino in self._chunkless else self._stored.get(ino)
        old = self.chunk(ino, idx)
        if old is not None and not old.packed and old.blob != blob and self.db.execute(
                "SELECT 1 FROM chunks WHERE blob=? AND inode<>? LIMIT 1",
                (old.blob, ino)).fetchone() is None:
            self.db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (old.blob, region))
        self.db.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?)",
                        (ino, idx, blob, length, data))
        self._chunkless.discard(ino)
        if stored is None:
            self._stored.pop(ino, None)
        else:  # kept up to date: the getattr after a commit asks for it
            if len(self._stored) >= STORED_CACHE_SIZE:
                self._stored.clear()
            self._stored[ino] = stored - (0 if old is None else old.length) + length
        self._cache_chunk(ino, idx, Chunk(idx, blob, length, data))

    def drop_chunk(self, ino, idx, region):
        """Remove chunk ``idx`` (a hole punched into the object); its blob goes to garbage
        unless another inode shares it."""
        self._chunks_changed(ino)
        self.db.execute(
            "INSERT OR IGNORE INTO garbage SELECT blob, ? FROM chunks c"
            " WHERE inode=? AND idx=? AND data IS NULL AND " + _UNSHARED, (region, ino, idx))
        self.db.execute("DELETE FROM chunks WHERE inode=? AND idx=?", (ino, idx))

    def chunk_indexes(self, ino, first, last):
        """Indexes of the stored chunks of ``ino`` in ``[first, last]``, ascending."""
        if ino in self._chunkless:
            return []
        return [r[0] for r in self.db.execute(
            "SELECT idx FROM chunks WHERE inode=? AND idx BETWEEN ? AND ? ORDER BY idx",
            (ino, first, last))]

    def drop_chunks_from(self, ino, first_idx, region):
        """Remove chunks with index >= first_idx (truncate)."""
        self._chunks_changed(ino)
        self.db.execute(
            "INSERT OR IGNORE INTO garbage SELECT blob, ? FROM chunks c"
            " WHERE inode=? AND idx>=? AND data IS NULL AND " + _UNSHARED,
            (region, ino, first_idx))
        self.db.execute("DELETE FROM chunks WHERE inode=? AND idx>=?", (ino, first_idx))

    def referenced_blobs(self):
        """Ids of the blobs the store must hold (packed chunks have none there)."""
        return {r[0] for r in self.db.execute("SELECT blob FROM chunks WHERE data IS NULL")}

    def named_blobs(self, lo, hi=None):
        """The blob ids in ``[lo, hi)`` (no upper bound if ``hi`` is None) that a chunk row
        or the garbage table names: one range of the ``chunks_blob`` index, so a store's
        blobs can be checked against the catalog a slice at a time."""
        if hi is None:
            cond, args = "blob >= ?", (lo,)
        else:
            cond, args = "blob >= ? AND blob < ?", (lo, hi)
        named = {r[0] for r in self.db.execute("SELECT DISTINCT blob FROM chunks WHERE " + cond,
                                               args)}
        named.update(r[0] for r in self.db.execute("SELECT blob FROM garbage WHERE " + cond, args))
        return named

    def chunk_rows(self):
        """Every (inode, Chunk) in the catalog (for fsck and re-wrap)."""
        for r in self.db.execute(
                "SELECT inode, idx, blob, length, data FROM chunks ORDER BY inode, idx"):
            yield r[0], Chunk(*r[1:])

    # -- garbage ---------------------------------------------------------
    def garbage(self, limit=1000):
        """Up to ``limit`` released (blob, region) that no chunk row references any more.

        A blob that another inode still references is not added to ``garbage`` when one
        inode releases it (a noncurrent version keeps the blobs of the content it was
        copied from, see :meth:`clone_inode`); the release of its last reference adds it.
        The check here is a second guard. Reads only (a full disk can still collect).
        """
        return list(self.db.execute(
            "SELECT blob, region FROM garbage g WHERE NOT EXISTS"
            " (SELECT 1 FROM chunks c WHERE c.blob=g.blob) LIMIT ?", (limit,)))

    def add_garbage(self, blob, region):
        self.db.execute("INSERT OR IGNORE INTO garbage VALUES (?, ?)", (blob, region))

    def forget_garbage(self, blobs):
        with self.transaction():
            self.db.executemany("DELETE FROM garbage WHERE blob=?", [(b,) for b in blobs])

    # -- xattrs ----------------------------------------------------------
    def get_xattr(self, ino, name):
        row = self.db.execute("SELECT value FROM xattrs WHERE inode=? AND name=?",
                              (ino, name)).fetchone()
        return None if row is None else row[0]

    def set_xattr(self, ino, name, value):
        self.db.execute("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)", (ino, name, value))

    def remove_xattr(self, ino, name) -> bool:
        return self.db.execute("DELETE FROM xattrs WHERE inode=? AND name=?",
                               (ino, name)).rowcount > 0

    def list_xattrs(self, ino):
        return [r[0] for r in self.db.execute(
            "SELECT name FROM xattrs WHERE inode=? ORDER BY name", (ino,))]

    def xattr_bytes(self, ino):
        row = self.db.execute("SELECT coalesce(sum(length(name) + length(value)), 0) FROM xattrs"
                              " WHERE inode=?", (ino,)).fetchone()
        return row[0]

    # -- versions (cosfs.versions) -----------------------------------------
    def add_version(self, bucket_ino, key, version_id, holder, mtime_ns):
        """Record a noncurrent version (``holder`` inode) or, with holder None, a delete
        marker of ``key`` (inside a transaction)."""
        self.db.execute("INSERT INTO versions (bucket, key, version_id, inode, mtime_ns)"
                        " VALUES (?, ?, ?, ?, ?)", (bucket_ino, key, version_id, holder, mtime_ns))

    def versions_of(self, bucket_ino, key):
        """[(seq, version_id, holder inode or None, mtime_ns)] of ``key``, oldest first."""
        return list(self.db.execute(
            "SELECT seq, version_id, inode, mtime_ns FROM versions WHERE bucket=? AND key=?"
            " ORDER BY seq", (bucket_ino, key)))

    def version_rows(self, bucket_ino, *, prefix=b"", after=(b"", -1), limit=1000):
        """[(key, seq, version_id, holder, mtime_ns)] of a bucket in (key, seq) order,
        starting after ``after`` = (key, seq), keys beginning with ``prefix``."""
        hi = prefix + b"\xff" * 4 if prefix else None
        sql = ("SELECT key, seq, version_id, inode, mtime_ns FROM versions WHERE bucket=?"
               " AND (key>? OR (key=? AND seq>?)) AND key>=?")
        args = [bucket_ino, after[0], after[0], after[1], prefix]
        if hi is not None:
            sql += " AND key<?"
            args.append(hi)
        sql += " ORDER BY key, seq LIMIT ?"
        args.append(limit)
        return list(self.db.execute(sql, args))

    def drop_version(self, seq):
        """Forget one version row; returns its holder inode (or None for a marker)."""
        row = self.db.execute("DELETE FROM versions WHERE seq=? RETURNING inode",
                              (seq,)).fetchone()
        return None if row is None else row[0]

    def has_versions(self, bucket_ino) -> bool:
        return self.db.execute("SELECT 1 FROM versions WHERE bucket=? LIMIT 1",
                               (bucket_ino,)).fetchone() is not None

    # -- replication queue (cosfs.services.replication) ----------------------
    def queue_replication(self, bucket_ino, key, version_id, op, dest, not_before_ns):
        """Add (or, when the same version and operation is queued, renew) a replication
        task (inside a transaction)."""
        row = self.db.execute(
            "SELECT seq FROM replication_queue WHERE bucket=? AND key=? AND version_id IS ?"
            " AND op=?", (bucket_ino, key, version_id, op)).fetchone()
        if row is None:
            self.db.execute("INSERT INTO replication_queue (bucket, key, version_id, op, dest,"
                            " next_ns) VALUES (?, ?, ?, ?, ?, ?)",
                            (bucket_ino, key, version_id, op, dest, not_before_ns))
        else:
            self.db.execute("UPDATE replication_queue SET gen=gen+1, attempts=0, error=NULL,"
                            " dest=?, next_ns=? WHERE seq=?", (dest, not_before_ns, row[0]))

    def due_replication_tasks(self, now_ns, limit=100):
        """Tasks due at ``now_ns`` that no older task of the same key waits before (the
        versions of one key are copied in the order they were made), oldest first; rows as
        :meth:`replication_tasks`."""
        return list(self.db.execute(
            "SELECT seq, bucket, key, version_id, op, dest, gen, attempts, next_ns, error"
            " FROM replication_queue q WHERE next_ns<=? AND " + _FIRST_OF_KEY +
            " ORDER BY seq LIMIT ?", (now_ns, limit)))

    def next_replication_ns(self):
        """When the next task may run (None: the queue is empty)."""
        return self.db.execute("SELECT min(next_ns) FROM replication_queue q WHERE "
                               + _FIRST_OF_KEY).fetchone()[0]

    def replication_tasks(self, limit=100):
        """[(seq, bucket, key, version_id, op, dest, gen, attempts, next_ns, error)] oldest
        first."""
        return list(self.db.execute(
            "SELECT seq, bucket, key, version_id, op, dest, gen, attempts, next_ns, error"
            " FROM replication_queue ORDER BY seq LIMIT ?", (limit,)))

    def replication_task(self, seq):
        return self.db.execute(
            "SELECT seq, bucket, key, version_id, op, dest, gen, attempts, next_ns, error"
            " FROM replication_queue WHERE seq=?", (seq,)).fetchone()

    def finish_replication(self, seq, gen) -> bool:
        """Remove a task unless it was renewed (its ``gen`` changed) meanwhile."""
        return self.db.execute("DELETE FROM replication_queue WHERE seq=? AND gen=?",
                               (seq, gen)).rowcount > 0

    def delay_replication(self, seq, attempts, next_ns, error):
        self.db.execute("UPDATE replication_queue SET attempts=?, next_ns=?, error=?"
                        " WHERE seq=?", (attempts, next_ns, error, seq))

    def replication_queue_length(self, bucket_ino=None):
        if bucket_ino is None:
            return self.db.execute("SELECT count(*) FROM replication_queue").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM replication_queue WHERE bucket=?",
                               (bucket_ino,)).fetchone()[0]

    def replication_status_counts(self, bucket_ino):
        """{x-cos-replication-status: number of the bucket's versions with it} (console)."""
        return dict(self.db.execute(
            "SELECT r.status, count(*) FROM replication_status r JOIN inodes i ON i.id = r.inode"
            " WHERE i.bucket=? GROUP BY r.status", (bucket_ino,)))

    def set_implied(self, ino, implied):
        """Record whether directory ``ino`` exists only for the keys below it."""
        if implied:
            self.db.execute("INSERT OR IGNORE INTO implied_dirs VALUES (?)", (ino,))
        else:
            self.db.execute("DELETE FROM implied_dirs WHERE inode=?", (ino,))

    def is_implied(self, ino) -> bool:
        return self.db.execute("SELECT 1 FROM implied_dirs WHERE inode=?",
                               (ino,)).fetchone() is not None

    def names_of(self, ino):
        """[(parent, name)] of every name of ``ino``."""
        return list(self.db.execute("SELECT parent, name FROM dentries WHERE inode=?", (ino,)))

    # -- replication status ----------------------------------------------
    def replication_status(self, ino):
        """The object's x-cos-replication-status (PENDING, COMPLETED, FAILED, REPLICA) or None."""
        row = self.db.execute("SELECT status FROM replication_status WHERE inode=?",
                              (ino,)).fetchone()
        return None if row is None else row[0]

    def set_replication_status(self, ino, status):
        """Set (or with None clear) the object's replication status (inside a transaction)."""
        if status is None:
            self.db.execute("DELETE FROM replication_status WHERE inode=?", (ino,))
        else:
            self.db.execute("INSERT OR REPLACE INTO replication_status VALUES (?, ?)",
                            (ino, status))

    # -- buckets ---------------------------------------------------------
    def buckets(self):
        """[(inode, name, region)] sorted by name."""
        return list(self.db.execute("SELECT inode, name, region FROM buckets ORDER BY name"))

    def bucket_by_name(self, name):
        return self.db.execute("SELECT inode, name, region FROM buckets WHERE name=?",
                               (name,)).fetchone()

    def bucket_by_inode(self, ino):
        """(inode, name, region) of bucket ``ino``, or None; cached (every read asks)."""
        try:
            return self._buckets[ino]
        except KeyError:
            pass
        row = self.db.execute("SELECT inode, name, region FROM buckets WHERE inode=?",
                              (ino,)).fetchone()
        if len(self._buckets) >= INODE_CACHE_SIZE:
            self._buckets.clear()
        self._buckets[ino] = row
        return row

    def bucket_created_ns(self, ino):
        row = self.db.execute("SELECT created_ns FROM buckets WHERE inode=?", (ino,)).fetchone()
        return None if row is None else row[0]

    def add_bucket(self, ino, name, region):
        self._buckets.pop(ino, None)
        self.db.execute("INSERT INTO buckets VALUES (?, ?, ?, ?)", (ino, name, region, now_ns()))

    def remove_bucket(self, ino):
        self._buckets.pop(ino, None)
        self._configs.clear()
        self.db.execute("DELETE FROM buckets WHERE inode=?", (ino,))
        self.db.execute("DELETE FROM bucket_configs WHERE bucket=?", (ino,))

    def get_bucket_config(self, bucket_ino, kind):
        """Bucket ``bucket_ino``'s document of ``kind``, or None; cached write-through (every
        write asks for the bucket's default encryption)."""
        key = (bucket_ino, kind)
        try:
            return self._configs[key]
        except KeyError:
            pass
        row = self.db.execute("SELECT doc FROM bucket_configs WHERE bucket=? AND kind=?",
                              key).fetchone()
        doc = None if row is None else row[0]
        if len(self._configs) >= INODE_CACHE_SIZE:
            self._configs.clear()
        self._configs[key] = doc
        return doc

    def set_bucket_config(self, bucket_ino, kind, doc):
        self._configs.pop((bucket_ino, kind), None)
        self.db.execute("INSERT OR REPLACE INTO bucket_configs VALUES (?, ?, ?)",
                        (bucket_ino, kind, doc))

    def delete_bucket_config(self, bucket_ino, kind):
        self._configs.pop((bucket_ino, kind), None)
        self.db.execute("DELETE FROM bucket_configs WHERE bucket=? AND kind=?", (bucket_ino, kind))

    def bucket_configs(self, bucket_ino, prefix, *, after=None, limit=None):
        """[(kind, doc)] of a bucket's configurations whose kind starts with ``prefix``
        (``inventory:``), in kind order, kinds after ``after`` only."""
        sql = ("SELECT kind, doc FROM bucket_configs WHERE bucket=? AND substr(kind, 1, ?)=?"
               " AND kind>? ORDER BY kind")
        args = [bucket_ino, len(prefix), prefix, after or ""]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return list(self.db.execute(sql, args))

    def count_bucket_configs(self, bucket_ino, prefix):
        return self.db.execute("SELECT count(*) FROM bucket_configs WHERE bucket=? AND"
                               " substr(kind, 1, ?)=?", (bucket_ino, len(prefix),
                                                         prefix)).fetchone()[0]

    def all_bucket_configs(self, prefix):
        """[(bucket inode, kind, doc)] of every bucket's configurations of that prefix."""
        return list(self.db.execute(
            "SELECT bucket, kind, doc FROM bucket_configs WHERE substr(kind, 1, ?)=?"
            " AND bucket IN (SELECT inode FROM buckets) ORDER BY bucket, kind",
            (len(prefix), prefix)))

    # -- inventory deliveries (cosfs.services.inventory) ---------------------------------
    _DELIVERY_COLUMNS = ("bucket", "id", "job", "period", "started_ns", "finished_ns", "dest",
                         "manifest", "written", "summary")

    def inventory_delivery(self, bucket_ino, inventory_id):
        """The last delivery of an inventory as a dict (columns of the table), or None."""
        row = self.db.execute("SELECT %s FROM inventory_deliveries WHERE bucket=? AND id=?"
                              % ", ".join(self._DELIVERY_COLUMNS),
                              (bucket_ino, inventory_id)).fetchone()
        return None if row is None else dict(zip(self._DELIVERY_COLUMNS, row))

    def inventory_deliveries(self):
        """Every recorded delivery (dicts), finished or not."""
        return [dict(zip(self._DELIVERY_COLUMNS, row)) for row in self.db.execute(
            "SELECT %s FROM inventory_deliveries ORDER BY bucket, id"
            % ", ".join(self._DELIVERY_COLUMNS))]

    def set_inventory_delivery(self, record):
        """Insert or replace a delivery (a dict with every column; inside a transaction)."""
        self.db.execute("INSERT OR REPLACE INTO inventory_deliveries VALUES (?,?,?,?,?,?,?,?,?,?)",
                        tuple(record[c] for c in self._DELIVERY_COLUMNS))

    def delete_inventory_delivery(self, bucket_ino, inventory_id):
        self.db.execute("DELETE FROM inventory_deliveries WHERE bucket=? AND id=?",
                        (bucket_ino, inventory_id))

    # -- multipart uploads (cosfs.keyspace) --------------------------------------------
    def add_upload(self, upload_id, bucket_ino, key, initiated_ns, enc_request, enc, meta):
        self.db.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (upload_id, bucket_ino, key, initiated_ns, enc_request, enc, meta))

    def get_upload(self, upload_id):
        """(id, bucket, key, initiated_ns, enc_request, enc, meta) or None."""
        return self.db.execute("SELECT id, bucket, key, initiated_ns, enc_request, enc, meta"
                               " FROM uploads WHERE id=?", (upload_id,)).fetchone()

    def list_uploads(self, bucket_ino, *, prefix=b"", after=(b"", ""), limit=1000):
        """[(key, id, initiated_ns)] of a bucket's uploads in (key, id) order, after the
        (key, id) pair ``after``, keys starting with ``prefix``."""
        key, upload_id = after
        return list(self.db.execute(
            "SELECT key, id, initiated_ns FROM uploads WHERE bucket=? AND (key>? OR (key=? AND"
            " id>?)) AND substr(key, 1, ?)=? ORDER BY key, id LIMIT ?",
            (bucket_ino, key, key, upload_id, len(prefix), prefix, limit)))

    def has_uploads(self, bucket_ino) -> bool:
        return self.db.execute("SELECT 1 FROM uploads WHERE bucket=? LIMIT 1",
                               (bucket_ino,)).fetchone() is not None

    def uploads_without_bucket(self):
        """Ids of uploads whose bucket is gone (removed on the mount)."""
        return [r[0] for r in self.db.execute(
            "SELECT id FROM uploads WHERE bucket NOT IN (SELECT inode FROM buckets)")]

    def delete_upload(self, upload_id):
        """Remove an upload and its part rows; returns the part inodes (not deleted here)."""
        parts = [r[0] for r in self.db.execute("SELECT inode FROM upload_parts WHERE upload=?",
                                               (upload_id,))]
        self.db.execute("DELETE FROM upload_parts WHERE upload=?", (upload_id,))
        self.db.execute("DELETE FROM uploads WHERE id=?", (upload_id,))
        return parts

    def upload_parts(self, upload_id, *, after=0, limit=None):
        """[(number, inode, etag, size, mtime_ns)] by number, numbers above ``after``."""
        sql = ("SELECT number, inode, etag, size, mtime_ns FROM upload_parts WHERE upload=?"
               " AND number>? ORDER BY number")
        args = [upload_id, after]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return list(self.db.execute(sql, args))

    def upload_identity(self, upload_id) -> Optional[int]:
        """The inode that holds an upload's sealing identity (its row numbered 0), or
        None for an upload initiated before uploads had one."""
        row = self.db.execute("SELECT inode FROM upload_parts WHERE upload=? AND number=0",
                              (upload_id,)).fetchone()
        return None if row is None else row[0]

    def largest_part(self, upload_id) -> int:
        """The size of the largest part uploaded so far (0 without parts)."""
        row = self.db.execute("SELECT max(size) FROM upload_parts WHERE upload=? AND number>0",
                              (upload_id,)).fetchone()
        return row[0] or 0

    def link_chunks(self, src, dst):
        """Give inode ``dst`` the chunk rows of inode ``src`` at the same indexes (inside a
        transaction; ``dst`` has none there). Both share the blobs, which go to garbage
        only when neither references them; the caller makes sure both share a sealing
        identity (object id and data key), or the chunks will not open as ``dst``'s."""
        self._chunks_changed(dst)
        self.db.execute("INSERT INTO chunks SELECT ?, idx, blob, length, data FROM chunks"
                        " WHERE inode=?", (dst, src))

    def set_upload_part(self, upload_id, number, ino, etag, size, mtime_ns):
        """Record a part; returns the inode of the part it replaces, or None."""
        row = self.db.execute("SELECT inode FROM upload_parts WHERE upload=? AND number=?",
                              (upload_id, number)).fetchone()
        self.db.execute("INSERT OR REPLACE INTO upload_parts VALUES (?, ?, ?, ?, ?, ?)",
                        (upload_id, number, ino, etag, size, mtime_ns))
        return None if row is None else row[0]
