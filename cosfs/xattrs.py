"""Extended attributes of the mount: user xattrs and the ``user.cos.`` conventions.

Real COS has request and response headers; cosfs maps them to xattrs
(docs/xattrs.md). :class:`XattrOps` is the part of
:class:`cosfs.filesystem.FileSystem` that answers the four xattr requests:
ordinary ``user.*`` names are stored in the catalog; ``user.cos.*`` names are
the object's encryption request and status, and a bucket's configuration;
other namespaces answer ENOTSUP.

Runs on the trio thread, like the rest of the filesystem layer.
"""

import errno
import json
import logging

from .catalog import ROOT_INODE, now_ns
from .errors import CosfsError, FsError, InvalidArgument, ReadOnlyAttribute
from .resolver import parse_override

log = logging.getLogger(__name__)

SSE_XATTR = b"user.cos.server-side-encryption"
BUCKET_ENC_XATTR = b"user.cos.bucket-encryption"
BUCKET_ORIGIN_XATTR = b"user.cos.bucket-origin"
BUCKET_VERSIONING_XATTR = b"user.cos.bucket-versioning"
BUCKET_REPLICATION_XATTR = b"user.cos.bucket-replication"
#: read-only JSON: the replication queue (cosfs bucket-replication --method status)
BUCKET_REPLICATION_STATUS_XATTR = b"user.cos.bucket-replication-status"
#: bucket inventory (docs/xattrs.md): ``<INVENTORY_XATTR>.<Id>`` is the configuration,
#: the bare name lists the ids, ``-post.<Id>`` runs a one-off report, ``-status.<Id>``
#: describes the last delivery
INVENTORY_XATTR = b"user.cos.bucket-inventory"
_INVENTORY_KINDS = (b".", b"-post.", b"-status.")


def inventory_xattr(name):
    """("", None) for the bare inventory xattr, (kind, id) for ``user.cos.bucket-inventory
    <kind><Id>`` (kind ``.``, ``-post.`` or ``-status.``), None for any other name."""
    if name == INVENTORY_XATTR:
        return "", None
    if name.startswith(INVENTORY_XATTR):
        rest = name[len(INVENTORY_XATTR):]
        for kind in _INVENTORY_KINDS:
            if rest.startswith(kind):
                return kind.decode(), rest[len(kind):].decode("utf-8", "replace")
    return None
STATUS_XATTRS = (b"user.cos.etag", b"user.cos.version-id", b"user.cos.replication-status")
BUCKET_RO_XATTRS = (b"user.cos.bucket-region", BUCKET_REPLICATION_STATUS_XATTR)
#: on the mount root: the daemon's status as JSON (``cosfs status``)
STATUS_XATTR = b"user.cos.status"
COS_PREFIX = b"user.cos."
XATTR_VALUE_MAX = 64 * 1024
XATTR_TOTAL_MAX = 256 * 1024
XATTR_LIST_MAX = 64 * 1024


class XattrOps:
    """Mixin of FileSystem: getxattr, setxattr, listxattr, removexattr."""

    @staticmethod
    def _namespace_ok(name):
        if not name.startswith(b"user."):
            raise FsError(errno.ENOTSUP, "only the user namespace is supported")
        if len(name) == 5:
            raise FsError(errno.EINVAL, "an xattr name needs more than its namespace")

    def _is_bucket(self, inode):
        return inode.is_dir and inode.bucket == inode.id

    async def getxattr(self, ino, name, ctx=None) -> bytes:
        self._namespace_ok(name)
        inode = self.catalog.get_inode(ino)
        if name.startswith(COS_PREFIX):
            return await self._get_cos_xattr(inode, name)
        value = self.catalog.get_xattr(ino, name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    async def _get_cos_xattr(self, inode, name):
        if inode.id == ROOT_INODE and name == b"user.cos.daemon-pid" and self.daemon_info:
            return str(self.daemon_info["pid"]).encode()
        if inode.id == ROOT_INODE and name == STATUS_XATTR and "status" in self.daemon_info:
            return self.daemon_info["status"]()
        if self._is_bucket(inode):
            if name == BUCKET_ENC_XATTR:
                return self.get_bucket_encryption(inode.id)
            if name == BUCKET_ORIGIN_XATTR:
                return self.get_bucket_origin(inode.id)
            inv = inventory_xattr(name)
            if inv is not None:
                if inv[0] == "":
                    return "".join(c.id + "\n" for c in self.list_bucket_inventory(inode.id)) \
                        .encode()
                if inv[0] == ".":
                    return self.get_bucket_inventory(inode.id, inv[1])
                if inv[0] == "-status.":
                    return self.inventory_status(inode.id, inv[1])
            if name == b"user.cos.bucket-region":
                return self.catalog.bucket_by_inode(inode.id)[2].encode()
            if name == BUCKET_VERSIONING_XATTR:
                # never enabled: the empty document, as GET Bucket versioning answers
                return self.versions.get_versioning(inode.id)
            if name == BUCKET_REPLICATION_XATTR:
                return self.versions.get_replication(inode.id)
            if name == BUCKET_REPLICATION_STATUS_XATTR:
                status = dict(self.replication.status()) if self.replication else {}
                status["queued_for_bucket"] = self.catalog.replication_queue_length(inode.id)
                return (json.dumps(status, sort_keys=True) + "\n").encode()
            raise FsError(errno.ENODATA)
        if not inode.is_reg:
            raise FsError(errno.ENODATA)
        if name == SSE_XATTR:
            if not inode.enc:
                raise FsError(errno.ENODATA)
            return inode.enc.encode()
        if name == b"user.cos.etag":
            return (await self.objects.etag(inode.id)).encode()
        if name == b"user.cos.version-id":
            return (inode.version_id or "null").encode()
        if name == b"user.cos.replication-status":
            status = self.catalog.replication_status(inode.id)
            if status is None:
                raise FsError(errno.ENODATA)
            return status.encode()
        raise FsError(errno.ENODATA)

    async def setxattr(self, ino, name, value, ctx=None):
        self._namespace_ok(name)
        inode = self.catalog.get_inode(ino)
        if name.startswith(COS_PREFIX):
            return await self._set_cos_xattr(inode, name, value)
        if len(value) > XATTR_VALUE_MAX:
            raise FsError(errno.E2BIG)
        old = self.catalog.get_xattr(ino, name)
        total = self.catalog.xattr_bytes(ino) - (0 if old is None else len(name) + len(old))
        if total + len(name) + len(value) > XATTR_TOTAL_MAX:
            raise FsError(errno.ENOSPC, "too many extended attributes on this object")
        if old is None:
            # listxattr answers at most 64 KiB of names (the kernel's XATTR_LIST_MAX): more
            # would make the object's xattrs unlistable (E2BIG) and uncopyable
            listed = sum(len(n) + 1 for n in self.catalog.list_xattrs(ino)) + len(SSE_XATTR) + 1
            if listed + len(name) + 1 > XATTR_LIST_MAX:
                raise FsError(errno.ENOSPC, "the names of this object's extended attributes "
                              "would not fit in one listing")
        with self.catalog.transaction():
            self.catalog.set_xattr(ino, name, value)
            self.catalog.update_inode(ino, ctime_ns=now_ns())

    async def _set_cos_xattr(self, inode, name, value):
        if self._is_bucket(inode) and name == BUCKET_ENC_XATTR:
            try:
                self.put_bucket_encryption(inode.id, value)
            except CosfsError as exc:
                log.warning("bucket %d: rejected encryption configuration: %s (%s)",
                            inode.id, exc, exc.code)
                raise
            return
        inv = inventory_xattr(name) if self._is_bucket(inode) else None
        if inv is not None and inv[0] == "-status.":
            raise ReadOnlyAttribute("%s is read-only" % name.decode(errors="replace"))
        if inv is not None and inv[0] in (".", "-post."):
            try:
                if inv[0] == ".":
                    self.put_bucket_inventory(inode.id, inv[1], value)
                else:
                    await self.post_bucket_inventory(inode.id, inv[1], value)
            except CosfsError as exc:
                log.warning("bucket %d: inventory %s: %s (%s)", inode.id, inv[1], exc, exc.code)
                raise
            return
        if self._is_bucket(inode) and name in (BUCKET_VERSIONING_XATTR, BUCKET_REPLICATION_XATTR):
            try:
                if name == BUCKET_VERSIONING_XATTR:
                    self.versions.put_versioning(inode.id, value)
                else:
                    self.versions.put_replication(inode.id, value)
            except CosfsError as exc:
                log.warning("bucket %d: rejected %s: %s (%s)", inode.id,
                            name.decode()[len("user.cos."):], exc, exc.code)
                raise
            return
        if self._is_bucket(inode) and name == BUCKET_ORIGIN_XATTR:
            try:
                self.put_bucket_origin(inode.id, value)
            except CosfsError as exc:
                log.warning("bucket %d: rejected origin configuration: %s (%s)",
                            inode.id, exc, exc.code)
                raise
            return
        if name in STATUS_XATTRS or name in BUCKET_RO_XATTRS:
            raise ReadOnlyAttribute("%s is read-only" % name.decode())
        if name == SSE_XATTR and inode.is_reg:
            try:
                spec = parse_override(value)
            except CosfsError as exc:
                log.warning("inode %d: invalid %s value: %s", inode.id, SSE_XATTR.decode(), exc)
                raise
            request = value.strip(b"\0 \n\t").decode()
            # recorded together with the re-encrypted data (a crash keeps both old)
            await self.objects.rewrite(inode.id, request=request)
            log.debug("inode %d: encryption request %s", inode.id, spec.algorithm)
            return
        raise InvalidArgument("%s cannot be set here" % name.decode(errors="replace"))

    async def listxattr(self, ino, ctx=None):
        inode = self.catalog.get_inode(ino)
        result = self.catalog.list_xattrs(ino)
        if inode.is_reg and inode.enc:
            result.append(SSE_XATTR)
        return result

    async def removexattr(self, ino, name, ctx=None):
        self._namespace_ok(name)
        inode = self.catalog.get_inode(ino)
        if name.startswith(COS_PREFIX):
            if self._is_bucket(inode) and name == BUCKET_ENC_XATTR:
                self.get_bucket_encryption(inode.id)  # ENODATA when absent
                self.delete_bucket_encryption(inode.id)
                return
            inv = inventory_xattr(name) if self._is_bucket(inode) else None
            if inv is not None and inv[0] == ".":
                self.get_bucket_inventory(inode.id, inv[1])  # ENODATA when absent
                self.delete_bucket_inventory(inode.id, inv[1])
                return
            if self._is_bucket(inode) and name == BUCKET_ORIGIN_XATTR:
                self.get_bucket_origin(inode.id)  # ENODATA when absent
                self.delete_bucket_origin(inode.id)
                return
            if self._is_bucket(inode) and name == BUCKET_REPLICATION_XATTR:
                self.versions.get_replication(inode.id)  # ENODATA when absent
                self.versions.delete_replication(inode.id)
                return
            if self._is_bucket(inode) and name == BUCKET_VERSIONING_XATTR:
                raise ReadOnlyAttribute("versioning cannot be removed once enabled: set it to "
                                        "Suspended")
            if name in STATUS_XATTRS or name in BUCKET_RO_XATTRS:
                raise ReadOnlyAttribute("%s is read-only" % name.decode())
            if name == SSE_XATTR and inode.is_reg:
                if not inode.enc and not inode.enc_request:
                    raise FsError(errno.ENODATA)
                await self.objects.rewrite(ino, request=None)
                return
            raise FsError(errno.ENODATA)
        if self.catalog.get_xattr(ino, name) is None:
            # answered before a transaction: a rolled-back one would empty the catalog's
            # caches, and rsync -aX asks this for every absent attribute
            raise FsError(errno.ENODATA)
        with self.catalog.transaction():
            self.catalog.remove_xattr(ino, name)
            self.catalog.update_inode(ino, ctime_ns=now_ns())
