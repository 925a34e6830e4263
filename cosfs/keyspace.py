"""Objects by key: COS object semantics over the filesystem core, for every front-end.

A front-end (the XML API, later the web console) names objects the way COS
does, ``bucket`` + ``key``; :class:`KeySpace` turns each request into the same
catalog records and data path the mount uses, so a PUT is visible on the mount
at once and a file closed on the mount is an object at once. No front-end
holds a COS rule of its own: key rules, listing order, metadata mapping,
ETags, multipart uploads and error codes live here and below.

Keys and the tree (``docs/format.md``, "Object keys"): key ``a/b/c`` is file
``c`` in directory ``a/b`` of the bucket; a key ending in ``/`` is a directory
(an empty one lists as the ``dir/`` marker object, as the COS console shows
it; a directory that holds anything is not listed as a marker: the tree keeps
no record of a marker created explicitly). Missing directories are created
as ``mkdir`` would (0755, owner ``uid``/``gid`` of the KeySpace, the group of
a setgid parent) and removed again when a delete through a key leaves them
empty, as COS has no directories (the catalog's ``implied_dirs``; a directory
made with ``mkdir`` on the mount or by a ``dir/`` PUT stays, it is an
object of its own); a new object is 0644; an object that replaces another keeps
its permission bits and owner. Only regular files are objects: symlinks and
special files made on the mount are not listed and cannot be read by key.

Keys the tree cannot hold are refused, never stored as something else:

===========================================================  ======================
key                                                          error (HTTP status)
===========================================================  ======================
empty; an empty, ``.`` or ``..`` segment; a leading ``/``;    ``InvalidObjectName`` 400
NUL or 0x18-0x1B; not UTF-8; escaped-byte characters
(U+F780-U+F7FF) that spell valid UTF-8
over 850 bytes, or a segment over 255 bytes as a file name    ``KeyTooLong`` 400
``a/b`` where ``a`` is an object; ``a`` (or ``a/``) where     ``PathConflict`` 409
``a`` is a directory (or an object); any key where the
mount holds a symlink or special file
data in a ``dir/`` key                                       ``InvalidArgument`` 400
===========================================================  ======================

Metadata (``docs/xattrs.md``, "Object metadata over the XML API"):
``x-cos-meta-<name>`` is the xattr ``user.<name>`` (names of letters, digits
and ``-``, folded to lower case, as COS allows: such a name can never reach
the ``user.cos.`` namespace); ``Content-Type`` is ``user.mime_type`` (the
freedesktop.org convention); ``Cache-Control``, ``Content-Disposition``,
``Content-Encoding`` and ``Expires`` are ``user.http.<header>``.

Writes: a PUT streams the body into a new nameless object (through the data
path, in bounded memory; the resolver sees the object's request, or the
bucket default), commits it, checks the Content-MD5, and only then publishes
it under its key in one catalog transaction, replacing the old object: the
old version stays intact until then, readers holding it keep it, two writers
of one key never mix (the last to publish wins), and a failed or interrupted
PUT leaves nothing (a crash leaves a nameless object, purged at the next
mount or by ``cosfs fsck``). When a write returns, it survives a kill of the
daemon, as a ``close`` on the mount does (with ``fsync_on_close``, a machine
crash too).

Multipart uploads: the encryption is resolved once, at Initiate (the request,
else the bucket default then); each part is a nameless object sealed with it,
recorded in the catalog's ``uploads``/``upload_parts`` tables (so uploads
survive a restart, and parts are never purged or listed). Complete streams
the parts through the write path into a new object under the final key's
identity (re-sealed, bounded memory), publishes it with the ETag
``<MD5 of the parts' binary MD5s>-<n>`` (shown by ``user.cos.etag`` until the
object changes on the mount), then frees the parts. Non-last parts must hold
at least :data:`MIN_PART_SIZE` bytes (1 MiB: COS's "1 MB" as its SDKs count it).

Runs on the trio thread, like the filesystem layer: catalog changes of one
operation happen between two awaits, each in one transaction. Raises
:class:`~cosfs.errors.CosfsError` subclasses carrying the COS code; each
code's HTTP status is :func:`cosfs.errors.http_status`.
"""

import dataclasses
import errno
import functools
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import os
import re
import stat
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import trio

from . import names
from .catalog import ROOT_INODE, now_ns
from .errors import (BadDigest, BucketAlreadyOwnedByYou, BucketNotEmpty, CosfsError,
                     EntityTooSmall, InvalidArgument, InvalidDigest, InvalidObjectName,
                     InvalidPart, InvalidPartOrder, InvalidRange, InvalidRegionName,
                     InvalidRequest, KeyConflict, KeyTooLong, MalformedXML, MetadataTooLarge,
                     NoSuchBucket, NoSuchKey, NoSuchUpload, NoSuchVersion)
from .filesystem import NAME_MAX
from .resolver import OVERRIDE_VALUES, EncryptionSpec, WriterKind
from .versions import version_label

log = logging.getLogger(__name__)

MAX_KEYS = 1000
MAX_PART_NUMBER = 10000
#: Smallest part but the last one (bytes).
MIN_PART_SIZE = 1024 * 1024
#: Largest part COS takes (bytes): larger announced sizes are no guide to where parts go.
MAX_PART_SIZE = 5 * 1024 ** 3
#: COS: a user metadata value at most 2 KiB, all user metadata at most 4 KiB.
META_VALUE_MAX = 2048
META_TOTAL_MAX = 4096
EMPTY_MD5 = hashlib.md5(b"").hexdigest()
CONTENT_HEADERS = ("content-type", "cache-control", "content-disposition", "content-encoding",
                   "content-language", "expires")
HEADER_XATTRS = {h: (b"user.mime_type" if h == "content-type" else b"user.http." + h.encode())
                 for h in CONTENT_HEADERS}
_XATTR_HEADERS = {v: k for k, v in HEADER_XATTRS.items()}
_META_NAME = re.compile(r"[a-z0-9-]+\Z")
_META_XATTR = re.compile(rb"user\.([a-z0-9-]+)\Z")
#: Pieces up to this size are hashed on the trio thread (a worker costs more).
_INLINE_HASH = 128 * 1024
_SLASH = 0x2F
_RESOLVE = object()


# -- what the front-ends get ---------------------------------------------------------
@dataclass(frozen=True)
class BucketInfo:
    name: str
    region: str
    created_ns: int


@dataclass(frozen=True)
class ObjectInfo:
    """An object (or ``dir/`` marker) as COS reports it.

    ``etag`` has no quotes; in a :class:`Listing` it is ``""`` while the object's
    MD5 is not known yet (see :meth:`KeySpace.fill_etags`). ``sse`` is the
    actual state (``AES256``, ``SM4``, ``cos/kms`` or None). Listings carry no
    ``headers`` or ``meta``.
    """

    key: str
    size: int
    mtime_ns: int
    etag: str
    sse: Optional[str]
    kms_key_id: Optional[str]
    headers: dict
    meta: dict
    is_dir_marker: bool
    #: the version id as COS shows it (``null`` for an object written without versioning);
    #: None in a bucket that never had versioning
    version_id: Optional[str] = None
    #: x-cos-replication-status: PENDING, COMPLETED, FAILED, REPLICA or None
    replication: Optional[str] = None


@dataclass(frozen=True)
class VersionInfo:
    """One entry of a versions listing: an object version or a delete marker."""

    key: str
    version_id: str
    is_latest: bool
    is_delete_marker: bool
    size: int
    mtime_ns: int
    etag: str
    sse: Optional[str]


@dataclass
class VersionListing:
    versions: List[VersionInfo]
    common_prefixes: List[str]
    is_truncated: bool
    next_key_marker: Optional[str]
    next_version_id_marker: Optional[str]


@dataclass
class Listing:
    contents: List[ObjectInfo]
    common_prefixes: List[str]
    is_truncated: bool
    next_marker: Optional[str]


class Part(NamedTuple):
    number: int
    etag: str
    size: int
    mtime_ns: int


class PartListing(NamedTuple):
    parts: List[Part]
    is_truncated: bool
    next_marker: Optional[int]


class PartCopy(NamedTuple):
    etag: str
    mtime_ns: int


class Upload(NamedTuple):
    key: str
    upload_id: str
    initiated_ns: int


class UploadListing(NamedTuple):
    uploads: List[Upload]
    common_prefixes: List[str]
    is_truncated: bool
    next_key_marker: Optional[str]
    next_upload_id_marker: Optional[str]


# -- keys and metadata ---------------------------------------------------------------------
def _utf8(text, what):
    if not isinstance(text, str):
        raise InvalidArgument("%s must be text" % what)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("%s is not valid UTF-8" % what) from None


def _listing_args(max_keys, prefix, delimiter):
    """(max_keys clipped to MAX_KEYS, prefix bytes, delimiter bytes or None) of a listing."""
    if not isinstance(max_keys, int) or max_keys < 0:
        raise InvalidArgument("max-keys must be a number from 0 to %d" % MAX_KEYS)
    return (min(max_keys, MAX_KEYS), _utf8(prefix or "", "prefix"),
            _utf8(delimiter, "delimiter") if delimiter else None)


def split_key(key):
    """(segments as catalog names, is a ``dir/`` key) of an object key; raises
    InvalidObjectName or KeyTooLong for keys the tree cannot hold (module docstring)."""
    if not isinstance(key, str):
        raise InvalidObjectName("object key must be text")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidObjectName("object key %s is not valid UTF-8" % names.short(key)) from None
    names.validate_key(raw)
    is_dir = raw.endswith(b"/")
    segments = (raw[:-1] if is_dir else raw).split(b"/")
    for seg in segments:
        # the mount must be able to show it: one file name, at most NAME_MAX bytes
        if len(names.key_to_name(seg.decode("utf-8"))) > NAME_MAX:
            raise KeyTooLong("a segment of key %s is longer than %d bytes as a file name"
                             % (names.short(key), NAME_MAX))
    return segments, is_dir


def _check_digest(content_md5):
    if content_md5 is not None and (not isinstance(content_md5, (bytes, bytearray))
                                    or len(content_md5) != 16):
        raise InvalidDigest("Content-MD5 must be the 16 bytes of an MD5 digest")


def metadata_xattrs(meta, headers):
    """The xattrs [(name, value)] that hold user metadata and content headers.

    Raises InvalidArgument for a name outside the rules, MetadataTooLarge when
    the user metadata is over the COS limits.
    """
    out = {}
    total = 0
    for name, value in (meta or {}).items():
        low = name.lower() if isinstance(name, str) else None
        if low is None or not _META_NAME.match(low):
            raise InvalidArgument("user metadata name %s: only letters, digits and '-' are "
                                  "allowed" % names.short(name))
        data = _utf8(value, "the value of x-cos-meta-" + low)
        if len(data) > META_VALUE_MAX:
            raise MetadataTooLarge("x-cos-meta-%s is longer than %d bytes" % (low, META_VALUE_MAX))
        total += len(low) + len(data)
        out[b"user." + low.encode()] = data
    if total > META_TOTAL_MAX:
        raise MetadataTooLarge("user metadata is %d bytes, at most %d allowed"
                               % (total, META_TOTAL_MAX))
    for name, value in (headers or {}).items():
        low = name.lower() if isinstance(name, str) else None
        if low not in HEADER_XATTRS:
            raise InvalidArgument("%s is not a content header cosfs keeps" % names.short(name))
        out[HEADER_XATTRS[low]] = _utf8(value, low)
    return sorted(out.items())


def _metadata_field(name):
    """("meta", name) / ("header", header) for an xattr name of the mapping, else None."""
    header = _XATTR_HEADERS.get(name)
    if header is not None:
        return "header", header
    m = _META_XATTR.match(name)
    return ("meta", m.group(1).decode()) if m else None


def _request_of(sse, kms_key_id):
    """The object's encryption request (the xattr value) for SSE arguments, or None.

    KMS key ids are accepted with ``cos/kms`` only and not kept: cosfs seals every
    object under its own master keys."""
    if sse is None:
        if kms_key_id is not None:
            raise InvalidArgument("a KMS key id needs server-side encryption cos/kms")
        return None
    if sse not in OVERRIDE_VALUES:
        raise InvalidArgument("invalid server-side encryption %s: expected one of %s"
                              % (names.short(sse), ", ".join(sorted(OVERRIDE_VALUES))))
    if kms_key_id is not None and sse != "cos/kms":
        raise InvalidArgument("a KMS key id is allowed only with cos/kms")
    return sse


def _inventory_id(value):
    if not value:
        raise InvalidArgument("the inventory id is missing (?inventory&id=ID)")
    return value


def _spec_of(label):
    return None if label is None else EncryptionSpec.from_stored_name(label)


def _clean_etag(etag):
    return etag.strip().strip('"').lower() if isinstance(etag, str) else ""


async def _pieces(body):
    """The body as an async iterator of bytes (it may also be bytes itself)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        if len(body):
            yield bytes(body)
        return
    async for piece in body:
        if piece:
            yield piece


# -- reading --------------------------------------------------------------------------------
class ObjectReader:
    """An open object version: ``info`` and ``read(offset, size)``; ``aclose()`` when done.

    The version read is the one found at open: if the key is replaced meanwhile
    (PUT, Complete, a rename over it on the mount), this reader keeps the old
    version. A change of the same file in place on the mount (a write into
    it) is seen by the reads that follow it, as by a reader on the mount.
    """

    def __init__(self, keyspace, ino, info):
        self._ks = keyspace
        self._ino = ino
        self.info = info

    @property
    def ino(self):
        """The inode number of the version read (None for a ``dir/`` marker)."""
        return self._ino

    async def read(self, offset, size) -> bytes:
        """Plaintext ``[offset, offset+size)``, clipped to the object's size."""
        if self._ino is None or size <= 0:
            return b""
        return await self._ks.objects.read(self._ino, offset, size)

    async def pieces(self, start=0, end=None):
        """Yield ``[start, end)`` in chunk-aligned pieces (async iterator)."""
        end = self.info.size if end is None else end
        cs = self._ks.objects.chunk_size
        pos = start
        while pos < end:
            n = min(cs - pos % cs, end - pos)
            data = await self.read(pos, n)
            if len(data) != n:
                raise CosfsError("object %s ended at %d bytes, expected %d"
                                 % (names.short(self.info.key), pos + len(data), end))
            yield data
            pos += n

    async def aclose(self):
        if self._ino is not None:
            ino, self._ino = self._ino, None
            self._ks._unhold(ino)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


class _Draft:
    """A new nameless object being written (nlink 0: a crash leaves it to be purged)."""

    def __init__(self, ks, bucket_ino, request, spec, identity=None, offset=0):
        self.ks = ks
        cat = ks.catalog
        object_id, crypt = identity if identity is not None else (os.urandom(16), None)
        with cat.transaction():
            inode = cat.new_inode(mode=stat.S_IFREG | 0o644, uid=ks.uid, gid=ks.gid, nlink=0,
                                  bucket=bucket_ino, object_id=object_id,
                                  enc_request=request)
        self.ino = inode.id
        self.offset = offset  # where write_all puts its first byte
        self.size = 0  # bytes written by write_all
        self.md5 = hashlib.md5()
        self.kept = False
        ks.objects.opened(self.ino)
        try:
            # committed even when empty, so that its encryption is recorded (like create)
            ks.objects.state(self.ino).modified = True
            if spec is not _RESOLVE:
                ks.objects.begin_with(self.ino, spec, crypt)
        except BaseException:  # e.g. no data key: the nameless inode must not stay held
            self.discard()
            raise

    async def _write(self, data):
        if len(data) > _INLINE_HASH:
            await trio.to_thread.run_sync(self.md5.update, data, limiter=self.ks.objects.limiter)
        else:
            self.md5.update(data)
        await self.ks.objects.write(self.ino, self.offset + self.size, data)
        self.size += len(data)

    async def write_all(self, pieces):
        """Append an async iterator of bytes (from ``offset`` on), in whole chunks where
        possible."""
        cs = self.ks.objects.chunk_size
        buf = bytearray()
        async for piece in pieces:
            if not buf and len(piece) == cs:
                await self._write(bytes(piece))
                continue
            buf += piece
            while len(buf) >= cs:
                data = bytes(buf[:cs])
                del buf[:cs]
                await self._write(data)
        if buf:
            await self._write(bytes(buf))

    async def commit(self, then=None):
        await self.ks.objects.commit(self.ino, then=then)

    def discard(self):
        inode = self.ks.catalog.get_inode(self.ino)
        self.ks.objects.forget_object(inode)


# -- the key space -------------------------------------------------------------------------
class KeySpace:
    """COS object semantics over one FileSystem and its data path (one per daemon).

    ``uid``/``gid`` own the directories and objects it creates. ``invalidate_entry``
    (parent inode, name as the kernel knows it), when given, is called after a name
    was created, replaced or removed outside a FUSE request, so that a mount does not
    serve a cached entry, negative ones included (the composition root passes
    :meth:`cosfs.mount.KernelNotifier.invalidate`); it may be called inside a catalog
    transaction, so it must not block, await or raise.
    """

    def __init__(self, fs, objects, catalog, *, uid=0, gid=0, invalidate_entry=None):
        self.fs = fs
        self.objects = objects
        self.catalog = catalog
        #: what usage_apart found last (None: not yet asked)
        self.last_usage = None
        self.uid = uid
        self.gid = gid
        self.invalidate_entry = invalidate_entry
        self._pruned = []  # directories _prune removed, purged after the transaction
        self._drop_uploads(catalog.uploads_without_bucket())

    # -- helpers ----------------------------------------------------------------------
    def _bucket_ino(self, name):
        row = self.catalog.bucket_by_name(name) if isinstance(name, str) else None
        if row is None:
            raise NoSuchBucket("The specified bucket does not exist: %s" % names.short(name))
        return row[0]

    def _find(self, bucket_ino, segments):
        """(parent inode number, Inode) of a path, or (None, None) when missing."""
        parent = bucket_ino
        for i, seg in enumerate(segments):
            ino = self.catalog.lookup(parent, seg)
            if ino is None:
                return None, None
            inode = self.catalog.get_inode(ino)
            if i == len(segments) - 1:
                return parent, inode
            if not inode.is_dir:
                return None, None
            parent = ino
        return None, None

    def _object(self, bucket, key):
        """(Inode, is_dir_marker) of an existing object; raises NoSuchKey."""
        bino = self._bucket_ino(bucket)
        segments, is_dir = split_key(key)
        _, inode = self._find(bino, segments)
        if inode is not None:
            if is_dir and inode.is_dir and not self.catalog.has_children(inode.id):
                return inode, True
            if not is_dir and inode.is_reg:
                return inode, False
        raise NoSuchKey("The specified key does not exist: %s" % names.short(key))

    def _check_place(self, bucket_ino, segments):
        """Raise KeyConflict when an object could not be published at this path now."""
        parent = bucket_ino
        for i, seg in enumerate(segments):
            ino = self.catalog.lookup(parent, seg)
            if ino is None:
                return
            inode = self.catalog.get_inode(ino)
            last = i == len(segments) - 1
            if last and not inode.is_reg:
                raise KeyConflict("%s is a directory, symlink or special file on the mount"
                                  % names.short(b"/".join(segments)))
            if not last and not inode.is_dir:
                raise KeyConflict("%s is an object, not a directory"
                                  % names.short(b"/".join(segments[:i + 1])))
            parent = ino

    def _make_dirs(self, bucket_ino, segments, t):
        """The directory at ``segments``, created as mkdir would where missing (inside a
        transaction). Raises KeyConflict when a segment is not a directory."""
        cat = self.catalog
        ino = bucket_ino
        for i, seg in enumerate(segments):
            child = cat.lookup(ino, seg)
            if child is not None:
                if not cat.get_inode(child).is_dir:
                    raise KeyConflict("%s is an object, not a directory"
                                      % names.short(b"/".join(segments[:i + 1])))
                ino = child
                continue
            parent = cat.get_inode(ino)
            setgid = parent.mode & stat.S_ISGID
            new = cat.new_inode(mode=stat.S_IFDIR | 0o755 | setgid, uid=self.uid,
                                gid=parent.gid if setgid else self.gid, nlink=2,
                                bucket=bucket_ino, t=t)
            cat.add_dentry(ino, seg, new.id)
            cat.update_inode(ino, nlink=parent.nlink + 1, mtime_ns=t, ctime_ns=t)
            cat.set_implied(new.id, True)  # removed again when a delete empties it
            self._changed(ino, seg)  # the kernel may hold a negative entry for it
            ino = new.id
        return ino

    def _purge_pruned(self):
        pruned, self._pruned = self._pruned, []
        for ino in pruned:
            self.fs.purge_if_unused(ino)

    def _prune(self, parent, t):
        """After a delete through a key: remove the directories above it that only existed
        for keys below them and are empty now, as COS has no directories (inside a
        transaction). A directory made on the mount or by a ``dir/`` PUT stays."""
        cat = self.catalog
        while True:
            row = cat.parent_of(parent)
            if row is None or row[0] == ROOT_INODE or not cat.is_implied(parent) \
                    or cat.has_children(parent):
                return
            up, name = row
            cat.remove_dentry(up, name)
            cat.update_inode(parent, nlink=0, ctime_ns=t)
            upper = cat.get_inode(up)
            cat.update_inode(up, nlink=upper.nlink - 1, mtime_ns=t, ctime_ns=t)
            self._changed(up, name)
            self._pruned.append(parent)
            parent = up

    def _replace_metadata(self, ino, xattrs):
        """Swap the object's metadata xattrs for ``xattrs`` (inside a transaction)."""
        for name in self.catalog.list_xattrs(ino):
            if _metadata_field(name) is not None:
                self.catalog.remove_xattr(ino, name)
        for name, value in xattrs:
            self.catalog.set_xattr(ino, name, value)

    def _metadata(self, ino):
        meta, headers = {}, {}
        for name in self.catalog.list_xattrs(ino):
            field = _metadata_field(name)
            if field is None:
                continue
            try:
                value = self.catalog.get_xattr(ino, name).decode("utf-8")
            except (AttributeError, UnicodeDecodeError):
                continue  # not text: cannot be a header value
            (meta if field[0] == "meta" else headers)[field[1]] = value
        return meta, headers

    def _info(self, inode, key, etag, *, marker=False, metadata=True):
        meta, headers = self._metadata(inode.id) if metadata else ({}, {})
        if marker:
            return ObjectInfo(key, 0, inode.mtime_ns, EMPTY_MD5, None, None, headers, meta, True)
        vid = repl = None
        if self.objects.versions.versioned(inode.bucket) or inode.version_id:
            vid = version_label(inode.version_id)
        if metadata:
            repl = self.catalog.replication_status(inode.id)
        return ObjectInfo(key, inode.size, inode.mtime_ns, etag, inode.enc, None, headers, meta,
                          False, vid, repl)

    def _changed(self, parent, key_name):
        """Tell the kernel that entry ``key_name`` (catalog form) of ``parent`` changed."""
        if self.invalidate_entry is not None:
            try:
                name = key_name if parent == ROOT_INODE else \
                    names.key_to_name(key_name.decode("utf-8"))
                self.invalidate_entry(parent, name)
            except Exception:  # a stale cache entry is not worth failing the request
                log.warning("could not invalidate a cached entry", exc_info=True)

    async def _durable(self):
        """Like a close on the mount: with ``fsync_on_close``, what was just published
        survives a machine crash (without it, a kill of the daemon)."""
        if self.fs.fsync_on_close:
            await self.objects.sync_catalog()

    def _hold(self, ino):
        self.objects.opened(ino)

    def _unhold(self, ino):
        """Drop a hold taken with :meth:`_hold` (no await: safe in cleanup), and delete
        the object if that was the last thing keeping a nameless one."""
        st = self.objects.states.get(ino)
        if st is not None:
            st.open_count -= 1
            if not st.busy and self.objects.states.get(ino) is st:
                del self.objects.states[ino]
        self.fs.purge_if_unused(ino)

    @asynccontextmanager
    async def _draft(self, bucket_ino, request, spec=_RESOLVE, identity=None, offset=0):
        draft = _Draft(self, bucket_ino, request, spec, identity, offset)
        try:
            yield draft
        except BaseException:
            if not draft.kept:  # named already: a failure after that must not delete it
                draft.discard()
            raise
        if draft.kept:
            self._unhold(draft.ino)
        else:
            draft.discard()

    def _publish(self, bucket_ino, segments, draft, xattrs, etag, finish_upload=None, *,
                 replica=False, replica_vid=None, link=()):
        """Give the committed draft its key, replacing what is there: one transaction, no
        await. ``finish_upload``: also remove that multipart upload; ``link``: inodes
        whose chunks the draft takes over in the same transaction (parts sealed under
        the draft's identity, see :meth:`_assembly`). ``replica``: the
        draft is a replica of source version ``replica_vid`` (None: ``null``;
        cosfs.services.replication). Returns the Inode."""
        return self._published(draft, self._name_rows(
            bucket_ino, segments, draft, xattrs, etag, finish_upload, replica=replica,
            replica_vid=replica_vid, link=link))

    def _name_rows(self, bucket_ino, segments, draft, xattrs, etag, finish_upload=None, *,
                   replica=False, replica_vid=None, link=()):
        """The catalog rows of :meth:`_publish` (its transaction, or a part of the one
        around it: see :meth:`_commit_and_publish`); returns what :meth:`_published`
        needs afterwards."""
        cat = self.catalog
        vs = self.objects.versions
        t = now_ns()
        old = None
        parts = []
        with cat.transaction():
            if cat.bucket_by_inode(bucket_ino) is None:
                raise NoSuchBucket("the bucket was removed while the object was written")
            for src in link:
                cat.link_chunks(src, draft.ino)
            parent = self._make_dirs(bucket_ino, segments[:-1], t)
            name = segments[-1]
            fields = dict(nlink=1, etag=etag, mtime_ns=t, ctime_ns=t)
            old_ino = cat.lookup(parent, name)
            if old_ino is not None:
                old = cat.get_inode(old_ino)
                if not old.is_reg:
                    raise KeyConflict("%s is a directory, symlink or special file on the mount"
                                      % names.short(b"/".join(segments)))
                fields.update(mode=stat.S_IFREG | stat.S_IMODE(old.mode) & 0o777, uid=old.uid,
                              gid=old.gid)
            else:
                pinode = cat.get_inode(parent)
                if pinode.mode & stat.S_ISGID:
                    fields["gid"] = pinode.gid
            for xname, value in xattrs:
                cat.set_xattr(draft.ino, xname, value)
            if vs.versioned(bucket_ino):
                path = b"/".join(segments)
                if old is not None and replica and old.version_id == replica_vid:
                    vs.before_replace(bucket_ino, path, None)  # an earlier copy of it
                else:
                    vs.before_replace(bucket_ino, path, old)
            cat.set_dentry(parent, name, draft.ino)
            cat.update_inode(draft.ino, **fields)
            if vs.versioned(bucket_ino):
                vs.stamp(draft.ino, bucket_ino, path, replica=replica,
                         version_id=replica_vid)
            if old is not None:
                cat.update_inode(old.id, nlink=old.nlink - 1, ctime_ns=t)
            cat.update_inode(parent, mtime_ns=t, ctime_ns=t)
            if finish_upload is not None:
                parts = cat.delete_upload(finish_upload)
                for ino in parts:
                    cat.update_inode(ino, nlink=0)
        return parent, name, old, parts

    def _published(self, draft, rows):
        """After the transaction that named ``draft``: the kernel is told, and what it
        replaced is purged once unused. Returns the Inode."""
        parent, name, old, parts = rows
        draft.kept = True
        self._changed(parent, name)  # a replaced entry, or a cached "no such name"
        try:
            self.objects.versions.flush()
            if old is not None:
                self.fs.purge_if_unused(old.id)
            for ino in parts:
                self.fs.purge_if_unused(ino)
        except CosfsError as exc:
            # the object is stored and named: what it replaced has no name any more
            # and goes at the next purge (at worst the next mount)
            log.warning("the inodes replaced by a new object stay until the next purge: %s",
                        exc)
        return self.catalog.get_inode(draft.ino)

    async def _commit_and_publish(self, draft, bucket_ino, segments, xattrs, etag):
        """Commit the draft and give it its key in one transaction. Returns the Inode."""
        rows = []
        await draft.commit(then=lambda: rows.append(self._name_rows(
            bucket_ino, segments, draft, xattrs, etag)))
        return self._published(draft, rows[0])

    # -- buckets ----------------------------------------------------------------------
    def list_buckets(self) -> List[BucketInfo]:
        return [BucketInfo(name, region, self.catalog.bucket_created_ns(ino) or 0)
                for ino, name, region in self.catalog.buckets()]

    def usage(self) -> dict:
        """{bucket name: {stored encryption (``AES256``, ``SM4``, ``cos/kms`` or None):
        (objects, bytes)}} of every bucket's current objects (one scan of the catalog, on
        this thread: see :meth:`usage_apart`)."""
        return self._usage_by_bucket(self.catalog.usage_by_encryption())

    async def usage_apart(self) -> dict:
        """:meth:`usage`, scanned in a worker thread through a catalog connection of its
        own (it sees the last commit): the file system keeps answering meanwhile. Also
        kept as :attr:`last_usage`."""
        rows = await trio.to_thread.run_sync(
            functools.partial(self.catalog.usage_by_encryption, apart=True))
        self.last_usage = self._usage_by_bucket(rows)
        return self.last_usage

    def _usage_by_bucket(self, rows):
        names_ = {ino: name for ino, name, _ in self.catalog.buckets()}
        found = {name: {} for name in names_.values()}
        for bino, label, count, nbytes in rows:
            if bino in names_:
                per = found[names_[bino]]
                old = per.get(label, (0, 0))
                per[label] = (old[0] + count, old[1] + nbytes)
        return found

    def bucket(self, name) -> BucketInfo:
        ino = self._bucket_ino(name)
        _, bname, region = self.catalog.bucket_by_inode(ino)
        return BucketInfo(bname, region, self.catalog.bucket_created_ns(ino) or 0)

    async def create_bucket(self, name, region) -> BucketInfo:
        """COS naming rules (InvalidBucketName, BucketNameTooLong); a region this store does
        not serve is InvalidRegionName; an existing bucket BucketAlreadyOwnedByYou (every
        bucket of a store belongs to its one account)."""
        names.validate_bucket_name(name, None, self.fs.appid)
        try:
            names.validate_region(region)
        except InvalidArgument as exc:
            raise InvalidRegionName(str(exc)) from None
        if region not in self.fs.regions:
            raise InvalidRegionName("region %s is not served by this store (configured: %s)"
                                    % (region, ", ".join(self.fs.regions)))
        if self.catalog.bucket_by_name(name) is not None:
            raise BucketAlreadyOwnedByYou("bucket %s already exists" % name)
        self.fs.create_bucket(name, region=region, uid=self.uid, gid=self.gid)
        self._changed(ROOT_INODE, name.encode())
        return self.bucket(name)

    async def delete_bucket(self, name):
        """BucketNotEmpty while it holds anything, multipart uploads in progress included."""
        ino = self._bucket_ino(name)
        if self.catalog.has_uploads(ino):
            raise BucketNotEmpty("bucket %s has multipart uploads in progress: abort them first"
                                 % name)
        await self.fs.rmdir(ROOT_INODE, name.encode())
        self._changed(ROOT_INODE, name.encode())

    def get_bucket_encryption(self, name) -> bytes:
        return self.fs.get_bucket_encryption(self._bucket_ino(name))

    async def put_bucket_encryption(self, name, xml):
        """The ``ServerSideEncryptionConfiguration`` document (a bare algorithm word, which
        the xattr accepts, is MalformedXML here)."""
        ino = self._bucket_ino(name)
        if not isinstance(xml, (bytes, bytearray)) or \
                not bytes(xml).lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"<"):
            raise MalformedXML("expected a ServerSideEncryptionConfiguration document")
        self.fs.put_bucket_encryption(ino, bytes(xml))

    async def delete_bucket_encryption(self, name):
        """No error when there is none (COS answers 204 either way)."""
        self.fs.delete_bucket_encryption(self._bucket_ino(name))

    def get_bucket_origin(self, name) -> bytes:
        return self.fs.get_bucket_origin(self._bucket_ino(name))

    async def put_bucket_origin(self, name, xml):
        self.fs.put_bucket_origin(self._bucket_ino(name), bytes(xml))

    async def delete_bucket_origin(self, name):
        """No error when there is none."""
        self.fs.delete_bucket_origin(self._bucket_ino(name))

    # -- bucket inventory (documents and rules: cosfs.inventoryconf, FileSystem) -------------
    def get_bucket_inventory(self, name, inventory_id) -> bytes:
        return self.fs.get_bucket_inventory(self._bucket_ino(name), _inventory_id(inventory_id))

    async def put_bucket_inventory(self, name, inventory_id, xml):
        self.fs.put_bucket_inventory(self._bucket_ino(name), _inventory_id(inventory_id),
                                     bytes(xml))

    async def delete_bucket_inventory(self, name, inventory_id):
        """No error when there is none (COS answers 204 either way)."""
        self.fs.delete_bucket_inventory(self._bucket_ino(name), _inventory_id(inventory_id))

    def list_bucket_inventory(self, name, *, token=None, page=100) -> bytes:
        """One page of ``ListInventoryConfigurationResult`` (``page`` configurations in id
        order); its NextContinuationToken, when truncated, is the last id listed."""
        from .inventoryconf import render_list
        configs = self.fs.list_bucket_inventory(self._bucket_ino(name), after=token or None,
                                                limit=page + 1)
        more = len(configs) > page
        configs = configs[:page]
        return render_list(configs, token=token,
                           next_token=configs[-1].id if more and configs else None)

    def bucket_inventories(self, name) -> list:
        """[(id, document bytes)] of every inventory of the bucket, in id order."""
        ino = self._bucket_ino(name)
        return [(cfg.id, self.fs.get_bucket_inventory(ino, cfg.id))
                for cfg in self.fs.list_bucket_inventory(ino)]

    def inventory_status(self, name, inventory_id):
        """The last delivery of an inventory as a dict (``state``, ``period``,
        ``started_ns``, ``finished_ns``, ``manifest``... as the ``-status.`` xattr
        shows it), or None when it was never delivered."""
        ino = self._bucket_ino(name)
        if self.catalog.inventory_delivery(ino, _inventory_id(inventory_id)) is None:
            return None
        return json.loads(self.fs.inventory_status(ino, inventory_id))

    async def post_bucket_inventory(self, name, inventory_id, xml) -> str:
        """A one-off report, delivered before this returns; returns its job id."""
        return await self.fs.post_bucket_inventory(self._bucket_ino(name),
                                                   _inventory_id(inventory_id), bytes(xml))

    async def _pull(self, bucket, key):
        """Origin pull of a missing ``key`` (``fs.on_miss``): True when it was stored."""
        if self.fs.on_miss is None or not isinstance(key, str) or key.endswith("/"):
            return False
        bino = self._bucket_ino(bucket)
        split_key(key)  # a key the tree cannot hold is never fetched
        return await self.fs.on_miss(bino, key.encode("utf-8"), folders=False)

    # -- listing ----------------------------------------------------------------------
    def list_objects(self, bucket, *, prefix="", delimiter=None, marker=None,
                     max_keys=MAX_KEYS) -> Listing:
        """Keys in UTF-8 binary order: those starting with ``prefix`` and after ``marker``
        (exclusive), at most ``max_keys`` (0..1000; more is 1000) keys and common prefixes
        together. With ``delimiter`` (any non-empty string), keys holding it after the
        prefix roll up into a common prefix (up to and including it), listed once; a
        common prefix not after the marker was listed before and is skipped, so
        ``next_marker`` (the last key or prefix returned, set when truncated) pages on.
        ``max_keys`` 0 lists nothing and is never truncated. ETags not known yet are ""
        (:meth:`fill_etags`). Walks the tree lazily from the seek position; no await."""
        bino = self._bucket_ino(bucket)
        max_keys, pre, delim = _listing_args(max_keys, prefix, delimiter)
        mark = _utf8(marker, "marker") if marker else None
        listing = Listing([], [], False, None)
        if max_keys == 0:
            return listing
        bound = max(mark, pre) if mark is not None else pre

        def roll(dir_key):
            """What a directory's subtree is for this listing: one common prefix, or
            None to descend, or the directory's key itself when it is past the prefix."""
            if dir_key.startswith(pre):
                if delim:
                    i = dir_key.find(delim, len(pre))
                    if i >= 0:
                        return dir_key[:i + len(delim)]
                return None
            return None if pre.startswith(dir_key) else dir_key

        batch = max(16, min(MAX_KEYS, max_keys + 1))
        count = 0
        last_prefix = None
        for key, inode, is_prefix in self._walk(bino, b"", bound, roll, batch):
            if not key.startswith(pre):
                break
            if mark is not None and key <= mark:
                continue
            if not is_prefix and delim:
                i = key.find(delim, len(pre))
                if i >= 0:
                    key, is_prefix = key[:i + len(delim)], True
                    if mark is not None and key <= mark:
                        continue
            if is_prefix and key == last_prefix:
                continue
            if count == max_keys:
                listing.is_truncated = True
                break
            text = key.decode("utf-8", "surrogateescape")
            if is_prefix:
                listing.common_prefixes.append(text)
                last_prefix = key
            else:
                listing.contents.append(self._info(inode, text, inode.etag or "",
                                                   marker=inode.is_dir, metadata=False))
            listing.next_marker = text
            count += 1
        if not listing.is_truncated:
            listing.next_marker = None
        return listing

    def scan_objects(self, bucket, *, after=None, limit=MAX_KEYS):
        """One page of a full scan: [(key, Inode)] of up to ``limit`` objects (and empty
        ``dir/`` markers, whose Inode is the directory) with keys after ``after``, in key
        order. For services that walk a whole bucket in bounded memory (inventory): page
        on with the last key; no await, so a page is consistent, and changes between
        pages are seen or not (as in COS listings)."""
        bino = self._bucket_ino(bucket)
        mark = _utf8(after, "marker") if after else None
        out = []
        for key, inode, _ in self._walk(bino, b"", mark or b"", lambda _key: None,
                                        max(16, min(MAX_KEYS, limit + 1))):
            if mark is not None and key <= mark:
                continue
            if len(out) == limit:
                break
            out.append((key.decode("utf-8", "surrogateescape"), inode))
        return out

    def _walk(self, dir_ino, base, bound, roll, batch):
        """Yield (key, Inode, False) for every object below a directory whose key (``base``
        + relative key) is >= ``base + bound``, in key order; (prefix, None, True) where
        ``roll`` folds a whole subdirectory into one common prefix.

        Key order is not name order: a directory ``d`` sorts as ``d/``, after ``d-x``
        and ``d.x``. Entries arrive in name order and wait in a heap until no later
        name can sort before them; directories whose name is a proper prefix of the
        bound's first segment are looked up first, so the scan can start at it.
        """
        cat = self.catalog
        heap = []
        after = None
        if bound:
            first = bound.split(b"/", 1)[0]
            for i in range(1, len(first)):
                if first[i] < _SLASH:  # "a" as "a/" sorts after "a-b": still in range
                    ino = cat.lookup(dir_ino, first[:i])
                    if ino is not None:
                        inode = cat.get_inode(ino)
                        if inode.is_dir:
                            heapq.heappush(heap, (first[:i] + b"/", first[:i], inode))
            ino = cat.lookup(dir_ino, first)
            if ino is not None:
                inode = cat.get_inode(ino)
                heapq.heappush(heap, (first + b"/" if inode.is_dir else first, first, inode))
            after = first
        elif base:
            if not cat.has_children(dir_ino):
                yield base, cat.get_inode(dir_ino), False  # an empty directory: its marker
                return
        while True:
            rows = cat.list_dir(dir_ino, after=after, limit=batch)
            for name, inode in rows:
                while heap and heap[0][0] < name:
                    yield from self._entry(heapq.heappop(heap), base, bound, roll, batch)
                heapq.heappush(heap, (name + b"/" if inode.is_dir else name, name, inode))
            if len(rows) < batch:
                break
            after = rows[-1][0]
        while heap:
            yield from self._entry(heapq.heappop(heap), base, bound, roll, batch)

    def _entry(self, item, base, bound, roll, batch):
        skey, name, inode = item
        if not inode.is_dir:
            if inode.is_reg and skey >= bound:
                yield base + skey, inode, False
            return
        if bound.startswith(skey):
            sub = bound[len(skey):]
        elif skey > bound:
            sub = b""
        else:
            return
        key = base + skey
        folded = roll(key)
        if folded is not None:
            yield folded, None, True
        else:
            yield from self._walk(inode.id, key, sub, roll, batch)

    async def fill_etags(self, bucket, listing) -> Listing:
        """The listing with every ETag filled in (computing the MD5 of objects written on
        the mount that nobody asked for yet; it is cached from then on)."""
        bino = self._bucket_ino(bucket)
        for i, info in enumerate(listing.contents):
            if info.etag or info.is_dir_marker:
                continue
            segments, _ = split_key(info.key)
            _, inode = self._find(bino, segments)
            if inode is None or not inode.is_reg:
                continue
            etag = await self.objects.etag(inode.id)
            listing.contents[i] = ObjectInfo(info.key, info.size, info.mtime_ns, etag, info.sse,
                                             info.kms_key_id, info.headers, info.meta, False)
        return listing

    # -- objects ------------------------------------------------------------------------
    async def head_object(self, bucket, key, *, pull=False) -> ObjectInfo:
        """``pull``: a missing key matching an origin rule is fetched first (origin pull)."""
        if pull:
            await self._object_or_pull(bucket, key)
        inode, marker = self._object(bucket, key)
        if marker:
            return self._info(inode, key, EMPTY_MD5, marker=True)
        etag = await self.objects.etag(inode.id)
        return self._info(self.objects.overlay(self.catalog.get_inode(inode.id)), key, etag)

    async def _object_or_pull(self, bucket, key):
        try:
            self._object(bucket, key)
        except NoSuchKey:
            await self._pull(bucket, key)

    async def open_object(self, bucket, key, *, pull=False) -> ObjectReader:
        """An :class:`ObjectReader` of the object's current version (NoSuchKey); ``pull``
        as for :meth:`head_object`."""
        if pull:
            await self._object_or_pull(bucket, key)
        inode, marker = self._object(bucket, key)
        if marker:
            return ObjectReader(self, None, self._info(inode, key, EMPTY_MD5, marker=True))
        ino = inode.id
        self._hold(ino)
        try:
            etag = await self.objects.etag(ino)
            info = self._info(self.objects.overlay(self.catalog.get_inode(ino)), key, etag)
        except BaseException:
            self._unhold(ino)
            raise
        return ObjectReader(self, ino, info)

    async def put_object(self, bucket, key, body, *, sse=None, kms_key_id=None, meta=None,
                         headers=None, content_md5=None,
                         writer=WriterKind.NORMAL,
                         inventory_encryption=None) -> ObjectInfo:
        """Store ``body`` (async iterable of bytes, or bytes) under ``key``, replacing any
        object there atomically. ``sse``: the object's explicit request, as the
        ``user.cos.server-side-encryption`` xattr (None: the bucket default applies).
        ``content_md5``: the 16 raw bytes; a mismatch is BadDigest and stores nothing.
        A ``dir/`` key creates the directory (its body must be empty).
        ``writer`` ORIGIN_PULL: the resolver's rule for pulled objects (the bucket
        default), and an object that appeared at the key meanwhile is kept: the pulled
        one is dropped and the existing one described.
        ``writer`` INVENTORY with ``inventory_encryption`` (the inventory's own
        EncryptionSpec, or None): the resolver's rule for inventory reports (that
        encryption, else the bucket default)."""
        bino = self._bucket_ino(bucket)
        segments, is_dir = split_key(key)
        request = _request_of(sse, kms_key_id)
        xattrs = metadata_xattrs(meta, headers)
        _check_digest(content_md5)
        if is_dir:
            async for _ in _pieces(body):
                raise InvalidArgument("%s ends in '/': it is a directory and holds no data"
                                      % names.short(key))
            if content_md5 is not None and content_md5 != hashlib.md5(b"").digest():
                raise BadDigest("the Content-MD5 does not match the (empty) body")
            return self._put_dir(bino, segments, key, xattrs)
        self._check_place(bino, segments)
        spec = _RESOLVE
        if writer is not WriterKind.NORMAL:
            spec = self.objects.decide(bino, writer=writer,
                                       inventory_encryption=inventory_encryption)
        async with self._draft(bino, request, spec) as draft:
            await draft.write_all(_pieces(body))
            digest = draft.md5.digest()
            if content_md5 is not None and digest != content_md5:
                raise BadDigest("the Content-MD5 you specified did not match what we received")
            if writer is WriterKind.ORIGIN_PULL:
                await draft.commit()
                if self._find(bino, segments)[1] is not None:
                    return await self.head_object(bucket, key)  # written meanwhile: it wins
                inode = self._publish(bino, segments, draft, xattrs, digest.hex())
            else:
                inode = await self._commit_and_publish(draft, bino, segments, xattrs,
                                                       digest.hex())
        await self._durable()
        log.debug("put %s/%s: %d bytes, %s", bucket, key, inode.size, inode.enc or "plain")
        return self._info(inode, key, inode.etag)

    def _put_dir(self, bino, segments, key, xattrs):
        with self.catalog.transaction():
            ino = self._make_dirs(bino, segments, now_ns())
            self.catalog.set_implied(ino, False)  # a dir/ object: it stays when emptied
            if xattrs:
                self._replace_metadata(ino, xattrs)
        return self._info(self.catalog.get_inode(ino), key, EMPTY_MD5, marker=True)

    async def delete_object(self, bucket, key, *, version_id=None):
        """Remove an object; nothing happens when there is none (S3). A ``dir/`` key removes
        an empty directory (a directory that holds objects has no marker to remove).

        In a versioned bucket a delete leaves a delete marker (also when the key has no
        current object) and the content stays as a noncurrent version; ``version_id``
        deletes that version for good (the newest remaining version then becomes
        current, as in COS). Returns (version id, is a delete marker) for the response
        headers, or (None, False) in a bucket without versioning."""
        bino = self._bucket_ino(bucket)
        segments, is_dir = split_key(key)
        vs = self.objects.versions
        if version_id is not None and not is_dir:
            return self._delete_version(bino, segments, version_id)
        parent, inode = self._find(bino, segments)
        if not is_dir and vs.versioned(bino) and (inode is None or inode.is_reg):
            if inode is None:
                with self.catalog.transaction():
                    vid = vs.removed(bino, b"/".join(segments), None)
                vs.flush()
                return version_label(vid), True
        if inode is None:
            return None, False
        cat = self.catalog
        marker = None
        t = now_ns()
        if is_dir:
            if not inode.is_dir or cat.has_children(inode.id):
                return None, False
            pinode = cat.get_inode(parent)
            with cat.transaction():
                cat.remove_dentry(parent, segments[-1])
                cat.update_inode(inode.id, nlink=0, ctime_ns=t)
                cat.update_inode(parent, nlink=pinode.nlink - 1, mtime_ns=t, ctime_ns=t)
                self._prune(parent, t)
        else:
            if not inode.is_reg:
                return None, False
            with cat.transaction():
                if vs.versioned(bino):
                    marker = vs.removed(bino, b"/".join(segments), inode)
                cat.remove_dentry(parent, segments[-1])
                cat.update_inode(inode.id, nlink=inode.nlink - 1, ctime_ns=t)
                cat.update_inode(parent, mtime_ns=t, ctime_ns=t)
                self._prune(parent, t)
            vs.flush()
        self._changed(parent, segments[-1])
        self.fs.purge_if_unused(inode.id)
        self._purge_pruned()
        if vs.versioned(bino) and not is_dir:
            return version_label(marker), True
        return None, False

    # -- replicas (cosfs.services.replication) -------------------------------------------
    async def put_replica(self, bucket, key, pieces, spec, version_id, xattrs):
        """Store a replica under ``key``: content from the async iterator ``pieces``,
        sealed with ``spec`` (the resolver's REPLICA answer), the source's
        ``version_id`` (COS label) and metadata xattrs, status REPLICA. A replica of the
        same version replaces the earlier copy instead of keeping it; one that is already
        a noncurrent version of the key is not copied again (returns None). Returns
        ObjectInfo."""
        bino = self._bucket_ino(bucket)
        segments, is_dir = split_key(key)
        if is_dir:
            raise InvalidArgument("%s is a directory key" % names.short(key))
        self._check_place(bino, segments)
        vid = None if version_id == "null" else version_id
        if any(row[1] == vid for row in self.catalog.versions_of(bino, b"/".join(segments))):
            return None  # copied before, and newer versions came since: nothing to do
        async with self._draft(bino, None, spec) as draft:
            await draft.write_all(pieces)
            await draft.commit()
            inode = self._publish(bino, segments, draft, xattrs, draft.md5.hexdigest(),
                                  replica=True, replica_vid=vid)
        await self._durable()
        return self._info(inode, key, inode.etag)

    def delete_replica(self, bucket, key, version_id):
        """Replicate a delete marker: ``key`` gets a marker with the source's id."""
        bino = self._bucket_ino(bucket)
        segments, _ = split_key(key)
        vs = self.objects.versions
        vid = None if version_id == "null" else version_id
        if any(row[1] == vid and row[2] is None
               for row in self.catalog.versions_of(bino, b"/".join(segments))):
            return  # replicated before (a crash came before the task was done)
        parent, inode = self._find(bino, segments)
        if inode is not None and not inode.is_reg:
            inode = None
        t = now_ns()
        with self.catalog.transaction():
            vs.removed(bino, b"/".join(segments), inode, replica=True, version_id=vid)
            if inode is not None:
                self.catalog.remove_dentry(parent, segments[-1])
                self.catalog.update_inode(inode.id, nlink=inode.nlink - 1, ctime_ns=t)
                self.catalog.update_inode(parent, mtime_ns=t, ctime_ns=t)
        vs.flush()
        if inode is not None:
            self._changed(parent, segments[-1])
            self.fs.purge_if_unused(inode.id)

    def has_object(self, bucket_ino, key: bytes) -> bool:
        """True if ``key`` (UTF-8 bytes) has a current object in the bucket."""
        segments, is_dir = split_key(key.decode("utf-8", "surrogateescape"))
        inode = self._find(bucket_ino, segments)[1]
        return inode is not None and (inode.is_reg or is_dir and inode.is_dir)

    def metadata_of(self, ino):
        """The metadata xattrs of an object, as (name, value) pairs to copy."""
        return [(n, self.catalog.get_xattr(ino, n))
                for n in self.catalog.list_xattrs(ino) if _metadata_field(n)]

    # -- versions -----------------------------------------------------------------------
    def get_bucket_versioning(self, bucket) -> bytes:
        return self.objects.versions.get_versioning(self._bucket_ino(bucket))

    def put_bucket_versioning(self, bucket, doc):
        self.objects.versions.put_versioning(self._bucket_ino(bucket), doc)

    def get_bucket_replication(self, bucket) -> bytes:
        return self.objects.versions.get_replication(self._bucket_ino(bucket))

    def put_bucket_replication(self, bucket, doc):
        self.objects.versions.put_replication(self._bucket_ino(bucket), doc)

    def delete_bucket_replication(self, bucket):
        self.objects.versions.delete_replication(self._bucket_ino(bucket))

    def replication_status(self, bucket) -> dict:
        """The bucket's replication figures: ``queued_for_bucket`` (tasks of its versions
        waiting), ``versions`` ({PENDING, COMPLETED, FAILED, REPLICA: count of its
        versions}), and the daemon's replicator's ``status()`` under ``service`` (None
        when no replicator runs, e.g. on an unmounted store)."""
        ino = self._bucket_ino(bucket)
        replication = getattr(self.fs, "replication", None)
        return {"queued_for_bucket": self.catalog.replication_queue_length(ino),
                "versions": self.catalog.replication_status_counts(ino),
                "service": replication.status() if replication is not None else None}

    def _find_version(self, bino, segments, version_id):
        """(Inode of the content or None for a delete marker, parent when it is the current
        object else None, versions row seq or None). Raises NoSuchVersion."""
        if not isinstance(version_id, str) or not version_id:
            raise InvalidArgument("invalid version id")
        vid = None if version_id == "null" else version_id
        parent, inode = self._find(bino, segments)
        if inode is not None and inode.is_reg and inode.version_id == vid:
            return inode, parent, None
        for seq, row_vid, holder, _ in self.catalog.versions_of(bino, b"/".join(segments)):
            if row_vid == vid:
                return (None if holder is None else self.catalog.get_inode(holder)), None, seq
        raise NoSuchVersion("The specified version does not exist: %s"
                            % names.short(version_id))

    def _delete_version(self, bino, segments, version_id):
        vs = self.objects.versions
        cat = self.catalog
        key = b"/".join(segments)
        inode, parent, seq = self._find_version(bino, segments, version_id)
        t = now_ns()
        with cat.transaction():
            if parent is not None:
                cat.remove_dentry(parent, segments[-1])
                cat.update_inode(inode.id, nlink=inode.nlink - 1, ctime_ns=t)
                cat.update_inode(parent, mtime_ns=t, ctime_ns=t)
            else:
                vs.drop(seq)
            promoted = self._promote(bino, segments, t)
            if parent is not None and promoted is None:
                self._prune(parent, t)
        vs.flush()
        self._purge_pruned()
        if parent is not None or promoted is not None:
            self._changed(parent if parent is not None else promoted, segments[-1])
        if parent is not None:
            self.fs.purge_if_unused(inode.id)
        return version_id, inode is None

    def _promote(self, bino, segments, t):
        """After a version was deleted for good: when the key has no current object and its
        newest remaining version is content (not a delete marker), that version becomes
        the current object. Returns the parent directory it was placed in, or None."""
        cat = self.catalog
        if self._find(bino, segments)[1] is not None:
            return None
        rows = cat.versions_of(bino, b"/".join(segments))
        if not rows or rows[-1][2] is None:
            return None
        try:
            self._check_place(bino, segments)
            parent = self._make_dirs(bino, segments[:-1], t)
        except KeyConflict:
            return None  # the path is a directory now: the version stays noncurrent
        seq, _, holder, _ = rows[-1]
        cat.drop_version(seq)
        cat.set_dentry(parent, segments[-1], holder)
        cat.update_inode(parent, mtime_ns=t, ctime_ns=t)
        return parent

    async def head_version(self, bucket, key, version_id) -> ObjectInfo:
        """HEAD of one version (MethodNotAllowed for a delete marker, as COS answers)."""
        reader = await self.open_version(bucket, key, version_id)
        await reader.aclose()
        return reader.info

    async def open_version(self, bucket, key, version_id, *, snapshot=False) -> ObjectReader:
        """An :class:`ObjectReader` of one version of ``key`` (current or noncurrent).

        ``snapshot``: when it is the current object, read a nameless copy of its
        committed state taken now (writes on the mount that follow, and buffers not
        committed yet, are not seen: what a replica must be). The copy shares the
        object's blobs and goes when the reader is closed (or at the next mount)."""
        bino = self._bucket_ino(bucket)
        segments, is_dir = split_key(key)
        if is_dir:
            return await self.open_object(bucket, key)
        inode, parent, _ = self._find_version(bino, segments, version_id)
        if inode is None:
            raise CosfsError("The specified version is a delete marker",
                             code="MethodNotAllowed", errno=errno.ENOENT)
        if snapshot and parent is not None:
            with self.catalog.transaction():
                inode = self.catalog.get_inode(self.catalog.clone_inode(inode.id, nlink=0))
        ino = inode.id
        self._hold(ino)
        try:
            etag = await self.objects.etag(ino)
            info = self._info(self.objects.overlay(self.catalog.get_inode(ino)), key, etag)
            if info.version_id is None:
                info = dataclasses.replace(info, version_id=version_label(inode.version_id))
        except BaseException:
            self._unhold(ino)
            raise
        return ObjectReader(self, ino, info)

    def list_object_versions(self, bucket, *, prefix="", delimiter=None, key_marker=None,
                             version_id_marker=None, max_keys=MAX_KEYS) -> VersionListing:
        """Every version and delete marker of the keys starting with ``prefix``: keys in
        UTF-8 binary order, each key's versions newest first (the current one with
        ``is_latest``). Pages on after (``key_marker``, ``version_id_marker``); without a
        version id marker, after every version of ``key_marker``. ``delimiter`` rolls keys
        up into common prefixes as :meth:`list_objects` does. ETags not known yet are
        ""; no await."""
        bino = self._bucket_ino(bucket)
        max_keys, pre, delim = _listing_args(max_keys, prefix, delimiter)
        kmark = _utf8(key_marker, "key-marker") if key_marker else None
        out = VersionListing([], [], False, None, None)
        if max_keys == 0:
            return out
        start = kmark if kmark is not None and kmark > pre else pre

        def current():
            # current objects and (with a delimiter) rolled-up prefixes, in key order
            marker = None if start == pre else start.decode("utf-8", "surrogateescape")
            while True:
                page = self.list_objects(bucket, prefix=prefix, delimiter=delimiter,
                                         marker=marker, max_keys=MAX_KEYS)
                items = [(c.encode("utf-8", "surrogateescape"), None)
                         for c in page.common_prefixes]
                items += [(i.key.encode("utf-8", "surrogateescape"), i) for i in page.contents]
                items.sort(key=lambda x: x[0])
                yield from items
                if not page.is_truncated:
                    return
                marker = page.next_marker

        def row_stream():
            # the marker key itself may still have versions to list: start at it
            after = (start, -1)
            while True:
                rows = self.catalog.version_rows(bino, prefix=pre, after=after, limit=500)
                yield from rows
                if len(rows) < 500:
                    return
                after = (rows[-1][0], rows[-1][1])

        def noncurrent():
            for key, group in itertools.groupby(row_stream(), key=lambda r: r[0]):
                yield _rolled(key), list(group)

        def _rolled(key):
            if delim:
                i = key.find(delim, len(pre))
                if i >= 0:
                    return key[:i + len(delim)]
            return key

        # merge: for each key (or common prefix), its current object and its rows
        entries = {}
        order = []
        count = 0
        seen_prefixes = set()
        skip_until = version_id_marker if kmark is not None else None
        cur_it = current()
        rows_it = noncurrent()
        cur = next(cur_it, None)
        rows = next(rows_it, None)
        while cur is not None or rows is not None:
            key = min(k for k in (cur and cur[0], rows and rows[0]) if k is not None)
            info = None
            group = []
            is_prefix = False
            if cur is not None and cur[0] == key:
                info = cur[1]
                is_prefix = info is None
                cur = next(cur_it, None)
            if rows is not None and rows[0] == key:
                group = rows[1]
                is_prefix = is_prefix or group[0][0] != key
                rows = next(rows_it, None)
            if is_prefix:
                if key in seen_prefixes or (kmark is not None and key <= kmark):
                    continue
                if count == max_keys:
                    out.is_truncated = True
                    break
                seen_prefixes.add(key)
                out.common_prefixes.append(key.decode("utf-8", "surrogateescape"))
                out.next_key_marker, out.next_version_id_marker = out.common_prefixes[-1], None
                count += 1
                continue
            text = key.decode("utf-8", "surrogateescape")
            items = []
            if info is not None:
                items.append(VersionInfo(text, info.version_id or "null", True, False,
                                         info.size, info.mtime_ns, info.etag, info.sse))
            has_current = info is not None
            if not has_current and key == kmark:
                # the marker key's current object was listed on an earlier page
                found = self._find(bino, split_key(text)[0])[1]
                has_current = found is not None and found.is_reg
            for _, seq, vid, holder, mtime in reversed(group):
                latest = not has_current and not items
                if holder is None:
                    items.append(VersionInfo(text, version_label(vid), latest, True, 0, mtime,
                                             "", None))
                else:
                    h = self.catalog.get_inode(holder)
                    items.append(VersionInfo(text, version_label(vid), latest, False, h.size,
                                             h.mtime_ns, h.etag or "", h.enc))
            if kmark is not None and key == kmark:
                if not skip_until:
                    continue
                ids = [v.version_id for v in items]
                if skip_until in ids:
                    items = items[ids.index(skip_until) + 1:]
            elif kmark is not None and key < kmark:
                continue
            for v in items:
                if count == max_keys:
                    out.is_truncated = True
                    break
                out.versions.append(v)
                out.next_key_marker, out.next_version_id_marker = v.key, v.version_id
                count += 1
            if out.is_truncated:
                break
        if not out.is_truncated:
            out.next_key_marker = out.next_version_id_marker = None
        return out

    async def fill_version_etags(self, bucket, listing) -> VersionListing:
        """The versions listing with every ETag of content filled in (see fill_etags)."""
        bino = self._bucket_ino(bucket)
        for i, v in enumerate(listing.versions):
            if v.etag or v.is_delete_marker:
                continue
            segments, _ = split_key(v.key)
            inode, _, _ = self._find_version(bino, segments, v.version_id)
            if inode is not None:
                etag = await self.objects.etag(inode.id)
                listing.versions[i] = dataclasses.replace(v, etag=etag)
        return listing

    async def copy_object(self, src_bucket, src_key, dst_bucket, dst_key, *, sse=None,
                          kms_key_id=None, meta=None, headers=None,
                          replace_metadata=False, src_version_id=None) -> ObjectInfo:
        """PUT Object - Copy. The copy gets ``sse`` as its request, else the destination
        bucket's default (COS does not carry SSE over); metadata is the source's unless
        ``replace_metadata``. Onto itself: a new ``sse`` re-encrypts in place, without one
        the encryption stays (a metadata change never changes it); neither new metadata
        nor an ``sse`` is InvalidRequest."""
        request = _request_of(sse, kms_key_id)
        xattrs = metadata_xattrs(meta, headers) if replace_metadata else None
        if src_version_id is None:
            src, src_marker = self._object(src_bucket, src_key)
        else:
            # a version copied onto its own key is how a version is restored
            src_segments, _ = split_key(src_key)
            await self.head_version(src_bucket, src_key, src_version_id)  # not a marker
            src = self._find_version(self._bucket_ino(src_bucket), src_segments,
                                     src_version_id)[0]
            src_marker = False
        dbino = self._bucket_ino(dst_bucket)
        segments, dst_dir = split_key(dst_key)
        _, dst = self._find(dbino, segments)
        if dst is not None and dst.id == src.id:
            return await self._copy_onto_itself(dst_bucket, dst_key, src, request, xattrs)
        if xattrs is None:
            xattrs = [(n, self.catalog.get_xattr(src.id, n))
                      for n in self.catalog.list_xattrs(src.id) if _metadata_field(n)]
        if dst_dir:
            if src.size and not src_marker:
                raise InvalidArgument("%s ends in '/': it is a directory and holds no data"
                                      % names.short(dst_key))
            return self._put_dir(dbino, segments, dst_key, xattrs)
        self._check_place(dbino, segments)
        reader = await (self.open_object(src_bucket, src_key) if src_version_id is None
                        else self.open_version(src_bucket, src_key, src_version_id))
        try:
            async with self._draft(dbino, request) as draft:
                await draft.write_all(reader.pieces())
                inode = await self._commit_and_publish(draft, dbino, segments, xattrs,
                                                       draft.md5.hexdigest())
        finally:
            await reader.aclose()
        await self._durable()
        return self._info(inode, dst_key, inode.etag)

    async def _copy_onto_itself(self, bucket, key, inode, request, xattrs):
        if request is None and xattrs is None:
            raise InvalidRequest("copying an object onto itself must change its metadata "
                                 "(Replaced) or its server-side encryption")
        if request is not None:
            # the same re-encryption in place as setting the xattr
            await self.objects.rewrite(inode.id, request=request)
        if xattrs is not None:
            vs = self.objects.versions
            bino = inode.bucket
            with self.catalog.transaction():
                if request is None and vs.versioned(bino):
                    # COS: new metadata is a new version (the old one keeps its own)
                    path = b"/".join(split_key(key)[0])
                    vs.before_replace(bino, path, self.catalog.get_inode(inode.id))
                    vs.stamp(inode.id, bino, path)
                self._replace_metadata(inode.id, xattrs)
                self.catalog.update_inode(inode.id, ctime_ns=now_ns())
            vs.flush()
        return await self.head_object(bucket, key)

    # -- multipart uploads ----------------------------------------------------------------
    def _upload(self, bucket, key, upload_id):
        """(bucket inode, upload row) of an upload of this bucket and key (NoSuchUpload)."""
        bino = self._bucket_ino(bucket)
        row = self.catalog.get_upload(upload_id) if isinstance(upload_id, str) else None
        if row is None or row[1] != bino or row[2] != _utf8(key, "key"):
            raise NoSuchUpload("The specified upload does not exist: %s"
                               % names.short(upload_id))
        return bino, row

    def _drop_uploads(self, upload_ids):
        """Remove uploads with their parts (parts are deleted once nothing reads them)."""
        parts = []
        with self.catalog.transaction():
            for upload_id in upload_ids:
                for ino in self.catalog.delete_upload(upload_id):
                    self.catalog.update_inode(ino, nlink=0)
                    parts.append(ino)
        for ino in parts:
            self.fs.purge_if_unused(ino)
        if upload_ids:
            log.info("removed %d multipart upload(s) whose bucket is gone", len(upload_ids))

    async def create_upload(self, bucket, key, *, sse=None, kms_key_id=None, meta=None,
                            headers=None) -> str:
        """Initiate: the encryption is decided now (``sse``, else the bucket default now)
        and holds for every part and the final object. Returns the upload id."""
        bino = self._bucket_ino(bucket)
        segments, is_dir = split_key(key)
        if is_dir:
            raise InvalidArgument("%s ends in '/': a directory cannot be uploaded in parts"
                                  % names.short(key))
        request = _request_of(sse, kms_key_id)
        metadata_xattrs(meta, headers)  # refuse bad metadata now, not at Complete
        self._check_place(bino, segments)
        spec = self.objects.decide(
            bino, override=EncryptionSpec.from_stored_name(request) if request else None)
        label = None if spec is None else spec.stored_name
        t = now_ns()
        upload_id = "%016x%s" % (t, os.urandom(8).hex())  # sorts by initiation time
        doc = json.dumps({"meta": meta or {}, "headers": headers or {}}).encode()
        # The identity the parts are sealed under, which the object takes at Complete
        # (see _store_part): an empty inode recorded as the upload's part 0.
        object_id = os.urandom(16)
        crypt = self.objects.new_crypt(label, object_id)
        cat = self.catalog
        with cat.transaction():
            cat.add_upload(upload_id, bino, key.encode("utf-8"), t, request, label, doc)
            ident = cat.new_inode(mode=stat.S_IFREG | 0o600, uid=self.uid, gid=self.gid,
                                  nlink=1, bucket=bino, object_id=object_id,
                                  enc_request=request, t=t)
            cat.update_inode(ident.id, enc=label,
                             wrapped_key=None if crypt is None else crypt.wrapped)
            cat.set_upload_part(upload_id, 0, ident.id, "", 0, t)
        log.debug("upload %s of %s/%s initiated (%s)", upload_id, bucket, key, label or "plain")
        return upload_id

    def _check_part_number(self, part_number):
        if not isinstance(part_number, int) or not 1 <= part_number <= MAX_PART_NUMBER:
            raise InvalidArgument("part number must be from 1 to %d" % MAX_PART_NUMBER)

    def _identity(self, upload_id):
        """(object id, Crypt or None) that the parts of an upload are sealed under, or
        None for an upload initiated before uploads had one."""
        ino = self.catalog.upload_identity(upload_id)
        if ino is None:
            return None
        inode = self.catalog.get_inode(ino)
        return inode.object_id, self.objects.stored_crypt(inode)

    def _part_offset(self, upload_id, part_number, size_hint):
        """Where part ``part_number`` is expected to start in the final object: parts are
        written there (under the upload's identity), so that Complete can link their
        chunks into the object instead of sealing every byte again.

        Clients cut an object into parts of one size with a shorter last part; the size
        is the largest part seen so far or this part's declared length. A wrong guess
        (the short last part arriving first, parts of mixed sizes) costs only speed:
        Complete seals such a part again at its real place. Offsets that are not a
        multiple of the chunk size are never linked: those parts start at 0."""
        if size_hint is not None and not 0 <= size_hint <= MAX_PART_SIZE:
            size_hint = None  # not a part COS would take: no guess from it
        size = max(size_hint or 0, self.catalog.largest_part(upload_id))
        cs = self.objects.chunk_size
        if size <= 0 or size % cs or size > MAX_PART_SIZE:
            return 0
        return (part_number - 1) * size

    async def _store_part(self, bino, row, part_number, pieces, content_md5=None,
                          size_hint=None):
        upload_id = row[0]
        identity = self._identity(upload_id)
        offset = 0 if identity is None else self._part_offset(upload_id, part_number,
                                                               size_hint)
        async with self._draft(bino, None, _spec_of(row[5]), identity, offset) as draft:
            await draft.write_all(pieces)
            digest = draft.md5.digest()
            if content_md5 is not None and digest != content_md5:
                raise BadDigest("the Content-MD5 you specified did not match what we received")
            await draft.commit()
            t = now_ns()
            with self.catalog.transaction():
                if self.catalog.get_upload(upload_id) is None:
                    raise NoSuchUpload("upload %s was completed or aborted meanwhile" % upload_id)
                self.catalog.update_inode(draft.ino, nlink=1, etag=digest.hex())
                old = self.catalog.set_upload_part(upload_id, part_number, draft.ino,
                                                   digest.hex(), draft.size, t)
                if old is not None:
                    self.catalog.update_inode(old, nlink=0)
            draft.kept = True
        if old is not None:
            self.fs.purge_if_unused(old)
        await self._durable()
        return PartCopy(digest.hex(), t)

    async def upload_part(self, bucket, key, upload_id, part_number, body, *,
                          content_md5=None, size=None) -> str:
        """Store a part (sealed with the upload's encryption); a part uploaded again
        replaces the earlier one. ``size``: the part's announced length, when ``body``
        is a stream (a hint for where the part goes, see :meth:`_part_offset`).
        Returns its ETag (MD5 hex)."""
        self._check_part_number(part_number)
        _check_digest(content_md5)
        bino, row = self._upload(bucket, key, upload_id)
        if isinstance(body, (bytes, bytearray, memoryview)):
            size = len(body)
        part = await self._store_part(bino, row, part_number, _pieces(body), content_md5,
                                      size)
        return part.etag

    async def upload_part_copy(self, bucket, key, upload_id, part_number, src_bucket, src_key,
                               range_=None, *, range=None) -> PartCopy:
        """A part copied from an object; ``range`` (or ``range_``) is (start, end exclusive)
        within it, InvalidRange when it is not. Returns (etag, mtime_ns)."""
        self._check_part_number(part_number)
        rng = range if range is not None else range_
        bino, row = self._upload(bucket, key, upload_id)
        reader = await self.open_object(src_bucket, src_key)
        try:
            size = reader.info.size
            start, end = (0, size) if rng is None else rng
            if not 0 <= start <= end <= size or (start == end and rng is not None):
                raise InvalidRange("range %d-%d is not within the %d bytes of the source"
                                   % (start, end - 1, size))
            return await self._store_part(bino, row, part_number, reader.pieces(start, end),
                                          size_hint=end - start)
        finally:
            await reader.aclose()

    def list_parts(self, bucket, key, upload_id, *, marker=0, max_parts=1000) -> PartListing:
        """Parts numbered above ``marker``, at most ``max_parts`` (0..1000)."""
        self._upload(bucket, key, upload_id)
        max_parts = max(0, min(int(max_parts), 1000))
        rows = self.catalog.upload_parts(upload_id, after=int(marker or 0), limit=max_parts + 1)
        parts = [Part(n, etag, size, mtime) for n, _ino, etag, size, mtime in rows[:max_parts]]
        truncated = len(rows) > max_parts
        return PartListing(parts, truncated, parts[-1].number if truncated and parts else None)

    async def complete_upload(self, bucket, key, upload_id, parts) -> ObjectInfo:
        """Assemble ``parts`` [(number, etag)] (ascending: InvalidPartOrder; each uploaded
        with that ETag: InvalidPart; all but the last at least MIN_PART_SIZE:
        EntityTooSmall; none: MalformedXML) into the object, which replaces any object
        at the key atomically; the upload and all its parts are gone afterwards."""
        bino, row = self._upload(bucket, key, upload_id)
        segments, _ = split_key(key)
        if not parts:
            raise MalformedXML("a multipart upload completes with at least one part")
        stored = {n: (ino, etag, size) for n, ino, etag, size, _ in
                  self.catalog.upload_parts(upload_id)}  # numbers from 1: 0 is no part
        chosen = []
        for number, etag in parts:
            if chosen and number <= chosen[-1][0]:
                raise InvalidPartOrder("parts must be listed in ascending order of number")
            got = stored.get(number)
            if got is None or got[1] != _clean_etag(etag):
                raise InvalidPart("part %s was not uploaded or its ETag does not match"
                                  % number)
            chosen.append((number,) + got)
        for number, _ino, _etag, size in chosen[:-1]:
            if size < MIN_PART_SIZE:
                raise EntityTooSmall("part %d has %d bytes; every part but the last needs at "
                                     "least %d" % (number, size, MIN_PART_SIZE))
        self._check_place(bino, segments)
        etag = "%s-%d" % (hashlib.md5(b"".join(bytes.fromhex(c[2]) for c in chosen)).hexdigest(),
                          len(chosen))
        doc = json.loads(row[6])
        xattrs = metadata_xattrs(doc.get("meta"), doc.get("headers"))
        held = []
        try:
            for c in chosen:
                self._hold(c[1])
                held.append(c[1])
            identity = self._identity(upload_id)
            plan = None if identity is None else self._assembly(chosen, identity)
            if plan is None:
                # seal every byte again under a new identity, part after part
                linked = []
                draft_cm = self._draft(bino, row[4], _spec_of(row[5]))
                sealed_again = [(c[1], c[3], None) for c in chosen]
            else:
                linked, sealed_again, total = plan
                draft_cm = self._draft(bino, row[4], _spec_of(row[5]), identity)
            async with draft_cm as draft:
                for ino, size, offset in sealed_again:
                    if offset is not None:
                        draft.offset, draft.size = offset, 0
                    await draft.write_all(self._part_pieces(ino, size))
                if plan is not None:
                    await self.objects.truncate(draft.ino, total)  # the linked parts' room
                await draft.commit()
                if self.catalog.get_upload(upload_id) is None:
                    raise NoSuchUpload("upload %s was completed or aborted meanwhile" % upload_id)
                inode = self._publish(bino, segments, draft, xattrs, etag,
                                      finish_upload=upload_id, link=linked)
        finally:
            for ino in held:
                self._unhold(ino)
        await self._durable()
        log.debug("upload %s completed as %s/%s (%d parts, %d linked, %d bytes)", upload_id,
                  bucket, key, len(chosen), len(linked), inode.size)
        return self._info(inode, key, etag)

    def _assembly(self, chosen, identity):
        """How the parts ``chosen`` [(number, inode, etag, size)] become one object under
        the upload's ``identity`` without sealing them again: (parts whose chunks are
        linked as they are, [(part, size, offset)] sealed again at their offset, total
        size); None when the parts cannot share the identity's chunk grid (parts of
        different sizes, or a size that is not a multiple of the chunk size).

        A part is linked when it was written at its final offset (see
        :meth:`_part_offset`) under the same object id and data key."""
        cs = self.objects.chunk_size
        first = chosen[0][3]
        if len(chosen) > 1 and (first == 0 or first % cs):
            return None
        if any(c[3] != first for c in chosen[:-1]):
            return None
        object_id, crypt = identity
        linked, again = [], []
        for i, (_number, ino, _etag, size) in enumerate(chosen):
            offset = i * first
            inode = self.catalog.get_inode(ino)
            same = inode.object_id == object_id and inode.size - size == offset
            if same and crypt is not None:
                theirs = self.objects.stored_crypt(inode) if inode.enc == crypt.label else None
                same = theirs is not None and hmac.compare_digest(theirs.key, crypt.key)
            elif same:
                same = inode.enc is None
            (linked.append(ino) if same else again.append((ino, size, offset)))
        return linked, again, (len(chosen) - 1) * first + chosen[-1][3]

    async def _part_pieces(self, ino, size):
        """The ``size`` bytes of a part: it ends where its inode ends (it may have been
        written at its offset in the final object, see :meth:`_part_offset`)."""
        cs = self.objects.chunk_size
        end = self.catalog.get_inode(ino).size
        pos = end - size
        while pos < end:
            data = await self.objects.read(ino, pos, min(cs - pos % cs, end - pos))
            if not data:
                raise CosfsError("a part of the upload ended early (inode %d)" % ino)
            yield data
            pos += len(data)

    async def abort_upload(self, bucket, key, upload_id):
        self._upload(bucket, key, upload_id)
        self._drop_uploads([upload_id])

    def list_uploads(self, bucket, *, prefix="", delimiter=None, key_marker=None,
                     upload_id_marker=None, max_uploads=1000) -> UploadListing:
        """Uploads in progress by key (UTF-8 order), then initiation; after ``key_marker``
        (with ``upload_id_marker``: that key's uploads after that id count too); keys
        holding ``delimiter`` after the prefix roll up into common prefixes."""
        bino = self._bucket_ino(bucket)
        max_uploads = max(0, min(int(max_uploads), 1000))
        pre = _utf8(prefix or "", "prefix")
        delim = _utf8(delimiter, "delimiter") if delimiter else None
        mark = _utf8(key_marker, "key-marker") if key_marker else b""
        after = (mark, upload_id_marker or "~") if mark else (b"", "")
        uploads, prefixes = [], []
        truncated, more = False, True
        while more and not truncated:
            rows = self.catalog.list_uploads(bino, prefix=pre, after=after, limit=100)
            more = len(rows) == 100
            for key, upload_id, initiated in rows:
                i = key.find(delim, len(pre)) if delim else -1
                if i < 0:
                    after = (key, upload_id)
                    if len(uploads) + len(prefixes) == max_uploads:
                        truncated = True
                        break
                    uploads.append(Upload(key.decode("utf-8", "surrogateescape"), upload_id,
                                          initiated))
                    continue
                # a common prefix: listed once, then the scan goes on past all its keys
                cp = key[:i + len(delim)]
                after = (cp + b"\xff", "")  # no UTF-8 key reaches past this
                more = True
                if not (mark and cp <= mark):
                    if len(uploads) + len(prefixes) == max_uploads:
                        truncated = True
                        break
                    prefixes.append(cp.decode("utf-8", "surrogateescape"))
                break
        next_key = next_id = None
        if truncated:
            last_upload = uploads[-1] if uploads else None
            last_prefix = prefixes[-1] if prefixes else None
            if last_prefix is not None and (last_upload is None or
                                            last_prefix.encode() > last_upload.key.encode()):
                next_key = last_prefix
            elif last_upload is not None:
                next_key, next_id = last_upload.key, last_upload.upload_id
        return UploadListing(uploads, prefixes, truncated, next_key, next_id)
