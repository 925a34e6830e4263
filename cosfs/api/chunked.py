"""Request bodies of the XML API: ``aws-chunked`` decoding and payload checks.

Two incremental decoders with one interface, both built by
:func:`body_decoder` (usually through
:meth:`cosfs.api.auth.Authenticated.body_decoder`)::

    dec = auth_result.body_decoder()
    for piece in pieces_as_received:
        data = dec.feed(piece)      # payload bytes (possibly b"")
        ...buffer or write data, but do not commit...
    dec.finish()                    # raises if anything was wrong
    ...commit...

:class:`PlainBody` passes the body through and checks, at :meth:`finish`, the
SigV4 payload hash (``x-amz-content-sha256`` as a hex digest →
``XAmzContentSHA256Mismatch``) and every ``x-amz-checksum-<algorithm>``
header (→ ``BadDigest``).

:class:`AwsChunkedDecoder` decodes ``Content-Encoding: aws-chunked``
(``x-amz-content-sha256: STREAMING-...``)::

    <hex size>[;chunk-signature=<64 hex>]\\r\\n<size bytes>\\r\\n   ...repeated
    0[;chunk-signature=<64 hex>]\\r\\n
    [<trailer name>:<value>\\r\\n ...][x-amz-trailer-signature:<64 hex>\\r\\n]
    \\r\\n

In the signed modes every chunk's signature is checked against a chain
seeded by the request's signature (HMAC-SHA256 with the request's signing
key over ``AWS4-HMAC-SHA256-PAYLOAD``, the date, the scope, the previous
signature, the empty hash and the chunk's SHA-256), and the trailer's
signature likewise (``AWS4-HMAC-SHA256-TRAILER``). Trailing checksums named
by ``x-amz-trailer`` are computed while the data streams and compared at
the end; so is ``x-amz-decoded-content-length``.

Supported checksums: CRC32 (zlib), CRC32C (the ``crc32c`` package), SHA1,
SHA256. CRC64NVME and anything else is refused before any data is read
(``InvalidRequest``).

Errors are :class:`cosfs.errors.BadRequestBody` (HTTP 400) with code
``InvalidRequest`` (framing), ``IncompleteBody`` (truncated), ``BadDigest``
(checksum), ``XAmzContentSHA256Mismatch``, or
:class:`cosfs.errors.SignatureDoesNotMatch` (403) for a chunk signature.
Framing and signature errors are raised by :meth:`feed` as soon as they are
seen, checksum and length errors by :meth:`finish` (or by the :meth:`feed`
that completes the body); the caller stores nothing unless :meth:`finish`
returned. Memory: one chunk-header or trailer line (at most
:data:`MAX_LINE` bytes) besides the piece being fed; data is never held.

Pure computation, no I/O, no trio; one decoder belongs to one request.
"""

import base64
import binascii
import hashlib
import hmac
import logging
import zlib

from ..errors import BadRequestBody, SignatureDoesNotMatch

try:
    import crc32c as _crc32c
except ImportError:  # pragma: no cover - declared in install_requires
    _crc32c = None

log = logging.getLogger(__name__)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: longest chunk-header or trailer line accepted, CRLF included
MAX_LINE = 1024
#: most trailer lines accepted
MAX_TRAILERS = 8
CHECKSUM_PREFIX = "x-amz-checksum-"
#: headers under x-amz-checksum- that describe rather than carry a checksum
_CHECKSUM_META = {"x-amz-checksum-algorithm", "x-amz-checksum-type", "x-amz-checksum-mode"}
SIGNED_STREAMING = ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
UNSIGNED_STREAMING = ("STREAMING-UNSIGNED-PAYLOAD-TRAILER",)


# -- checksums -------------------------------------------------------------------------
class _Crc32:
    def __init__(self):
        self.value = 0

    def update(self, data):
        self.value = zlib.crc32(data, self.value)

    def digest(self):
        return self.value.to_bytes(4, "big")


class _Crc32c(_Crc32):
    def update(self, data):
        self.value = _crc32c.crc32c(data, self.value)


def _new_checksum(name):
    """A fresh checksum object for the header/trailer ``name``, or raise InvalidRequest."""
    algorithm = name[len(CHECKSUM_PREFIX):]
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "crc32c" and _crc32c is not None:
        return _Crc32c()
    if algorithm in ("sha1", "sha256"):
        return hashlib.new(algorithm)
    raise BadRequestBody("%s is not supported: use CRC32, CRC32C, SHA1 or SHA256" % name[:60],
                         code="InvalidRequest")


def _decode_b64(name, value):
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestBody("the value of %s is not base64" % name, code="InvalidRequest") \
            from None


def _value(values):
    """One header's value as text (several values joined with commas)."""
    return ",".join(v.decode("latin-1") if isinstance(v, bytes) else v for v in values).strip()


def header_map(headers):
    """``{lower-case name: [values]}`` from a mapping or a list of (name, value) pairs.

    Names and values may be str or bytes; bytes are kept as received. A map
    this function made is accepted again unchanged.
    """
    items = headers.items() if hasattr(headers, "items") else headers
    out = {}
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, list):  # already a header map
            out.setdefault(name.lower(), []).extend(value)
        else:
            out.setdefault(name.lower(), []).append(value)
    return out


class _Checks:
    """The x-amz-checksum-* values a body must match: from headers now, from trailers later."""

    def __init__(self, hmap, trailers=()):
        self.sums = {}        # name -> checksum object
        self.expected = {}    # name -> digest bytes
        for name, values in hmap.items():
            if name.startswith(CHECKSUM_PREFIX) and name not in _CHECKSUM_META:
                self.sums[name] = _new_checksum(name)
                self.expected[name] = _decode_b64(name, _value(values))
        for name in trailers:
            if not name.startswith(CHECKSUM_PREFIX):
                raise BadRequestBody("trailer %s is not supported: only x-amz-checksum-* "
                                     "trailers are" % name[:60], code="InvalidRequest")
            self.sums.setdefault(name, _new_checksum(name))
        self._updates = [s.update for s in self.sums.values()]

    def update(self, data):
        for update in self._updates:
            update(data)

    def verify(self):
        for name, digest in self.expected.items():
            if not hmac.compare_digest(self.sums[name].digest(), digest):
                raise _bad_digest("The %s you specified did not match the calculated checksum."
                                 % name[len(CHECKSUM_PREFIX):].upper())


def _bad_digest(message):
    return BadRequestBody(message, code="BadDigest")


# -- plain bodies ----------------------------------------------------------------------
class PlainBody:
    """A body sent as is: passed through, its payload hash and checksums checked at the end."""

    def __init__(self, headers=(), payload_sha256=None):
        hmap = header_map(headers)
        self._checks = _Checks(hmap)
        self._sha = hashlib.sha256() if payload_sha256 else None
        self._want = payload_sha256
        self.length = 0

    def feed(self, data):
        if self._sha is not None:
            self._sha.update(data)
        self._checks.update(data)
        self.length += len(data)
        return data

    def finish(self):
        if self._sha is not None and not hmac.compare_digest(self._sha.hexdigest(), self._want):
            raise BadRequestBody("The provided 'x-amz-content-sha256' header does not match "
                                 "what was computed.", code="XAmzContentSHA256Mismatch")
        self._checks.verify()


# -- aws-chunked -----------------------------------------------------------------------
class ChunkSigning:
    """What the chunk-signature chain needs from the request's SigV4 signature."""

    __slots__ = ("key", "amz_date", "scope", "seed")

    def __init__(self, key, amz_date, scope, seed):
        self.key, self.amz_date, self.scope, self.seed = key, amz_date, scope, seed

    def __repr__(self):
        return "ChunkSigning(%s, %s)" % (self.amz_date, self.scope)

    def sign(self, kind, previous, digest_hex):
        text = "\n".join((kind, self.amz_date, self.scope, previous, digest_hex))
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def chunk(self, previous, chunk_sha256_hex):
        return self.sign("AWS4-HMAC-SHA256-PAYLOAD", previous,
                         EMPTY_SHA256 + "\n" + chunk_sha256_hex)

    def trailer(self, previous, trailer_sha256_hex):
        return self.sign("AWS4-HMAC-SHA256-TRAILER", previous, trailer_sha256_hex)


_HEADER, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _framing(message):
    return BadRequestBody(message, code="InvalidRequest")


class AwsChunkedDecoder:
    """Incremental decoder of one aws-chunked body (see the module docstring).

    ``signing``: a :class:`ChunkSigning` for the signed modes, None for
    ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``. ``trailers``: the names announced
    in ``x-amz-trailer``; ``signed_trailer``: whether the trailer carries
    ``x-amz-trailer-signature``. ``decoded_length``: the
    ``x-amz-decoded-content-length``, or None.
    """

    def __init__(self, headers=(), *, signing=None, trailers=(), signed_trailer=False,
                 decoded_length=None):
        self._signing = signing
        self._previous = signing.seed if signing else None
        self._trailers = tuple(trailers)
        self._signed_trailer = signed_trailer
        self._checks = _Checks(header_map(headers), self._trailers)
        self._decoded_length = decoded_length
        self.length = 0
        self._state = _HEADER
        self._line = bytearray()
        self._remaining = 0
        self._chunk_sha = None
        self._chunk_sig = None
        self._crlf = 0
        self._seen = {}
        self._trailer_text = []

    # -- feeding
    def feed(self, data):
        """Decode the next piece of the body; return the payload bytes it completed."""
        if not isinstance(data, bytes):
            data = bytes(data)
        view = memoryview(data)
        out = []
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - i)
                piece = view[i:i + take]
                if self._chunk_sha is not None:
                    self._chunk_sha.update(piece)
                self._checks.update(piece)
                out.append(piece)
                i += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _DATA_END
            elif state == _DATA_END:
                want = b"\r\n"[self._crlf]
                if data[i] != want:
                    raise _framing("chunk data is not followed by CRLF")
                i += 1
                self._crlf += 1
                if self._crlf == 2:
                    self._crlf = 0
                    self._end_chunk()
                    self._state = _HEADER
            elif state in (_HEADER, _TRAILER):
                j = data.find(b"\n", i)
                end = n if j < 0 else j + 1
                if len(self._line) + end - i > MAX_LINE:
                    raise _framing("aws-chunked header or trailer line longer than %d bytes"
                                   % MAX_LINE)
                self._line += view[i:end]
                i = end
                if j >= 0:
                    line = bytes(self._line)
                    self._line.clear()
                    if not line.endswith(b"\r\n"):
                        raise _framing("aws-chunked line does not end with CRLF")
                    if state == _HEADER:
                        self._chunk_header(line[:-2])
                    else:
                        self._trailer_line(line[:-2])
            else:
                raise _framing("data after the end of the aws-chunked body")
        if not out:
            return b""
        return out[0].tobytes() if len(out) == 1 else b"".join(out)

    def finish(self):
        """Raise unless the whole body arrived and every check passed."""
        if self._state != _DONE:
            raise BadRequestBody("the aws-chunked body ended before its final chunk",
                                 code="IncompleteBody")

    # -- framing
    def _chunk_header(self, text):
        size_text, _, ext = text.partition(b";")
        if not size_text or len(size_text) > 16 or not _HEX.issuperset(size_text):
            raise _framing("malformed aws-chunked chunk header")
        size = int(size_text, 16)
        if self._signing is not None:
            if not ext.startswith(b"chunk-signature=") or len(ext) != 16 + 64:
                raise _framing("aws-chunked chunk without a chunk-signature")
            self._chunk_sig = ext[16:].decode("ascii", "replace")
            self._chunk_sha = hashlib.sha256()
        elif ext:
            raise _framing("unexpected extension in an unsigned aws-chunked chunk header")
        if self._decoded_length is not None and self.length + size > self._decoded_length:
            raise _framing("aws-chunked body is longer than x-amz-decoded-content-length")
        self.length += size
        if size:
            self._remaining = size
            self._state = _DATA
        else:
            self._end_chunk()
            self._state = _TRAILER

    def _end_chunk(self):
        if self._signing is None:
            return
        expected = self._signing.chunk(self._previous, self._chunk_sha.hexdigest())
        if not hmac.compare_digest(expected, self._chunk_sig):
            raise SignatureDoesNotMatch("a chunk signature of the aws-chunked body does not "
                                        "match")
        self._previous = expected

    def _trailer_line(self, text):
        if not text:
            self._complete()
            return
        name, sep, value = text.partition(b":")
        name = name.strip().lower().decode("latin-1")
        value = value.strip().decode("latin-1")
        if not sep or not name:
            raise _framing("malformed aws-chunked trailer line")
        if name == "x-amz-trailer-signature":
            if not self._signed_trailer or "sig" in self._seen:
                raise _framing("unexpected x-amz-trailer-signature")
            digest = hashlib.sha256("".join(self._trailer_text).encode("latin-1")).hexdigest()
            expected = self._signing.trailer(self._previous, digest)
            if not hmac.compare_digest(expected, value):
                raise SignatureDoesNotMatch("the trailer signature of the aws-chunked body does "
                                            "not match")
            self._seen["sig"] = True
            return
        if "sig" in self._seen:
            raise _framing("aws-chunked trailer after the trailer signature")
        if name not in self._trailers or name in self._seen:
            raise _framing("trailer %s was not announced in x-amz-trailer" % name[:60])
        if len(self._seen) >= MAX_TRAILERS:
            raise _framing("too many aws-chunked trailers")
        self._seen[name] = value
        self._trailer_text.append("%s:%s\n" % (name, value))

    def _complete(self):
        self._state = _DONE
        missing = [t for t in self._trailers if t not in self._seen]
        if missing:
            raise BadRequestBody("the trailer %s announced in x-amz-trailer is missing"
                                 % missing[0], code="IncompleteBody")
        if self._signed_trailer and self._trailers and "sig" not in self._seen:
            raise _framing("the aws-chunked trailer has no x-amz-trailer-signature")
        if self._decoded_length is not None and self.length != self._decoded_length:
            raise BadRequestBody("the aws-chunked body holds %d bytes, x-amz-decoded-content-"
                                 "length says %d" % (self.length, self._decoded_length),
                                 code="IncompleteBody")
        for name in self._trailers:
            self._checks.expected[name] = _decode_b64(name, self._seen[name])
        self._checks.verify()


# -- choosing a decoder ----------------------------------------------------------------
def body_decoder(payload, headers=(), signing=None):
    """The decoder for a request body.

    ``payload``: the request's ``x-amz-content-sha256`` value (or None for a
    COS-signed request); ``signing``: the :class:`ChunkSigning` of a SigV4
    header signature (needed for the signed streaming modes).
    """
    hmap = header_map(headers)
    if payload is None or payload == "UNSIGNED-PAYLOAD":
        return PlainBody(hmap)
    if payload in SIGNED_STREAMING or payload in UNSIGNED_STREAMING:
        trailer = payload.endswith("-TRAILER")
        names = []
        if trailer:
            names = [t.strip().lower() for t in _value(hmap.get("x-amz-trailer", [])).split(",")
                     if t.strip()]
            if not names:
                raise _framing("%s needs the x-amz-trailer header" % payload)
        elif "x-amz-trailer" in hmap:
            raise _framing("x-amz-trailer needs a -TRAILER payload mode")
        signed = payload in SIGNED_STREAMING
        if signed and signing is None:
            raise _framing("%s needs a SigV4 Authorization header" % payload)
        length = None
        if "x-amz-decoded-content-length" in hmap:
            text = _value(hmap["x-amz-decoded-content-length"])
            if not text.isdigit() or len(text) > 19:
                raise _framing("malformed x-amz-decoded-content-length")
            length = int(text)
        # a checksum announced as a trailer is not also expected in the headers
        plain = {k: v for k, v in hmap.items() if k not in names}
        return AwsChunkedDecoder(plain, signing=signing if signed else None, trailers=names,
                                 signed_trailer=signed and trailer, decoded_length=length)
    return PlainBody(hmap, payload_sha256=payload.lower())
