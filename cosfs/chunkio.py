"""Chunk blobs on the wire between the data path and the store: seal, store, fetch, open.

Everything here is a plain function of its arguments (or a small container),
so it can run on the trio thread or in a worker thread alike: it touches no
shared state except the stores, which are thread-safe. The data path
(:mod:`cosfs.objects`) decides where each call runs.
"""

import errno
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from . import cipher
from .errors import CosfsError, StoreError

log = logging.getLogger(__name__)

SEG = cipher.SEGMENT_SIZE

#: The cipher algorithm that seals data of a stored encryption label.
CIPHER_OF = {"AES256": "AES256", "SM4": "SM4", "cos/kms": "AES256"}


@dataclass(frozen=True)
class Crypt:
    """How a blob is sealed: algorithm label, data key and object identity. Never logged."""

    label: str
    key: bytes = field(repr=False)
    object_id: bytes
    wrapped: bytes = field(repr=False, default=b"")

    @property
    def algorithm(self):
        return CIPHER_OF[self.label]

    def context(self, idx, blob):
        return cipher.BlobContext(object_id=self.object_id, chunk_index=idx, blob_id=blob)


def data_key_aad(object_id, label):
    """Associated data binding a wrapped data key to its object and algorithm label."""
    return b"cosfs-data-key\0" + object_id + b"\0" + label.encode()


def stored_label(spec):
    """The label an object's encryption is recorded (and reported) under, or None."""
    if spec is None:
        return None
    return "cos/kms" if spec.algorithm in ("KMS", "cos/kms") else spec.algorithm


def check_length(ch, data, expected):
    """Raise StoreError (EIO) when the store returned fewer bytes than the chunk map promises."""
    if len(data) != expected:
        raise StoreError("blob %s of chunk %d is damaged: read %d bytes, expected %d"
                         % (ch.blob.hex(), ch.idx, len(data), expected), errno=errno.EIO)


def store_failure(exc):
    """The exception to raise for a failed group of store tasks.

    A group made only of CosfsErrors becomes its first member; anything
    else (a cancellation, a bug) is returned unchanged so nothing is lost.
    """
    leaves, todo = [], [exc]
    while todo:
        e = todo.pop(0)
        inner = getattr(e, "exceptions", None)
        if inner is None:
            leaves.append(e)
        else:
            todo.extend(inner)
    if leaves and all(isinstance(e, CosfsError) for e in leaves):
        return leaves[0]
    return exc


def seal(crypt, idx, blob, data):
    """``data`` sealed as chunk ``idx`` of blob ``blob`` (unchanged without ``crypt``)."""
    if crypt is None:
        return bytes(data)
    return cipher.seal_blob(crypt.algorithm, crypt.key, crypt.context(idx, blob), data)


def seal_put(store, crypt, idx, blob, data, writeback=True):
    """Seal ``data`` as chunk ``idx`` (when ``crypt`` is set) and store it as ``blob``
    (``writeback``: see ``LocalStore.put``)."""
    store.put(blob, seal(crypt, idx, blob, data), writeback)


def read_sealed(store, ch, offset=0, length=None, nowait=False):
    """Sealed bytes of a chunk: from its packed row, else from the store's blob.

    Without ``length``, everything from ``offset`` on. Like a ranged read of a blob,
    a range past the end comes back short. ``nowait`` (with ``length``): None if the
    read would wait for the disk (see ``LocalStore.get_range``).
    """
    if ch.data is not None:
        end = len(ch.data) if length is None else offset + length
        return ch.data[offset:end]
    if length is None and offset == 0:
        return store.get(ch.blob)
    if length is None:
        length = store.size(ch.blob) - offset
    if nowait:
        return store.get_range(ch.blob, offset, length, nowait=True)
    return store.get_range(ch.blob, offset, length)


def reseal(store, old, new, ch, length, blob, pack=False):
    """Re-encrypt a chunk: open it with ``old``, keep ``length`` bytes, seal with ``new``.

    The new sealed bytes are stored as blob ``blob``, or returned (and not stored)
    with ``pack``.
    """
    data = read_sealed(store, ch)
    if old is None:
        check_length(ch, data, ch.length)
    else:
        data = cipher.open_blob(old.algorithm, old.key, old.context(ch.idx, ch.blob),
                                data, ch.length)
    sealed = seal(new, ch.idx, blob, memoryview(data)[:length])
    if pack:
        return sealed
    store.put(blob, sealed)
    return None


def fetch(store, crypt, idx, ch, first, last, header, nowait=False, out=None):
    """Read and open segments [first, last] of a chunk; returns (header, plaintext).

    ``header`` is the blob's cached header or None (then it is read). Raises
    StoreError for a short blob and IntegrityError for one that fails
    authentication. ``nowait``: None if a read would wait for the disk. ``out``: a
    bytearray the plaintext of an encrypted chunk is opened into (see
    ``cipher.open_range``).
    """
    lo, hi = first * SEG, min((last + 1) * SEG, ch.length)
    # a range that reaches the chunk's end asks for one byte more: a blob that was
    # extended (appended to or replaced by a longer one) must fail too
    extra = 1 if hi == ch.length else 0
    if crypt is None:
        data = read_sealed(store, ch, lo, hi - lo + extra, nowait)
        if data is None:
            return None
        check_length(ch, data, hi - lo)
        return None, data
    seg0, coff, clen = cipher.segment_range(ch.length, lo, hi - lo)
    if header is None and coff == cipher.HEADER_SIZE:
        # the range starts at the first segment, right after the header: one read
        whole = read_sealed(store, ch, 0, coff + clen + extra, nowait)
        if whole is None:
            return None
        whole = memoryview(whole)
        header, data = bytes(whole[:coff]), whole[coff:]  # no copy of the segments
    else:
        if header is None:
            header = read_sealed(store, ch, 0, cipher.HEADER_SIZE, nowait)
            if header is None:
                return None
        data = read_sealed(store, ch, coff, clen + extra, nowait)
        if data is None:
            return None
    # a short blob must fail, not read as a hole (open_range takes what it gets)
    check_length(ch, data, clen)
    plain = cipher.open_range(crypt.algorithm, crypt.key, crypt.context(idx, ch.blob),
                              header, data, seg0, ch.length, out=out)
    return header, plain


def delete_blobs(store, blobs):
    """Delete blobs; returns those deleted. What failed is logged and retried later.

    One call of the store's ``delete_many``: an S3 store deletes a batch in one
    request (multi-object delete), a local store unlinks blob by blob.
    """
    try:
        return store.delete_many(blobs)
    except CosfsError as exc:
        log.warning("garbage collection: %s (will retry)", exc)
        return []


class SegmentCache:
    """Bounded LRU of byte strings keyed by (blob id, segment index).

    Blobs are immutable, so entries never go stale; a deleted blob's entries
    simply age out.
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self.used = 0
        self.entries = OrderedDict()

    def get(self, key):
        data = self.entries.get(key)
        if data is not None:
            self.entries.move_to_end(key)
        return data

    def put(self, key, data):
        if self.capacity <= 0 or key in self.entries:
            return
        self.entries[key] = data
        self.used += len(data)
        while self.used > self.capacity and self.entries:
            _, old = self.entries.popitem(last=False)
            self.used -= len(old)
