"""The sealed blob format: a streaming AEAD over one chunk, pure functions on bytes.

A chunk of an object is stored as one immutable *blob*. The blob is a fixed
header followed by the chunk's plaintext cut into segments of
``SEGMENT_SIZE`` bytes, each sealed on its own with AES-256-GCM or SM4-GCM, so
a read at any offset decrypts only the segments it touches. The byte layout
and the reasons behind it are in ``docs/format.md`` ("Sealed blob format").

Everything here is pure: bytes and offsets in, bytes out, no I/O, no trio,
no global caches. The functions are CPU bound and meant to run in a worker
thread for large buffers; they are safe to call from several threads at once.

Errors: authentication failures and malformed blobs raise
:class:`cosfs.errors.IntegrityError`; an unknown algorithm name or a data key
of the wrong length is a caller bug and raises ``ValueError``; an algorithm the
installed ``cryptography`` cannot run raises :class:`cosfs.errors.CosfsError`.
No message ever contains key material.
"""

import errno
import logging
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cosfs.errors import CosfsError, IntegrityError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SEGMENT_SIZE = 64 * 1024
TAG_SIZE = 16
DATA_KEY_SIZE = 32
SALT_SIZE = 32
MAGIC = b"CFSB"
ALGORITHMS = ("AES256", "SM4")

# Algorithm name -> (id byte in the header, subkey length in bytes).
_ALGORITHM_IDS = {"AES256": (1, 32), "SM4": (2, 16)}

# magic, format version, algorithm id, reserved (zero), segment size, salt
_HEADER = struct.Struct(">4sBBHI%ds" % SALT_SIZE)
HEADER_SIZE = _HEADER.size  # 44

# Per-segment associated data after the header: object_id, blob_id,
# chunk_index, plain_len, segment index, final-segment flag.
_AAD_CONTEXT = struct.Struct(">16s16sQQ")
_AAD_SEGMENT = struct.Struct(">QB")

_STRIDE = SEGMENT_SIZE + TAG_SIZE  # sealed bytes per full segment
_MAX_U64 = 2**64 - 1

# encrypt_into/decrypt_into (cryptography >= 46) save one copy per segment.
_HAVE_INTO = hasattr(AESGCM, "encrypt_into")


@dataclass(frozen=True)
class BlobContext:
    """Where a blob belongs; every field is bound into each segment's tag.

    ``object_id``: 16 bytes, the stable random identity of the object (inode).
    ``chunk_index``: position of the chunk in the object (0-based).
    ``blob_id``: 16 bytes, the random name of this blob in the store, never reused.
    """

    object_id: bytes
    chunk_index: int
    blob_id: bytes

    def __post_init__(self):
        if not isinstance(self.object_id, bytes) or len(self.object_id) != 16:
            raise ValueError("BlobContext.object_id must be 16 bytes")
        if not isinstance(self.blob_id, bytes) or len(self.blob_id) != 16:
            raise ValueError("BlobContext.blob_id must be 16 bytes")
        if not isinstance(self.chunk_index, int) or not 0 <= self.chunk_index <= _MAX_U64:
            raise ValueError("BlobContext.chunk_index must be an int in [0, 2**64)")

    def __str__(self):
        return "object %s chunk %d blob %s" % (
            self.object_id.hex(), self.chunk_index, self.blob_id.hex())


# ---------------------------------------------------------------------------
# Geometry


def segment_count(plain_len: int) -> int:
    """Number of segments of a blob holding ``plain_len`` bytes (at least 1).

    An empty chunk still has one (empty, final) segment so that its tag
    authenticates the header and the context.
    """
    _check_len(plain_len)
    return max(1, -(-plain_len // SEGMENT_SIZE))


def sealed_size(plain_len: int) -> int:
    """Exact length in bytes of the blob that seals ``plain_len`` plaintext bytes."""
    return HEADER_SIZE + plain_len + segment_count(plain_len) * TAG_SIZE


def segment_range(plain_len: int, offset: int, length: int):
    """Locate the sealed segments covering plaintext ``[offset, offset+length)``.

    The range is clipped to ``plain_len``. Returns ``(first_segment,
    cipher_offset, cipher_length)``: ``cipher_offset`` is absolute in the blob
    (it counts the header). The plaintext of ``first_segment`` starts at
    ``first_segment * SEGMENT_SIZE``, so the caller slices the result of
    :func:`open_range` from ``offset - first_segment * SEGMENT_SIZE``. An empty
    (clipped) range gives ``cipher_length == 0``.
    """
    _check_len(plain_len)
    if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
        raise ValueError("offset and length must be non-negative ints")
    end = min(offset + length, plain_len)
    if offset >= end:
        first = min(offset, plain_len) // SEGMENT_SIZE
        return first, HEADER_SIZE + first * _STRIDE, 0
    first = offset // SEGMENT_SIZE
    last = (end - 1) // SEGMENT_SIZE
    cipher_offset = HEADER_SIZE + first * _STRIDE
    cipher_end = (HEADER_SIZE + last * _STRIDE
                  + _segment_plain_len(plain_len, last) + TAG_SIZE)
    return first, cipher_offset, cipher_end - cipher_offset


def _segment_plain_len(plain_len, index):
    return min(SEGMENT_SIZE, plain_len - index * SEGMENT_SIZE)


def _check_len(plain_len):
    if not isinstance(plain_len, int) or not 0 <= plain_len <= _MAX_U64:
        raise ValueError("plain_len must be an int in [0, 2**64)")


# ---------------------------------------------------------------------------
# Keys


def new_data_key(algorithm) -> bytes:
    """A fresh random 32-byte data key (for either algorithm)."""
    _algorithm_id(algorithm)
    return os.urandom(DATA_KEY_SIZE)


def algorithm_available(algorithm) -> bool:
    """True when the installed ``cryptography`` can run ``algorithm`` in GCM mode."""
    _, key_len = _algorithm_id(algorithm)
    try:
        _segment_aead(algorithm, bytes(key_len)).seal_into(
            bytes(12), b"", b"", memoryview(bytearray(2 * TAG_SIZE))[:TAG_SIZE])
    except CosfsError:
        return False
    return True


def _algorithm_id(algorithm):
    try:
        return _ALGORITHM_IDS[algorithm]
    except (KeyError, TypeError):
        raise ValueError("unknown SSE-COS algorithm %r (expected one of %s)"
                         % (algorithm, ", ".join(ALGORITHMS))) from None


def _subkey(algorithm, data_key, salt):
    # A fresh random salt per blob makes the subkey new for every blob
    # written, so the segment index can serve as the GCM nonce.
    _, key_len = _algorithm_id(algorithm)
    if not isinstance(data_key, (bytes, bytearray)) or len(data_key) != DATA_KEY_SIZE:
        raise ValueError("data key must be %d bytes" % DATA_KEY_SIZE)
    info = b"cosfs sealed blob v%d %s" % (FORMAT_VERSION, algorithm.encode("ascii"))
    return HKDF(algorithm=hashes.SHA256(), length=key_len, salt=bytes(salt),
                info=info).derive(bytes(data_key))


class _AesSegments:
    """AES-256-GCM on one segment, writing straight into the caller's buffer."""

    __slots__ = ("_aead",)
    slack = 0  # extra output room the primitive needs beyond the exact size

    def __init__(self, subkey):
        self._aead = AESGCM(subkey)

    def __repr__(self):
        return "<AES-256-GCM segment cipher>"

    def seal_into(self, nonce, plain, aad, out):
        """Write ciphertext||tag of ``plain`` into ``out`` (len(plain)+TAG_SIZE)."""
        if _HAVE_INTO:
            self._aead.encrypt_into(nonce, plain, aad, out)
        else:
            out[:] = self._aead.encrypt(nonce, bytes(plain), aad)

    def open_into(self, nonce, sealed, aad, out):
        """Write the plaintext of ciphertext||tag ``sealed`` into ``out``; InvalidTag on failure."""
        if _HAVE_INTO:
            self._aead.decrypt_into(nonce, sealed, aad, out)
        else:
            out[:len(sealed) - TAG_SIZE] = self._aead.decrypt(nonce, bytes(sealed), aad)


class _Sm4Segments:
    """SM4-GCM on one segment through the generic Cipher interface."""

    __slots__ = ("_key",)
    slack = TAG_SIZE  # update_into wants up to one block more than it writes

    def __init__(self, subkey):
        self._key = subkey
        self._cipher(bytes(12))  # fail early when SM4-GCM is unavailable

    def __repr__(self):
        return "<SM4-GCM segment cipher>"

    def _cipher(self, nonce, tag=None):
        try:
            return Cipher(algorithms.SM4(self._key), modes.GCM(nonce, tag))
        except UnsupportedAlgorithm:
            raise CosfsError("SM4-GCM is not supported by the installed cryptography/OpenSSL",
                             errno=errno.EOPNOTSUPP, code="UnsupportedAlgorithm") from None

    def seal_into(self, nonce, plain, aad, out):
        enc = self._cipher(nonce).encryptor()
        enc.authenticate_additional_data(aad)
        size = len(plain)
        # The tag slot after the ciphertext is the room update_into asks for.
        enc.update_into(plain, out[:size + TAG_SIZE])
        enc.finalize()
        out[size:size + TAG_SIZE] = enc.tag

    def open_into(self, nonce, sealed, aad, out):
        size = len(sealed) - TAG_SIZE
        dec = self._cipher(nonce, bytes(sealed[size:])).decryptor()
        dec.authenticate_additional_data(aad)
        dec.update_into(sealed[:size], out[:size + TAG_SIZE])
        dec.finalize()


def _segment_aead(algorithm, subkey):
    return _AesSegments(subkey) if algorithm == "AES256" else _Sm4Segments(subkey)


# ---------------------------------------------------------------------------
# Header and associated data


def _pack_header(algorithm, salt):
    alg_id, _ = _algorithm_id(algorithm)
    return _HEADER.pack(MAGIC, FORMAT_VERSION, alg_id, 0, SEGMENT_SIZE, salt)


def _parse_header(algorithm, header, ctx):
    """Check every header field; return the salt. IntegrityError on mismatch."""
    alg_id, _ = _algorithm_id(algorithm)
    if len(header) != HEADER_SIZE:
        raise IntegrityError("sealed blob header of %s is %d bytes, expected %d"
                             % (ctx, len(header), HEADER_SIZE))
    magic, version, found_alg, reserved, seg_size, salt = _HEADER.unpack(header)
    if magic != MAGIC:
        raise IntegrityError("%s is not a cosfs sealed blob (bad magic)" % ctx)
    if version != FORMAT_VERSION:
        raise IntegrityError("%s has sealed blob format version %d; this cosfs reads "
                             "version %d only" % (ctx, version, FORMAT_VERSION))
    if found_alg != alg_id:
        raise IntegrityError("%s header names algorithm id %d, the catalog says %s"
                             % (ctx, found_alg, algorithm))
    if reserved != 0 or seg_size != SEGMENT_SIZE:
        raise IntegrityError("%s header has an invalid segment size or reserved field" % ctx)
    return salt


def _aad_prefix(header, ctx, plain_len):
    return bytes(header) + _AAD_CONTEXT.pack(ctx.object_id, ctx.blob_id,
                                             ctx.chunk_index, plain_len)


def _nonce(index):
    return index.to_bytes(12, "big")


# ---------------------------------------------------------------------------
# Seal and open


def seal_blob(algorithm, data_key: bytes, ctx: BlobContext, plaintext, *,
              _salt=None) -> bytearray:
    """Seal one chunk's plaintext into a blob of exactly ``sealed_size(len)`` bytes.

    ``plaintext`` is any bytes-like object (bytes, bytearray, memoryview),
    empty included. The result is a new ``bytearray`` owned by the caller
    (bytes-like; converting it to ``bytes`` would cost one more full copy).
    ``_salt`` fixes the salt for golden test samples only: sealing twice with
    the same salt and key reuses nonces. CPU bound: run it in a worker thread
    for large chunks. Raises ValueError for an unknown algorithm or a data
    key that is not 32 bytes, CosfsError when the algorithm is unavailable.
    """
    plain = memoryview(plaintext).cast("B")
    plain_len = len(plain)
    _check_len(plain_len)
    salt = os.urandom(SALT_SIZE) if _salt is None else bytes(_salt)
    if len(salt) != SALT_SIZE:
        raise ValueError("salt must be %d bytes" % SALT_SIZE)
    aead = _segment_aead(algorithm, _subkey(algorithm, data_key, salt))
    header = _pack_header(algorithm, salt)
    prefix = _aad_prefix(header, ctx, plain_len)

    # One output buffer, filled in place: with large chunks allocating and
    # copying intermediate pieces costs about as much as the cipher itself.
    count = segment_count(plain_len)
    out = bytearray(HEADER_SIZE + plain_len + count * TAG_SIZE + aead.slack)
    view = memoryview(out)
    view[:HEADER_SIZE] = header
    pos = HEADER_SIZE
    for index in range(count):
        start = index * SEGMENT_SIZE
        size = _segment_plain_len(plain_len, index)
        aead.seal_into(_nonce(index), plain[start:start + size],
                       prefix + _AAD_SEGMENT.pack(index, index == count - 1),
                       view[pos:pos + size + TAG_SIZE + aead.slack])
        pos += size + TAG_SIZE
    view.release()
    if aead.slack:
        del out[pos:]
    return out


def open_blob(algorithm, data_key: bytes, ctx: BlobContext, blob, plain_len: int) -> bytearray:
    """Authenticate and decrypt a whole blob; return its ``plain_len`` bytes.

    ``blob`` is any bytes-like object; the result is a new ``bytearray``.

    Raises IntegrityError when the blob length is not ``sealed_size(plain_len)``,
    a header field is wrong or any segment fails authentication.
    """
    _check_len(plain_len)
    blob = memoryview(blob).cast("B")
    expected = sealed_size(plain_len)
    if len(blob) != expected:
        raise IntegrityError("%s is %d bytes, expected %d for %d plaintext bytes"
                             % (ctx, len(blob), expected, plain_len))
    return open_range(algorithm, data_key, ctx, blob[:HEADER_SIZE],
                      blob[HEADER_SIZE:], 0, plain_len)


def open_range(algorithm, data_key: bytes, ctx: BlobContext, header, segments,
               first_segment: int, plain_len: int, *, out=None) -> bytearray:
    """Decrypt consecutive sealed segments starting at ``first_segment``.

    ``header`` is ``blob[:HEADER_SIZE]``; ``segments`` is the slice of the blob
    given by :func:`segment_range` (whole segments only). Returns the
    plaintext of those segments, starting at plaintext offset
    ``first_segment * SEGMENT_SIZE`` (a new ``bytearray``; empty when
    ``segments`` is empty); the caller slices what it asked for.
    Raises IntegrityError on any header mismatch, a partial or surplus
    segment, or a failed tag. Nothing is returned unless every segment read
    authenticated. ``out``: a bytearray to open into instead of a new one (at least
    the plaintext's size plus TAG_SIZE; it is cut to the plaintext's size and returned,
    and holds garbage if opening fails).
    """
    _check_len(plain_len)
    salt = _parse_header(algorithm, memoryview(header).cast("B"), ctx)
    count = segment_count(plain_len)
    if not isinstance(first_segment, int) or not 0 <= first_segment <= count:
        raise IntegrityError("%s: segment %r is out of range (the chunk has %d)"
                             % (ctx, first_segment, count))
    sealed = memoryview(segments).cast("B")
    total = len(sealed)
    if total == 0:
        if out is None:
            return bytearray()
        del out[:]
        return out

    # Work out the plaintext size first so the output is allocated once.
    plain_total = 0
    end_segment = first_segment
    pos = 0
    while pos < total:
        if end_segment >= count:
            raise IntegrityError("%s: sealed data runs past the final segment" % ctx)
        size = _segment_plain_len(plain_len, end_segment)
        pos += size + TAG_SIZE
        plain_total += size
        end_segment += 1
    if pos != total:
        raise IntegrityError("%s: sealed data ends inside segment %d (truncated)"
                             % (ctx, end_segment - 1))

    aead = _segment_aead(algorithm, _subkey(algorithm, data_key, salt))
    prefix = _aad_prefix(header, ctx, plain_len)
    if out is None:
        out = bytearray(plain_total + aead.slack)
    elif len(out) < plain_total + aead.slack:
        raise ValueError("the output buffer holds %d bytes, opening needs %d"
                         % (len(out), plain_total + aead.slack))
    view = memoryview(out)
    pos = 0
    opos = 0
    for index in range(first_segment, end_segment):
        size = _segment_plain_len(plain_len, index)
        try:
            aead.open_into(_nonce(index), sealed[pos:pos + size + TAG_SIZE],
                           prefix + _AAD_SEGMENT.pack(index, index == count - 1),
                           view[opos:opos + size + aead.slack])
        except InvalidTag:
            raise IntegrityError("%s: segment %d failed authentication"
                                 % (ctx, index)) from None
        pos += size + TAG_SIZE
        opos += size
    view.release()
    if len(out) > plain_total:
        del out[plain_total:]
    return out
