"""The object data path: buffering, chunking, sealing, commit order.

An object's content is split into fixed-size chunks (``chunk_size``); chunk
``i`` covers plaintext bytes ``[i*chunk_size, (i+1)*chunk_size)`` and is
stored as one immutable blob (sealed by :mod:`cosfs.cipher` when the object is
encrypted). A chunk may hold fewer bytes than its span: the rest, up to the
object's size, reads as zeros (holes, extension by truncate).

Write path, per object (:class:`ObjectState`, shared by all handles of an inode):
  1. the first change after a commit opens a *write session*: the resolver is
     asked once which encryption the new content gets (override xattr, bucket
     default); if that differs from the stored state, the commit re-encrypts
     every chunk of the object, so an object is always wholly in one state;
  2. writes modify chunk buffers in memory; a chunk that a sequential writer
     completes is sealed and stored at once in a worker thread; when the dirty
     bytes of a file exceed ``write_buffer`` the writer waits for buffers to be
     sealed (memory stays bounded whatever the file size);
  3. ``commit`` (close, flush, fsync, truncate) seals what is left, syncs the
     blobs when durability is asked for, then records the new chunk map, size
     and encryption in ONE catalog transaction. Replaced blobs go to the
     ``garbage`` table and are deleted after the commit.
So the catalog never references a blob that was not completely written, and
a crash leaves the old or the new version (plus orphan blobs, removed at the next start).

Threading: everything here runs on the trio thread except the functions
passed to ``trio.to_thread.run_sync`` (sealing, opening, store I/O), which
touch no shared state besides the stores (thread-safe) and the key store.
"""

import contextlib
import errno
import hashlib
import itertools
import logging
import os
from typing import Dict, Optional

import trio

from . import cipher, metrics
from .bucketconf import parse_encryption, spec_from_config
from .catalog import Chunk, now_ns
from .chunkbuf import PARTIAL_MIN, SEG, PartialChunk, held
from .chunkio import (CIPHER_OF, Crypt, data_key_aad, reseal, seal, seal_put, store_failure,
                      stored_label)
from .collector import Collector
from .errors import CosfsError, FsError, IntegrityError, StoreError
from .reader import ChunkReader
from .resolver import EncryptionSpec, WriterKind, decide, parse_override
from .versions import Versions

log = logging.getLogger(__name__)

#: Chunks up to this size are sealed and stored on the trio thread: for small files
#: the hand-off to a worker and back costs more than the work (measured: 1-2 ms per
#: file against ~0.2 ms of work).
INLINE_WRITE_LIMIT = 128 * 1024

#: Chunks with fewer plaintext bytes than this (and than a whole chunk) are packed:
#: their sealed bytes go into the catalog row that commits them, not into a blob file.
#: A small file then costs no file creation, no thread hop and no extra fsync, and is
#: read back with the row that locates it (docs/format.md, "Packed chunks").
#: (16 KiB: two thirds of the files of a source tree; larger ones would make the catalog's
#: WAL, which every packed byte passes through twice, the bulk of a small store's disk.)
PACK_LIMIT = 16 * 1024

#: Completed chunks of one object that may wait for sealing before its writer waits.
MAX_BACKGROUND_SEALS = 8

#: Background tasks sealing chunks at once when the write buffers are over write_buffer.
BACKGROUND_RELIEVERS = 1

#: How many of an object's least recently written chunks the relief compares to pick
#: the one to seal: the one holding the most bytes. A partly held chunk is loaded whole
#: and sealed whole to free what it holds, so the more it holds, the less that costs per
#: byte freed (a whole buffer frees everything it costs).
VICTIM_WINDOW = 16

#: Commits :meth:`ObjectStore.rewrite` makes before it gives up (EBUSY) on an object
#: whose writers keep changing it between its commit and its re-encryption.
REWRITE_SETTLE_TRIES = 50

#: Chunks a sequential reader is read ahead of.
READ_AHEAD_CHUNKS = 2

#: Default of :meth:`ObjectStore.rewrite`: leave the override request as it is.
_KEEP = object()


@contextlib.contextmanager
def _releasing(lock):
    """Release ``lock`` (acquired already) when the block ends, however it ends."""
    try:
        yield
    finally:
        lock.release()


class ObjectState:
    """In-memory state of one object with open handles or uncommitted changes."""

    def __init__(self, inode, region, budget=None):
        self.budget = budget if budget is not None else DirtyBudget()
        self._dirty_bytes = 0
        self.ino = inode.id
        self.region = region
        self.size = inode.size
        self.mtime_ns = inode.mtime_ns
        self.ctime_ns = inode.ctime_ns
        self.open_count = 0
        self.dirty: Dict[int, bytearray] = {}
        self.gens: Dict[int, int] = {}
        #: chunks sealed (or punched out: None) since the last commit, which records them
        self.pending: Dict[int, Optional[Chunk]] = {}
        self.flushing: Dict[int, trio.Event] = {}
        self.cut_from: Optional[int] = None
        self.modified = False
        self.session = None  # (Crypt or None, rewrite_all: bool) while a write session is open
        self.error: Optional[BaseException] = None
        self.commit_lock = trio.Lock()
        self.read_pos = -1  # where the last read ended: detects sequential readers
        self.write_pos = 0  # where the last write ended: detects sequential writers
        #: this write session already made its version (versioned buckets: further
        #: commits of the session update that version, see cosfs.versions). A session
        #: lasts from the first writable open to the last writable close; a truncate or
        #: re-encryption without a writable handle is a session of its own.
        self.version_made = False
        self.writers = 0  # open handles that may write
        #: inode fields (mode, uid, gid, atime_ns) set while new data awaited its commit:
        #: they are written by that commit's transaction (see FileSystem.setattr)
        self.attrs: Dict[str, int] = {}
        #: st_blocks was reported as the whole size while changes awaited a commit (see
        #: ObjectStore.stored_size): whoever asked may cache that estimate
        self.blocks_estimated = False

    @property
    def busy(self):
        return bool(self.open_count or self.modified or self.flushing or self.pending)

    @property
    def dirty_bytes(self):
        """Bytes in this object's chunk buffers; changes are added to the shared budget."""
        return self._dirty_bytes

    @dirty_bytes.setter
    def dirty_bytes(self, value):
        self.budget.total += value - self._dirty_bytes
        self._dirty_bytes = value


class DirtyBudget:
    """Dirty bytes of all open objects together, bounded by ``write_buffer``."""

    def __init__(self):
        self.total = 0


class ObjectStore:
    """The data path over a catalog, per-region chunk stores and a key store.

    ``nursery`` must be set (``attach``) before writes: background sealing and
    garbage collection run in it.
    """

    def __init__(self, catalog, stores, keystore, *, chunk_size, cache_size, write_buffer,
                 threads=None):
        self.catalog = catalog
        self.stores = stores
        self.keys = keystore
        self.chunk_size = chunk_size
        self.write_buffer = max(write_buffer, 2 * chunk_size)
        self.limiter = trio.CapacityLimiter(threads or max(2, (os.cpu_count() or 2) + 1))
        self.reader = ChunkReader(cache_size=cache_size, limiter=self.limiter)
        self.collector = Collector(catalog, stores, self.limiter, self.reader.in_use)
        #: versioning and replication bookkeeping of every commit (cosfs.versions)
        self.versions = Versions(catalog)
        self.states: Dict[int, ObjectState] = {}
        self._keycache = {}
        self._defaults = {}
        self.budget = DirtyBudget()
        #: above write_buffer, the least recently written chunks are sealed in the
        #: background, so that a random writer's next chunk loads overlap the sealing of
        #: the chunks they displace; a writer waits only above this hard limit
        self.write_limit = self.write_buffer + max(2 * chunk_size, self.write_buffer // 16)
        self._relieving = 0  # _relieve_bg tasks running
        self._nursery = None

    def attach(self, nursery):
        """Start background work (garbage collection) in ``nursery``."""
        self._nursery = nursery
        nursery.start_soon(self.collector.run)
        if self.collector.snapshots is not None:
            nursery.start_soon(self.collector.snapshots.run)

    # -- states ----------------------------------------------------------
    def region_of(self, inode):
        row = self.catalog.bucket_by_inode(inode.bucket)
        if row is not None:
            return row[2]
        # The bucket was removed while this object (unlinked, still open or known to the
        # kernel) or the bucket directory itself lived on: find the store holding its data.
        first = [ch for ch in self.catalog.chunks(inode.id) if not ch.packed][:1]
        for region, store in self.stores.items():
            if not first:
                return region
            try:
                store.size(first[0].blob)
                return region
            except StoreError:
                continue
        raise FsError(errno.EIO, "inode %d has no bucket" % inode.id)

    def store_of(self, region):
        try:
            return self.stores[region]
        except KeyError:
            raise CosfsError("no chunk store for region %s" % region) from None

    def state(self, ino) -> ObjectState:
        st = self.states.get(ino)
        if st is None:
            inode = self.catalog.get_inode(ino)
            st = ObjectState(inode, self.region_of(inode), self.budget)
            self.states[ino] = st
        return st

    def opened(self, ino, write=False):
        """A handle was opened (``write``: one that may write: a write session starts
        with the first of those)."""
        st = self.state(ino)
        st.open_count += 1
        if write:
            if not st.writers:
                st.version_made = False
            st.writers += 1

    def unopened(self, ino, write=False):
        """Undo :meth:`opened` when the open failed (no await: safe while cancelled)."""
        st = self.states.get(ino)
        if st is not None:
            st.open_count -= 1
            if write:
                st.writers -= 1
            self._maybe_drop(st)

    async def released(self, ino, write=False):
        """Last step of a close: commit, then drop the state if nothing holds it. The
        last writable handle's close ends the write session."""
        st = self.states.get(ino)
        if st is None:
            return
        st.open_count -= 1
        if write:
            st.writers -= 1
        try:
            await self.commit(ino)
            if not st.writers:
                st.version_made = False
        finally:
            self._maybe_drop(st)

    def _maybe_drop(self, st):
        if not st.busy and self.states.get(st.ino) is st:
            del self.states[st.ino]

    def overlay(self, inode):
        """Patch an Inode's size and times with uncommitted changes (for getattr)."""
        st = self.states.get(inode.id)
        if st is not None and st.modified:
            inode.size = st.size
            inode.mtime_ns = st.mtime_ns
            inode.ctime_ns = st.ctime_ns
            for name, value in st.attrs.items():
                setattr(inode, name, value)
        return inode

    def defer_attrs(self, ino, fields) -> bool:
        """Let the pending commit of ``ino`` write ``fields`` (mode, uid, gid, atime_ns,
        mtime_ns) if new data of the open object awaits one; False if there is none.

        A chain such as write, futimens, fchown, fchmod, close then costs the one
        catalog transaction of the close, and the attributes are exactly as durable
        as the data they arrived with.
        """
        st = self.states.get(ino)
        if st is None or not st.open_count or not st.modified:
            return False
        for name, value in fields.items():
            if name == "mtime_ns":
                st.mtime_ns = value
            elif name == "ctime_ns":
                st.ctime_ns = value
            else:
                st.attrs[name] = value
        return True

    def stored_size(self, inode) -> int:
        """Bytes of ``inode``'s content that take room in the store (what ``st_blocks``
        counts): holes count nothing. An object with uncommitted changes counts its
        whole size until they are committed, as a local file system counts the blocks
        it has reserved for delayed writes."""
        st = self.states.get(inode.id)
        if not inode.size:
            return 0
        if st is not None and st.modified:
            st.blocks_estimated = True
            return inode.size
        return min(inode.size, self.catalog.stored_length(inode.id))

    def estimate_outdated(self, ino) -> bool:
        """True (once) if :meth:`stored_size` estimated ``ino`` while it had uncommitted
        changes and they are committed now: a cached ``st_blocks`` may be wrong."""
        st = self.states.get(ino)
        if st is None or st.modified or not st.blocks_estimated:
            return False
        st.blocks_estimated = False
        return (self.catalog.stored_length(ino) + 511) // 512 != (st.size + 511) // 512

    def size_of(self, ino):
        st = self.states.get(ino)
        return st.size if st is not None else self.catalog.get_inode(ino).size

    # -- encryption --------------------------------------------------------
    def bucket_default(self, bucket_ino) -> Optional[EncryptionSpec]:
        """The bucket's default encryption now (parsed documents are cached by content)."""
        doc = self.catalog.get_bucket_config(bucket_ino, "encryption")
        if doc is None:
            return None
        spec = self._defaults.get(doc)
        if spec is None:
            spec = spec_from_config(parse_encryption(doc))
            if len(self._defaults) > 256:
                self._defaults.clear()
            self._defaults[doc] = spec
        return spec

    def resolve_for(self, inode, writer=WriterKind.NORMAL, **extra) -> Optional[EncryptionSpec]:
        override = parse_override(inode.enc_request.encode()) if inode.enc_request else None
        return self.decide(inode.bucket, override=override, writer=writer, **extra)

    def decide(self, bucket_ino, *, override=None, writer=WriterKind.NORMAL,
               **extra) -> Optional[EncryptionSpec]:
        """The resolver's answer for new content of the bucket now (its default read here),
        counted in ``cosfs_resolver_decisions_total{source, algorithm}``: every decision
        goes through here once (a session's, a service writer's, a multipart upload's at
        Initiate), never through :meth:`begin_with`, which only applies one."""
        spec, source = decide(override=override, bucket_default=self.bucket_default(bucket_ino),
                              writer=writer, **extra)
        metrics.resolved(stored_label(spec), source)
        return spec

    def stored_crypt(self, inode) -> Optional[Crypt]:
        """The Crypt of an object's committed chunks (None when plain)."""
        if not inode.enc:
            return None
        wrapped = inode.wrapped_key
        key = self._keycache.get(wrapped)
        if key is None:
            key = self.keys.unwrap(wrapped, data_key_aad(inode.object_id, inode.enc))
            if len(self._keycache) > 4096:
                self._keycache.clear()
            self._keycache[wrapped] = key
        return Crypt(inode.enc, key, inode.object_id, wrapped)

    def _new_crypt(self, label, object_id):
        """A fresh data key for a new encryption generation of an object, wrapped at once."""
        key = cipher.new_data_key(CIPHER_OF[label])
        return Crypt(label, key, object_id, self.keys.wrap(key, data_key_aad(object_id, label)))

    def _begin(self, st, force_spec=False, spec=None):
        """Open a write session: decide the encryption of the new content (once)."""
        if st.session is not None and not force_spec:
            return st.session
        inode = self.catalog.get_inode(st.ino)
        if not force_spec:
            spec = self.resolve_for(inode)
        label = stored_label(spec)
        has_data = inode.size > 0
        if label == inode.enc and inode.enc and has_data:
            crypt, rewrite = self.stored_crypt(inode), False
        elif label is None:
            crypt, rewrite = None, inode.enc is not None and has_data
        else:
            crypt = self._new_crypt(label, inode.object_id)
            rewrite = has_data
        st.session = (crypt, rewrite)
        return st.session

    def begin_with(self, ino, spec, crypt=None):
        """Open the write session of a new, empty object with encryption ``spec`` (None:
        plain) instead of asking the resolver: the encryption a multipart upload chose
        when it was initiated. With ``crypt`` (see :meth:`new_crypt`), the object is
        sealed under that data key and identity instead of a fresh one: the parts of an
        upload share the identity of the object they become, so that their chunks can
        be linked into it as they are. Call before the first write; the session lasts
        until the next commit."""
        st = self.state(ino)
        if crypt is None:
            self._begin(st, force_spec=True, spec=spec)
        else:
            if crypt.label != stored_label(spec):
                raise ValueError("the data key is for %s, the upload for %s"
                                 % (crypt.label, stored_label(spec)))
            st.session = (crypt, False)

    def new_crypt(self, label, object_id) -> Optional[Crypt]:
        """A fresh data key (wrapped) for encryption label ``label`` and ``object_id``,
        or None when ``label`` is None (plain)."""
        return None if label is None else self._new_crypt(label, object_id)

    # -- reading ----------------------------------------------------------
    def cached_segment(self, ino, offset):
        """``(start, plaintext)`` of the stored segment that holds byte ``offset`` of a
        quiet object, when the segment cache has it; else None. No I/O, no await.

        Quiet: no handle that may write is open and no change awaits its commit, so the
        bytes are the object's content, and stay so until a handle that may write is
        opened or the object is truncated. ``plaintext`` starts at ``start``, a multiple
        of the segment size, and ends at the first of the segment's end, the chunk's
        stored length (a hole may follow) and the object's size."""
        st = self.states.get(ino)
        if st is not None:
            if st.writers or st.modified or st.dirty or st.pending or st.flushing \
                    or st.cut_from is not None:
                return None
            size = st.size
        else:
            size = self.catalog.get_inode(ino).size
        if not 0 <= offset < size:
            return None
        idx, o = divmod(offset, self.chunk_size)
        ch = self.catalog.chunk(ino, idx)
        if ch is None:
            return None
        data = self.reader.cache.get((ch.blob, o // SEG))
        if data is None:
            return None
        start = idx * self.chunk_size + o // SEG * SEG
        return start, data[:min(size, idx * self.chunk_size + ch.length) - start]

    async def read(self, ino, offset, size) -> bytes:
        """Plaintext of ``[offset, offset+size)`` clipped to the object's size."""
        metrics.read()
        st = self.states.get(ino)
        inode = self.catalog.get_inode(ino)
        fsize = st.size if st is not None else inode.size
        end = min(offset + size, fsize)
        if offset >= end:
            return b""
        cs = self.chunk_size
        committed = None
        parts = []
        # A sequential reader gets the rest of each chunk in one worker call and the
        # next chunk prefetched; a random reader only the segments it asks for.
        ahead = (st is not None and offset == st.read_pos
                 and self.reader.cache.capacity >= 4 * self.chunk_size)
        if st is not None:
            st.read_pos = end
        for idx in range(offset // cs, (end - 1) // cs + 1):
            c0 = idx * cs
            lo, hi = max(offset, c0) - c0, min(end, c0 + cs) - c0
            if st is not None and idx in st.dirty:
                buf = st.dirty[idx]
                if isinstance(buf, PartialChunk):
                    piece = await self._read_partial(st, idx, buf, lo, hi)
                else:
                    piece = bytes(buf[lo:hi])
            elif st is not None and idx in st.pending:
                ch = st.pending[idx]
                piece = b"" if ch is None else await self.reader.read(  # None: a hole
                    self.store_of(st.region), st.session[0], ino, idx, ch, lo, hi, ahead)
            else:
                if st is not None and st.cut_from is not None and idx >= st.cut_from:
                    ch = None
                else:
                    if committed is None:
                        committed = (self.store_of(self.region_of(inode)),
                                     self.stored_crypt(inode))
                    ch = self.catalog.chunk(ino, idx)
                piece = b"" if ch is None else await self.reader.read(
                    committed[0], committed[1], ino, idx, ch, lo, hi, ahead)
                if ahead and ch is not None:
                    depth = min(getattr(committed[0], "read_ahead", READ_AHEAD_CHUNKS),
                                self.reader.cache.capacity // (4 * cs))
                    for nxt in range(idx + 1, idx + 1 + max(READ_AHEAD_CHUNKS, depth)):
                        self._prefetch(st, committed, ino, nxt)
            if len(piece) < hi - lo:
                piece += bytes(hi - lo - len(piece))
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_partial(self, st, idx, part, lo, hi):
        """Bytes ``[lo, hi)`` of chunk idx, whose buffer is the partial chunk ``part``:
        the segments it holds from memory, the others from its source. A reader does
        not add segments to the buffer (the write buffers' budget is the writers')."""
        hi = min(hi, part.length)
        if lo >= hi:
            return b""
        got = part.read(lo, hi)
        if got is not None:
            return got
        if part.source is None:
            return part.overlay(lo, bytes(hi - lo))
        store, crypt, ch = part.source
        src = await self.reader.read(store, crypt, st.ino, idx, ch, lo, hi)
        return part.overlay(lo, src)

    def _prefetch(self, st, committed, ino, idx):
        """Start reading committed chunk ``idx`` into the cache in the background."""
        if self._nursery is None or idx in st.dirty or idx in st.pending:
            return
        ch = self.catalog.chunk(ino, idx)
        if ch is not None:
            self.reader.prefetch(self._nursery, committed[0], committed[1], ino, idx, ch)

    # -- writing ----------------------------------------------------------
    def _existing_length(self, st, idx):
        """How many bytes of chunk idx exist in pending or committed form (within size)."""
        return self._clipped(st, idx, self._current_chunk(st, idx))

    def _clipped(self, st, idx, ch):
        """How many bytes of stored chunk ``ch`` (at idx) lie within the object's size."""
        return 0 if ch is None else max(0, min(ch.length, st.size - idx * self.chunk_size))

    def _current_chunk(self, st, idx):
        """The stored chunk idx reads from (sealed but not committed, or committed), or
        None for a hole."""
        if idx in st.pending:
            return st.pending[idx]
        if st.cut_from is not None and idx >= st.cut_from:
            return None
        return self.catalog.chunk(st.ino, idx)

    @staticmethod
    def _mutable(st, idx, buf):
        """Dirty buffers of whole chunks are immutable bytes; copy one before changing it."""
        if not isinstance(buf, bytearray):
            buf = st.dirty[idx] = bytearray(buf)
        return buf

    def _source(self, st, idx, ch):
        """(store, crypt, ch): where the current content of chunk idx, stored as
        ``ch``, is read from (its own encryption: a re-encrypting session has not
        changed the committed chunks yet)."""
        if idx in st.pending:
            return self.store_of(st.region), st.session[0], ch
        inode = self.catalog.get_inode(st.ino)
        return self.store_of(self.region_of(inode)), self.stored_crypt(inode), ch

    async def _load(self, st, idx):
        """Mutable chunk buffer for idx holding its current content."""
        while True:
            buf = st.dirty.get(idx)
            if isinstance(buf, PartialChunk):
                await self._complete(st, idx)
                continue
            if buf is not None:
                return self._mutable(st, idx, buf)
            ch = self._current_chunk(st, idx)
            existing = self._clipped(st, idx, ch)
            if not existing:
                buf = bytearray()
                break
            gen = st.gens.get(idx)
            store, crypt, _ = self._source(st, idx, ch)
            loaded = await self.reader.load(store, crypt, st.ino, idx, ch, existing)
            # The load awaited: another task may have written the chunk meanwhile (into a
            # buffer, taken at the top, or sealed already) or cut it; then what was loaded
            # is stale and the chunk is loaded again.
            now = self._current_chunk(st, idx)
            if (idx not in st.dirty and st.gens.get(idx) == gen and now is not None
                    and now.blob == ch.blob and self._clipped(st, idx, now) == existing):
                buf = loaded
                break
        st.dirty[idx] = buf
        st.gens[idx] = st.gens.get(idx, 0) + 1
        st.dirty_bytes += len(buf)
        return buf

    async def _writable(self, st, idx, o, n):
        """The buffer of chunk idx made ready for a write of ``n`` bytes at ``o``
        (within the chunk): a whole mutable buffer, or a partial chunk holding every
        segment the write touches.

        While the buffers have room for the whole chunk, it is loaded whole (a
        random writer whose file fits in ``write_buffer`` will touch every segment
        anyway, and one read costs less than sixteen). Once they do not, a write
        inside a stored chunk of ``PARTIAL_MIN`` bytes or more loads only the
        segments it touches (:mod:`cosfs.chunkbuf`): a random writer's 4 KiB write
        reads and opens 64 KiB, and only those count against ``write_buffer``, so
        many more chunks stay buffered and fewer are sealed early. A write into a
        hole whose chunk spans ``PARTIAL_MIN`` bytes or more (within the object's
        size, or up to the write's end) then holds only the segments it touches
        too, the others being zeros.
        """
        while True:
            buf = st.dirty.get(idx)
            if buf is None and self._roomy():
                return await self._load(st, idx)
            if buf is None:
                ch = self._current_chunk(st, idx)
                existing = self._clipped(st, idx, ch)
                if existing:
                    length, source = existing, self._source(st, idx, ch)
                    whole = existing < PARTIAL_MIN or o + n > existing  # (packed: small)
                else:  # a hole, or a chunk the object's size cut: zeros, nothing to load
                    length = max(min(self.chunk_size, st.size - idx * self.chunk_size), o + n)
                    source = None
                    whole = length < PARTIAL_MIN
                if whole:
                    return await self._load(st, idx)
                buf = st.dirty[idx] = PartialChunk(length, source)
                st.gens[idx] = st.gens.get(idx, 0) + 1
            if not isinstance(buf, PartialChunk):
                return self._mutable(st, idx, buf)
            if o + n > buf.length:
                await self._complete(st, idx)
                continue
            gap = buf.missing(o, o + n)
            if gap is None:
                return buf
            try:
                plain = await self._load_source(st, idx, buf, *gap)
            except BaseException:
                # the write fails; a partial chunk it leaves holding nothing would only
                # make the commit load (and maybe fail on) the same chunk again
                if st.dirty.get(idx) is buf and not buf.segs:
                    del st.dirty[idx]
                    st.gens[idx] = st.gens.get(idx, 0) + 1
                raise
            if st.dirty.get(idx) is buf:
                st.dirty_bytes += buf.take(gap[0], gap[1], plain)

    def _roomy(self):
        """Whether the write buffers have room for one more whole chunk."""
        return self.budget.total + self.chunk_size <= self.write_buffer

    async def _load_source(self, st, idx, part, first, last):
        """Plaintext of segments [first, last] of a partial chunk's source, or None
        for a hole (zeros)."""
        if part.source is None:
            return None
        store, crypt, ch = part.source
        return await self.reader.load(store, crypt, st.ino, idx, ch,
                                      min((last + 1) * SEG, part.length), first)

    async def _complete(self, st, idx):
        """Make the buffer of chunk idx whole if it is a partial chunk: the segments it
        does not hold are loaded from its source and laid under those it holds. On
        return the buffer is not partial (it may be gone: sealed or cut meanwhile).

        If the source fails authentication (a damaged or tampered segment the writes
        did not touch), the chunk can never be made whole: its buffer is dropped, so
        that the object's other changes can still be committed, and the
        IntegrityError goes to the caller (the commit, ``close`` or ``fsync``, fails
        with EIO: the writes into that chunk are lost, and said so)."""
        while True:
            buf = st.dirty.get(idx)
            if not isinstance(buf, PartialChunk):
                return
            gap = buf.absent()
            plain = None
            if gap is not None and buf.source is not None:
                try:
                    plain = await self._load_source(st, idx, buf, *gap)
                except IntegrityError:
                    if st.dirty.get(idx) is buf:
                        del st.dirty[idx]
                        st.dirty_bytes -= buf.held
                        st.gens[idx] = st.gens.get(idx, 0) + 1
                        log.error("inode %d: the writes into chunk %d are dropped: its "
                                  "stored chunk is damaged", st.ino, idx)
                    raise
                if st.dirty.get(idx) is not buf:
                    continue
            # segments written while the rest loaded are held and lie over it
            whole = buf.fill(gap[0] if gap is not None else 0, plain)
            st.dirty[idx] = whole  # keeps its place in the order of writes
            st.dirty_bytes += len(whole) - buf.held
            return

    async def write(self, ino, offset, data) -> int:
        """Write ``data`` at ``offset``; returns len(data). Raises StoreError on store failure."""
        st = self.state(ino)
        if st.error is not None:
            err, st.error = st.error, None
            raise err
        self._begin(st)
        # A sequential writer must not run ahead of sealing by more than a few chunks:
        # completed chunks waiting for a worker would otherwise fill write_buffer, which
        # is meant for random writers (measured: 300 MiB RSS writing 1 GiB with dd).
        while len(st.flushing) > MAX_BACKGROUND_SEALS:
            await next(iter(st.flushing.values())).wait()
        if self.budget.total > self.write_buffer:
            self._start_relief(st)
            limit = self.write_limit if self._nursery is not None else self.write_buffer
            if self.budget.total > limit:
                # make room before this write takes effect: if sealing fails (ENOSPC),
                # the write fails having changed nothing, as write(2) must
                await self._relieve(st, limit)
        cs = self.chunk_size
        view = memoryview(data)
        pos = offset
        end = offset + len(view)
        now = now_ns()
        # Only a writer that continues where its last write ended gets its completed chunks
        # sealed at once: a random writer ends a chunk now and then and goes on writing
        # into it (sealing it then is wasted, and its next write would load it again).
        sequential = offset == st.write_pos
        st.write_pos = end
        while pos < end:
            idx, o = divmod(pos, cs)
            n = min(cs - o, end - pos)
            piece = view[pos - offset:pos - offset + n]
            if n == cs:
                # A whole chunk: keep it as immutable bytes, no copy into a buffer (the
                # FUSE layer hands us a fresh bytes object that nobody else holds).
                old = st.dirty.pop(idx, None)  # re-inserted last: the most recently written
                whole = data if len(view) == n and isinstance(data, bytes) else bytes(piece)
                st.dirty[idx] = whole
                st.dirty_bytes += n - (0 if old is None else held(old))
            else:
                buf = st.dirty.get(idx)
                if buf is None:
                    existing = self._existing_length(st, idx)
                    if o == 0 and n >= existing:
                        buf = st.dirty[idx] = bytearray()
                    else:
                        buf = await self._writable(st, idx, o, n)
                else:
                    # last written last: _relieve seals the least recently written first
                    del st.dirty[idx]
                    st.dirty[idx] = buf
                    if isinstance(buf, PartialChunk) and not buf.holds(o, o + n):
                        buf = await self._writable(st, idx, o, n)
                if isinstance(buf, PartialChunk):
                    buf.write(o, piece)  # inside its length: no bytes added
                else:
                    buf = self._mutable(st, idx, buf)
                    before = len(buf)
                    if before < o:
                        buf.extend(bytes(o - before))
                    buf[o:o + n] = piece
                    st.dirty_bytes += len(buf) - before
            st.gens[idx] = st.gens.get(idx, 0) + 1
            pos += n
            if pos > st.size:
                st.size = pos
            if o + n == cs and sequential and self._nursery is not None \
                    and idx not in st.flushing:
                # a sequential writer completed this chunk: seal it in the background
                self._nursery.start_soon(self._flush_bg, st, idx)
        st.modified = True
        st.mtime_ns = st.ctime_ns = now
        if self.budget.total > self.write_buffer:
            self._start_relief(st)  # a load this write made may have passed the limit
        return len(view)

    def _start_relief(self, st):
        """Start background sealing (:meth:`_relieve_bg`) unless it runs already."""
        if self._nursery is not None and self._relieving < BACKGROUND_RELIEVERS:
            self._nursery.start_soon(self._relieve_bg, st)
            self._relieving += 1

    async def _relieve(self, st, limit):
        """Seal dirty chunks until all buffers together are under ``limit`` (back-pressure).

        The writer's own least recently written chunks go first (the fullest of
        them, :meth:`_pick`), then other objects'. A random writer thus keeps up
        to ``write_buffer`` of its file (its hot chunks first) in memory, and each
        chunk is loaded and sealed once instead of once per small write.
        """
        while self.budget.total > limit:
            victim = st if st.dirty else next(
                (s for s in self.states.values() if s.dirty), None)
            if victim is None:
                return
            if victim.flushing:
                await next(iter(victim.flushing.values())).wait()
                continue
            idx = self._pick(victim)
            try:
                await self._flush_chunk(victim, idx, writeback=False)
            except CosfsError as exc:
                if victim is st:
                    raise
                victim.error = exc  # reported by that object's next write or commit
                return
            if st.error is not None:
                err, st.error = st.error, None
                raise err

    @staticmethod
    def _pick(st):
        """The chunk of ``st`` to seal to make room, or None: of its ``VICTIM_WINDOW``
        least recently written chunks not being sealed, the one holding the most bytes
        (the least recently written of those)."""
        best, most = None, -1
        for idx in itertools.islice((i for i in st.dirty if i not in st.flushing),
                                    VICTIM_WINDOW):
            size = held(st.dirty[idx])
            if size > most:
                best, most = idx, size
        return best

    def _victim(self, st):
        """(state, chunk index) to seal next to make room (:meth:`_pick`), from ``st``
        first, else from another object; or None."""
        for victim in itertools.chain((st,), self.states.values()):
            idx = self._pick(victim)
            if idx is not None:
                return victim, idx
        return None

    async def _relieve_bg(self, st):
        """Seal least recently written chunks in the background, one at a time, until
        the buffers are down to ``write_buffer``; a failure is kept in the victim's
        ``error`` for its next write or commit, as a background seal's is."""
        try:
            while self.budget.total > self.write_buffer:
                found = self._victim(st)
                if found is None:
                    return
                victim, idx = found
                await self._flush_bg(victim, idx, writeback=False)
                if victim.error is not None:
                    return
        finally:
            self._relieving -= 1

    async def _flush_bg(self, st, idx, writeback=True):
        try:
            await self._flush_chunk(st, idx, writeback)
        except BaseException as exc:  # surfaced by the next write/commit of this object
            if isinstance(exc, trio.Cancelled):
                raise
            st.error = exc

    async def _flush_chunk(self, st, idx, writeback=True):
        """Seal and store the dirty buffer of chunk idx, making it pending.

        ``writeback`` False: the chunk is sealed only to make room in the write
        buffers, and a random writer will likely load, change and seal it again before
        any commit: its blob is not pushed to the disk at once (``LocalStore.put``).
        """
        while True:
            while idx in st.flushing:
                await st.flushing[idx].wait()
            buf = st.dirty.get(idx)
            if buf is None:
                return
            if not isinstance(buf, PartialChunk):
                break
            await self._complete(st, idx)  # then look again: the await let others in
        gen = st.gens[idx]
        data = buf if isinstance(buf, bytes) else bytes(buf)
        crypt = self._begin(st)[0]
        blob = os.urandom(16)
        metrics.sealed(None if crypt is None else crypt.label, len(data))
        ev = trio.Event()
        st.flushing[idx] = ev
        store = self.store_of(st.region)
        packed = None
        try:
            if len(data) < min(PACK_LIMIT, self.chunk_size):
                # packed data fills the catalog's disk like a blob: the same reserve applies
                store.check_room(len(data) + cipher.HEADER_SIZE + cipher.TAG_SIZE)
                packed = seal(crypt, idx, blob, data)
            elif len(data) <= INLINE_WRITE_LIMIT and not getattr(store, "remote", False):
                seal_put(store, crypt, idx, blob, data, writeback)
            else:
                await trio.to_thread.run_sync(seal_put, store, crypt, idx, blob, data,
                                              writeback,
                                              limiter=self.reader.limiter_for(store))
        except CosfsError as exc:
            log.error("cannot store chunk %d of inode %d: %s", idx, st.ino, exc)
            raise
        finally:
            del st.flushing[idx]
            ev.set()
        if (st.gens.get(idx) == gen and idx in st.dirty and st.session is not None
                and st.session[0] is crypt):
            old = st.dirty.pop(idx)
            st.dirty_bytes -= held(old)
            prev = st.pending.get(idx)
            st.pending[idx] = Chunk(idx, blob, len(data), packed)
            if prev is not None:
                self._discard(prev, st.region)
        elif packed is None:
            self._discard(Chunk(idx, blob, len(data)), st.region)

    def _discard(self, chunk, region):
        """A chunk that was sealed but will never be committed: delete its blob (no
        catalog ever named it, so that needs no durable point first)."""
        if not chunk.packed:  # else its bytes only ever lived in memory
            self.collector.discard(chunk.blob, region)

    async def truncate(self, ino, size):
        """Set the object's size (zeros when growing) and commit."""
        st = self.state(ino)
        if not st.writers:
            st.version_made = False  # a truncate of its own: a version of its own
        try:
            self._begin(st)
            cs = self.chunk_size
            keep = (size + cs - 1) // cs  # chunks [0, keep) may hold data
            if size < st.size:
                last = keep - 1
                cut = size - last * cs
                if size % cs and last >= 0 and (last in st.dirty or
                                                self._existing_length(st, last) > cut):
                    buf = await self._load(st, last)
                    if len(buf) > cut:
                        st.dirty_bytes -= len(buf) - cut
                        del buf[cut:]
                        st.gens[last] += 1
                for idx in [i for i in st.dirty if i >= keep]:
                    st.dirty_bytes -= held(st.dirty.pop(idx))
                    st.gens[idx] = st.gens.get(idx, 0) + 1
                for idx in [i for i in st.pending if i >= keep]:
                    prev = st.pending.pop(idx)
                    if prev is not None:
                        self._discard(prev, st.region)
                st.cut_from = keep if st.cut_from is None else min(st.cut_from, keep)
            st.size = size
            await self._commit_now(st)
        finally:
            self._maybe_drop(st)

    async def _commit_now(self, st):
        """A change made by other means than ``write`` (truncate, fallocate): the times
        move, and it is committed at once."""
        st.modified = True
        st.mtime_ns = st.ctime_ns = now_ns()
        await self.commit(st.ino)

    async def fallocate(self, ino, offset, length, *, zero, keep_size):
        """The data path's part of fallocate(2) on ``[offset, offset+length)``, then a
        commit (as a truncate's): ``close`` finds nothing left to do, and ``st_blocks``
        shows the holes at once.

        ``zero``: the range (within the object's size) reads as zeros afterwards. A chunk
        whose stored bytes it covers wholly becomes a hole, stored as nothing; one it
        covers from some byte to the end of its stored bytes is cut there; in one it
        covers in the middle the bytes are zeroed (and stored, sealed, as any write).
        So memory stays flat: at most the two chunks at the range's ends are loaded.
        ``keep_size`` False: the size grows to ``offset+length`` if it is smaller (the
        new bytes are a hole). No room is reserved: chunks are stored when data is
        written, as always; but without ``zero`` a local store's disk must have room for
        the range's bytes past the end of the object, or FsError(ENOSPC) (a preallocation
        that could never be filled fails early, as on a local disk; an S3 store reports no
        limit). The times move, as on ext4, in every mode. If the commit fails (the
        store), the changes stay buffered for the next one, as a write's do: the size,
        the times and the holes are then those of the request.
        """
        st = self.state(ino)
        if st.error is not None:
            err, st.error = st.error, None
            raise err
        try:
            end = offset + length
            store = self.store_of(st.region)
            if not zero and end > st.size and not getattr(store, "remote", False):
                try:
                    store.check_room(end - max(offset, st.size), "%d bytes allocated" % length)
                except StoreError as exc:  # the request's size, not the disk, is at fault
                    raise FsError(exc.errno, str(exc)) from None
            self._begin(st)
            if zero and offset < st.size:
                await self._zero(st, offset, min(end, st.size))
            if not keep_size and end > st.size:
                st.size = end
            await self._commit_now(st)
        finally:
            self._maybe_drop(st)

    async def _zero(self, st, start, end):
        """Make ``[start, end)`` of the object (``end`` <= its size) read as zeros.

        All or nothing: the chunks at the range's ends that it covers in part are loaded
        first (each load awaits, and may fail: then nothing has changed), until both are
        in memory at once; then every change is made with no await in between."""
        cs = self.chunk_size
        first, last = start // cs, (end - 1) // cs
        ends = sorted({first, last})

        def span(idx):
            """(lo, hi, length): the part of chunk idx the range covers, and how many
            bytes the chunk holds."""
            buf = st.dirty.get(idx)
            length = self._existing_length(st, idx) if buf is None else \
                (buf.length if isinstance(buf, PartialChunk) else len(buf))
            return max(start - idx * cs, 0), min(end - idx * cs, cs), length

        while True:
            loads = []
            for idx in ends:
                lo, hi, length = span(idx)
                whole = isinstance(st.dirty.get(idx), (bytes, bytearray))
                if lo < length and not (lo == 0 and hi >= length) and not whole:
                    loads.append(idx)
            if not loads:
                break
            for idx in loads:
                await self._load(st, idx)
        for idx in ends:
            lo, hi, length = span(idx)
            if lo == 0 and hi >= length:
                self._hole(st, idx)
            elif lo < length:
                buf = self._mutable(st, idx, st.dirty[idx])
                if hi >= len(buf):
                    st.dirty_bytes -= len(buf) - lo
                    del buf[lo:]
                else:
                    buf[lo:hi] = bytes(hi - lo)
                st.gens[idx] += 1
        # the chunks between, which it covers wholly
        if last - first > 1:
            inner = set(self.catalog.chunk_indexes(st.ino, first + 1, last - 1))
            inner.update(i for i in itertools.chain(st.dirty, st.pending)
                         if first < i < last)
            for idx in inner:
                self._hole(st, idx)
        if self.budget.total > self.write_buffer:
            self._start_relief(st)

    def _hole(self, st, idx):
        """Make chunk ``idx`` a hole: its buffer and its sealed but uncommitted chunk are
        dropped; a committed chunk is dropped by the next commit (``pending`` maps it to
        None). A seal of its buffer under way is discarded when it ends (its generation
        moved)."""
        buf = st.dirty.pop(idx, None)
        if buf is not None:
            st.dirty_bytes -= held(buf)
        st.gens[idx] = st.gens.get(idx, 0) + 1
        prev = st.pending.pop(idx, None)
        if prev is not None:
            self._discard(prev, st.region)
        if not (st.cut_from is not None and idx >= st.cut_from) and \
                self.catalog.chunk(st.ino, idx) is not None:
            st.pending[idx] = None

    # -- commit -----------------------------------------------------------
    async def commit(self, ino, durable=False, then=None):
        """Make the object's changes visible in the catalog (and durable if asked).

        Raises StoreError/CosfsError if data could not be stored; the previous
        committed version stays intact and the changes stay buffered for a retry.
        ``then``: a callable (no awaits) run inside the commit's transaction, after
        the object's rows are written; if it raises, nothing of the commit is written
        and the changes stay buffered (the key-level core names a new object this way:
        one transaction for its content and its name).
        """
        st = self.states.get(ino)
        if st is None:
            if then is not None:
                with self.catalog.transaction():
                    then()
            if durable:
                await self.sync_catalog()
            return
        if (then is None and not durable and st.error is None and not st.commit_lock.locked()
                and not (st.modified or st.pending or st.dirty or st.flushing)):
            # nothing to commit and no commit under way (it would hold the lock, and the
            # changes it takes stay in pending until it has recorded them): a reader's
            # close returns without a trip through trio's scheduler, which taking the lock
            # costs
            return
        try:
            st.commit_lock.acquire_nowait()  # the usual case: no pass through the scheduler
        except trio.WouldBlock:
            await st.commit_lock.acquire()
        with _releasing(st.commit_lock):
            if st.error is not None:
                err, st.error = st.error, None
                log.warning("retrying storage of inode %d after: %s", ino, err)
            if not st.modified and not st.pending and not st.dirty:
                if then is not None:
                    with self.catalog.transaction():
                        then()
                if durable:
                    await self.sync_catalog()
                return
            crypt, rewrite = self._begin(st)
            await self._flush_all(st)
            if rewrite:
                await self._rewrite_rest(st, crypt)
            if durable:
                await self.collector.sync_stores_settled(st)
            self._record(st, crypt, durable, then=then)
        self.collector.poke()
        snaps = self.collector.snapshots
        if durable and snaps is not None:
            await snaps.after_fsync()  # the loss of the machine too (cosfs.snapshots)

    async def _flush_all(self, st):
        while st.dirty or st.flushing:
            if st.flushing:
                await next(iter(st.flushing.values())).wait()
                continue
            if len(st.dirty) == 1:
                # one chunk (a small file's only one): sealed by this task, without a
                # nursery, whose tasks would start only at the scheduler's next pass
                await self._flush_chunk(st, next(iter(st.dirty)))
                continue
            try:
                async with trio.open_nursery() as n:
                    for idx in list(st.dirty)[:8]:
                        n.start_soon(self._flush_chunk, st, idx)
            except BaseException as exc:
                # trio wraps even one failure in an exception group; callers (and the
                # FUSE adapter) need the StoreError itself to answer with its errno
                raise store_failure(exc)

    async def _rewrite_rest(self, st, crypt):
        """Re-seal every committed chunk not replaced in this session (re-encryption)."""
        inode = self.catalog.get_inode(st.ino)
        old = self.stored_crypt(inode)
        store = self.store_of(st.region)
        for ch in self.catalog.chunks(st.ino):
            if ch.idx in st.pending or (st.cut_from is not None and ch.idx >= st.cut_from):
                continue
            length = max(0, min(ch.length, st.size - ch.idx * self.chunk_size))
            blob = os.urandom(16)
            pack = length < min(PACK_LIMIT, self.chunk_size)
            with self.reader.holding(ch.blob):
                if pack and ch.packed:
                    packed = reseal(store, old, crypt, ch, length, blob, pack=True)
                else:
                    packed = await trio.to_thread.run_sync(reseal, store, old, crypt, ch,
                                                           length, blob, pack,
                                                           limiter=self.limiter)
            resealed = Chunk(ch.idx, blob, length, packed)
            # a partial buffer of this chunk reads its other segments from the committed
            # chunk, which the re-sealed one replaces (and releases) at the commit: it is
            # made whole first
            try:
                await self._complete(st, ch.idx)
            except BaseException:
                self._discard(resealed, st.region)
                raise
            if ch.idx in st.pending or (st.cut_from is not None and ch.idx >= st.cut_from):
                # a write sealed newer content of this chunk, or a truncate cut it, while
                # it was re-sealed: the old content must not take its place
                self._discard(resealed, st.region)
                continue
            st.pending[ch.idx] = resealed

    def _record(self, st, crypt, durable, then=None, **extra):
        """The one catalog transaction that publishes a new version (no awaits).

        ``extra`` inode fields are written in the same transaction; ``then`` is
        called last inside it (see :meth:`commit`).
        """
        cat = self.catalog
        fields = dict(st.attrs)
        fields.update(size=st.size, mtime_ns=st.mtime_ns, ctime_ns=st.ctime_ns, etag=None,
                      **extra)
        if crypt is None:
            fields.update(enc=None, wrapped_key=None)
        else:
            fields.update(enc=crypt.label, wrapped_key=crypt.wrapped)
        vs = self.versions
        with cat.transaction(durable=durable):
            before = cat.get_inode(st.ino)
            keys = vs.keys_of(st.ino) if vs.versioned(before.bucket) else ()
            if not st.version_made:
                for key in keys:  # the content replaced stays as a noncurrent version
                    vs.before_replace(before.bucket, key, before)
            if st.cut_from is not None:
                cat.drop_chunks_from(st.ino, st.cut_from, st.region)
            for idx, ch in st.pending.items():
                if ch is None:  # a hole punched into it
                    cat.drop_chunk(st.ino, idx, st.region)
                else:
                    cat.set_chunk(st.ino, idx, ch.blob, ch.length, st.region, ch.data)
            cat.update_inode(st.ino, **fields)
            for i, key in enumerate(keys):
                vs.stamp(st.ino, before.bucket, key, new=not st.version_made and i == 0)
            if then is not None:
                then()
        # The catalog names the pending blobs now: forget them before anything that may
        # raise, or a later seal of their chunks would delete them as never committed.
        self.collector.commits += 1
        metrics.committed(fields["enc"])
        st.attrs.clear()
        st.pending.clear()
        st.cut_from = None
        # writes that arrived while this commit awaited stay buffered for the next one
        st.modified = bool(st.dirty)
        if not st.dirty:
            st.session = None
        if crypt is not None:
            self._keycache[crypt.wrapped] = crypt.key
        if keys:
            st.version_made = True  # one write session, one version
            vs.flush()

    async def rewrite(self, ino, request=_KEEP):
        """Re-resolve the object's encryption now and re-encrypt it if its state changes.

        Used when the override xattr is set or removed (COS: copy the object
        onto itself with new SSE headers). ``request`` is the new override
        value (None to drop it); it is recorded in the same transaction as the
        re-encrypted chunks, so a crash leaves the old request with the old
        state or the new request with the new state. Streams chunk by chunk.
        """
        st = self.state(ino)
        extra = {} if request is _KEEP else {"enc_request": request}
        try:
            for attempt in itertools.count():
                await self.commit(ino)
                await st.commit_lock.acquire()
                # Changes that came between that commit and the lock (a chunk sealed
                # meanwhile under the session's key, a size a write extended) belong
                # to the session they were made in: commit them first, or they would be
                # recorded under the new key (unreadable) or with a size they do not fill.
                if not (st.modified or st.pending or st.dirty):
                    break
                st.commit_lock.release()
                if attempt >= REWRITE_SETTLE_TRIES:
                    raise FsError(errno.EBUSY, "inode %d is written to without pause; "
                                  "its encryption cannot change now" % ino)
            if not st.writers:
                st.version_made = False  # re-encryption by itself: a new version
            try:
                st.session = None
                inode = self.catalog.get_inode(ino)
                old_request = inode.enc_request
                if extra:
                    inode.enc_request = request
                    crypt, rewrite = self._begin(st, force_spec=True,
                                                 spec=self.resolve_for(inode))
                else:
                    crypt, rewrite = self._begin(st)
                label = None if crypt is None else crypt.label
                if rewrite or label != inode.enc:
                    st.mtime_ns, st.ctime_ns = inode.mtime_ns, now_ns()
                    st.size = inode.size
                    if rewrite:
                        await self._rewrite_rest(st, crypt)
                    self._record(st, crypt, False, **extra)
                elif extra and request != old_request:
                    # (removing an absent request from an object already in the resolved
                    # state changes nothing: rsync -aX does that on every run)
                    with self.catalog.transaction():
                        self.catalog.update_inode(ino, ctime_ns=now_ns(), **extra)
                st.session = None
            finally:
                st.commit_lock.release()
        finally:
            self._maybe_drop(st)
        self.collector.poke()

    async def commit_all(self, durable=False):
        """Commit every object with changes (unmount, SIGTERM, syncfs)."""
        for ino in list(self.states):
            try:
                # made durable together below: one catalog sync (and snapshot) for all
                await self.commit(ino)
            except CosfsError as exc:
                log.error("could not commit inode %d: %s", ino, exc)
        if durable:
            await self.collector.sync_catalog()
            snaps = self.collector.snapshots
            if snaps is not None:
                try:
                    await snaps.covering()
                except CosfsError as exc:
                    log.error("could not store a catalog snapshot: %s", exc)

    async def sync_catalog(self):
        """Everything committed so far survives a machine crash after this returns.

        With regions on S3 stores, also the loss of the machine (when the config asks
        for a snapshot at every fsync): see :meth:`cosfs.snapshots.Snapshotter.after_fsync`."""
        await self.collector.sync_catalog()
        snaps = self.collector.snapshots
        if snaps is not None:
            await snaps.after_fsync()

    async def collect_garbage(self):
        """Delete released blobs now (see :class:`cosfs.collector.Collector`)."""
        await self.collector.collect_garbage()

    async def checkpoint(self, truncate=False):
        await self.collector.checkpoint(truncate)

    # -- content helpers ----------------------------------------------------
    async def etag(self, ino):
        """MD5 hex of the object's committed plaintext (cached in the catalog until the next
        commit). Uncommitted writes of open handles are neither included nor committed: a
        reader of the ETag (the XML API, the status xattr) never publishes another writer's
        half-written content."""
        inode = self.catalog.get_inode(ino)
        if inode.etag:
            return inode.etag
        store = self.store_of(self.region_of(inode))
        crypt = self.stored_crypt(inode)
        md5 = hashlib.md5()
        cs = self.chunk_size
        hashed = []
        for idx in range((inode.size + cs - 1) // cs):
            length = min(cs, inode.size - idx * cs)
            ch = self.catalog.chunk(ino, idx)
            hashed.append(None if ch is None else ch.blob)
            piece = b"" if ch is None else await self.reader.read(store, crypt, ino, idx, ch,
                                                                  0, length)
            if len(piece) < length:
                piece += bytes(length - len(piece))  # a hole, or the zeros after a chunk
            md5.update(piece)
        etag = md5.hexdigest()
        # cached only if no commit replaced what was hashed meanwhile (new content always
        # comes with new blob ids; a commit of attributes alone leaves the ETag true)
        now = self.catalog.get_inode(ino)
        if now.size == inode.size and [ch.blob if ch else None for ch in (
                self.catalog.chunk(ino, i) for i in range(len(hashed)))] == hashed \
                and now.wrapped_key == inode.wrapped_key:
            with self.catalog.transaction():
                self.catalog.update_inode(ino, etag=etag)
        return etag

    def forget_object(self, inode):
        """Delete an object that has no names left and no users."""
        self.forget_objects([inode])

    def forget_objects(self, inodes):
        """Delete objects that have no names left and no users, in one catalog transaction:
        if the catalog cannot take it (full), nothing is lost and the purge can be tried
        again. Raises FsError (EIO), before changing anything, if the region of one
        cannot be found."""
        work = [(inode, self.region_of(inode), self.states.get(inode.id)) for inode in inodes]
        if not work:
            return
        with self.catalog.transaction():
            for inode, region, st in work:
                self.catalog.delete_inode(inode.id, region)
        for inode, region, st in work:
            if st is not None:
                self.states.pop(inode.id, None)
                for ch in st.pending.values():
                    if ch is not None:
                        self._discard(ch, region)
                # a seal still running finds no buffer and discards its blob itself
                st.dirty.clear()
                st.dirty_bytes = 0
                st.error = None
                st.pending.clear()
        self.collector.poke()
