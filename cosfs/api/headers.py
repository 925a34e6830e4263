"""HTTP header conventions of the COS XML API, both header families.

What a request's headers ask for, and what a response's headers say:

* :func:`sse_request`: the explicit encryption request of PUT, POST, Copy
  and Initiate Multipart (``x-cos-server-side-encryption`` or
  ``x-amz-server-side-encryption``; ``aws:kms`` is COS's ``cos/kms``). The
  value is handed to the core unchanged otherwise: the core decides what is
  valid (``InvalidArgument``).
* :func:`user_meta` / :func:`content_headers`: ``x-cos-meta-*`` /
  ``x-amz-meta-*`` and the content headers kept with an object.
* :func:`object_headers`: the response headers of an object (ETag quoted,
  Last-Modified, SSE state in ``x-cos-*`` and, for S3 clients, ``x-amz-*``).
* :func:`parse_range`, :func:`check_conditions`: Range and the
  If-* preconditions of GET/HEAD (and ``x-cos-copy-source-If-*`` of copies).
* :func:`content_md5`: the ``Content-MD5`` header decoded
  (``InvalidDigest`` when malformed).

Pure functions on str values; no I/O. Errors are
:class:`cosfs.errors.CosfsError` with the COS code.
"""

import base64
import binascii
import email.utils
import logging
import re

from ..errors import CosfsError, InvalidArgument, InvalidDigest, InvalidRange
from . import xmlout

log = logging.getLogger(__name__)

FAMILIES = ("x-cos-", "x-amz-")
#: content headers an object keeps and returns
CONTENT_HEADERS = ("content-type", "cache-control", "content-disposition", "content-encoding",
                   "content-language", "expires")
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")


class NotModified(Exception):
    """A GET/HEAD precondition says the client's copy is current: answer 304."""


def _error(code, message):
    return CosfsError(message, code=code)


def sse_request(headers):
    """(algorithm or None, kms key id or None) asked for by the request's SSE headers."""
    value = headers.get("x-cos-server-side-encryption")
    key_id = headers.get("x-cos-server-side-encryption-cos-kms-key-id")
    amz = headers.get("x-amz-server-side-encryption")
    if value is None and amz is not None:
        value = "cos/kms" if amz == "aws:kms" else amz
        key_id = headers.get("x-amz-server-side-encryption-aws-kms-key-id")
    if value is not None and not value.strip():
        raise InvalidArgument("the server-side-encryption header is empty")
    if key_id is not None and value != "cos/kms":
        raise InvalidArgument("a KMS key id is allowed only with cos/kms (aws:kms)")
    return value, key_id


def user_meta(headers):
    """``{name: value}`` of the ``x-cos-meta-<name>`` / ``x-amz-meta-<name>`` headers."""
    meta = {}
    for name, value in headers.items():
        for family in FAMILIES:
            if name.startswith(family + "meta-") and len(name) > len(family) + 5:
                meta[name[len(family) + 5:]] = value
    return meta


def content_headers(headers):
    """``{header: value}`` of the content headers to keep; ``aws-chunked`` is a transfer
    detail of the request, not the object's encoding, and is dropped."""
    kept = {}
    for name in CONTENT_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if name == "content-encoding":
            value = ",".join(v.strip() for v in value.split(",")
                             if v.strip() and v.strip().lower() != "aws-chunked")
            if not value:
                continue
        kept[name] = value
    return kept


def content_md5(headers):
    """The 16 bytes of ``Content-MD5``, or None. Raises ``InvalidDigest``."""
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise InvalidDigest("the Content-MD5 you specified is not valid")
    return digest


def content_size(headers):
    """The announced length of the content, aws-chunked framing removed, or None when
    the request does not say (only a hint: the body decides)."""
    for name in ("x-amz-decoded-content-length", "content-length"):
        value = headers.get(name)
        if value is not None:
            if name == "content-length" and "aws-chunked" in \
                    headers.get("content-encoding", "").lower():
                return None
            try:
                size = int(value)
            except ValueError:
                return None
            return size if size >= 0 else None
    return None


def object_headers(info, *, amz=False):
    """Response headers ``[(name, value)]`` describing object ``info``."""
    out = [("etag", xmlout.quote_etag(info.etag)),
           ("last-modified", xmlout.http_date(info.mtime_ns))]
    stored = dict(getattr(info, "headers", None) or {})
    out.append(("content-type", stored.pop("content-type", None) or DEFAULT_CONTENT_TYPE))
    out += [(k, v) for k, v in sorted(stored.items()) if k in CONTENT_HEADERS]
    families = FAMILIES if amz else FAMILIES[:1]
    for family in families:
        for name, value in sorted((getattr(info, "meta", None) or {}).items()):
            out.append((family + "meta-" + name, value))
    out += sse_headers(info, amz=amz)
    out += version_headers(info, amz=amz)
    out.append(("x-cos-storage-class", xmlout.STORAGE_CLASS))
    return out


def version_headers(info, *, amz=False):
    """``x-cos-version-id`` (in a bucket that has or had versioning) and
    ``x-cos-replication-status``, with the ``x-amz-`` names for S3 clients."""
    out = []
    families = FAMILIES if amz else FAMILIES[:1]
    vid = getattr(info, "version_id", None)
    repl = getattr(info, "replication", None)
    for family in families:
        if vid:
            out.append((family + "version-id", vid))
        if repl:
            out.append((family + "replication-status", repl))
    return out


def sse_headers(info, *, amz=False):
    """The object's actual encryption in ``x-cos-*`` (and ``x-amz-*`` for S3 clients)."""
    sse = getattr(info, "sse", None)
    if not sse:
        return []
    key_id = getattr(info, "kms_key_id", None)
    out = [("x-cos-server-side-encryption", sse)]
    if key_id:
        out.append(("x-cos-server-side-encryption-cos-kms-key-id", key_id))
    if amz:
        out.append(("x-amz-server-side-encryption", "aws:kms" if sse == "cos/kms" else sse))
        if key_id:
            out.append(("x-amz-server-side-encryption-aws-kms-key-id", key_id))
    return out


def parse_range(value, size):
    """``Range: bytes=a-b`` -> (start, end exclusive), or None to send the whole object.

    A header that is not one single byte range is ignored, as HTTP allows; a
    range that starts past the end (or a suffix of 0 bytes) is ``InvalidRange``.
    """
    if value is None:
        return None
    m = _RANGE.match(value.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise InvalidRange("the requested range is not satisfiable")
        return max(0, size - suffix), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None
    if start >= size:
        raise InvalidRange("the requested range is not satisfiable")
    return start, end


def _date_ns(value):
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return int(parsed.timestamp()) * 1_000_000_000


def _etag_matches(header, etag):
    etag = (etag or "").strip('"')
    tags = [t.strip() for t in header.split(",")]
    return any(t == "*" or t.removeprefix("W/").strip('"') == etag for t in tags)


def check_conditions(headers, info, *, prefix="", for_copy=False):
    """Apply If-Match, If-None-Match, If-Modified-Since and If-Unmodified-Since.

    ``prefix`` is ``x-cos-copy-source-`` (or ``x-amz-copy-source-``) for the
    conditions of a copy. Raises ``PreconditionFailed``, or :class:`NotModified`
    for a GET/HEAD whose client copy is current (for a copy, that too is
    ``PreconditionFailed``). Times compare in whole seconds, as HTTP dates carry.
    """
    def h(name):
        return headers.get(prefix + name)

    mtime = int(info.mtime_ns) // 1_000_000_000 * 1_000_000_000
    if_match, if_none = h("if-match"), h("if-none-match")
    failed = _error("PreconditionFailed", "at least one of the preconditions you specified "
                                          "did not hold")
    if if_match is not None and not _etag_matches(if_match, info.etag):
        raise failed
    if if_match is None:
        since = h("if-unmodified-since")
        when = _date_ns(since) if since else None
        if when is not None and mtime > when:
            raise failed
    if if_none is not None and _etag_matches(if_none, info.etag):
        raise failed if for_copy else NotModified()
    if if_none is None:
        since = h("if-modified-since")
        when = _date_ns(since) if since else None
        if when is not None and mtime <= when:
            raise failed if for_copy else NotModified()
