"""The FUSE adapter: pyfuse3.Operations over :class:`cosfs.filesystem.FileSystem`.

Each handler converts arguments, calls one filesystem method and converts
the result. Errors are translated here and only here: a CosfsError becomes
its errno; anything unexpected is logged with a traceback and answered EIO,
so the mount stays up (pyfuse3 would end the mount on any other exception).

Every translated handler is also timed: the histogram
``cosfs_fuse_request_seconds{operation}`` of :mod:`cosfs.metrics` observes the
time from the handler's start to its answer (errors included), through a child
bound once per handler, so the hot path pays two ``perf_counter`` calls and one
``observe`` (about 1.5 µs). ``forget`` (no answer) is not timed.
"""

import errno
import functools
import logging
import os
import resource
from time import perf_counter

import pyfuse3

from .. import metrics
from ..errors import CosfsError, FsError
from ..filesystem import Ctx
from .pagefill import PageFiller

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 10.0
ENTRY_TIMEOUT = 10.0


def caller_in_group(ctx, gid) -> bool:
    """Is the caller of a request (``ctx``: its file-system uid, gid and pid) in group
    ``gid``, as its own or a supplementary group? The request carries no supplementary
    groups: they are read from ``/proc/<pid>/status``; a caller gone meanwhile counts by
    its own group only."""
    if ctx.gid == gid:
        return True
    try:
        with open("/proc/%d/status" % ctx.pid, "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return gid in {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return False


def _translate(fn, operation=None):
    """``fn`` with its errors translated and its time observed as ``operation`` (default:
    its name)."""
    name = operation or fn.__name__
    observe = metrics.fuse_timer(name)

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        started = perf_counter()
        try:
            try:
                return await fn(*args, **kwargs)
            except CosfsError as exc:
                # Each request is atomic in the catalog, so a request refused for lack of
                # catalog space changed nothing: make room and run it once more. This is
                # what lets deleting work on a full store.
                if exc.code != "CatalogFull" or not await _make_room(args[0].fs):
                    raise
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except CosfsError as exc:
            if exc.errno == errno.EIO:
                log.error("%s: %s (%s)", name, exc, exc.code)
            elif exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT) and \
                    not isinstance(exc, FsError):
                # the store's disk, not the caller (FsError), is at fault: the operator must see it
                log.warning("%s: %s (%s)", name, exc, exc.code)
            else:
                log.debug("%s: %s", name, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.error("%s failed: %s", name, exc, exc_info=True)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", name)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            observe(perf_counter() - started)
    return wrapper


async def _make_room(fs):
    """True if the full catalog could be given room again."""
    try:
        await fs.make_room()
        return True
    except Exception as exc:
        log.warning("catalog is full and could not be checkpointed: %s", exc)
        return False


_ROOT = Ctx()


class Operations(pyfuse3.Operations):
    """Thin adapter; see the module docstring."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs, *, blksize=131072, writeback_cache=False, root_only=False):
        super().__init__()
        self.fs = fs
        self.blksize = blksize
        self.enable_writeback_cache = writeback_cache
        #: the kernel does not check permissions (no default_permissions): see _who
        self.root_only = root_only
        self._refused_uids = set()
        #: the kernel calls (readdir_reply, invalidate_inode, notify_store): pyfuse3's, or
        #: those of the session that runs this adapter (cosfs.fuse.session.Session)
        self.kernel = pyfuse3
        #: what entries are made of: pyfuse3's loop takes only its own class; a session
        #: that reads them back may set a cheaper one (cosfs.fuse.protocol.Entry)
        self.entry_class = pyfuse3.EntryAttributes
        #: stores of segments that random reads come back to into the kernel's page
        #: cache; never with writeback_cache (see cosfs.fuse.pagefill)
        self.pages = PageFiller(fs.objects, self._notify_store,
                                page_size=resource.getpagesize(), enabled=not writeback_cache)

    def _notify_store(self, inode, offset, data):
        self.kernel.notify_store(inode, offset, data)

    def _who(self, ctx):
        """The caller of a request, as the core takes it.

        On a ``root_only`` mount (cosfs.mount.permission_options) the kernel checks no
        permissions, and only root may act: a request with another file-system uid (the
        kernel's NFS or SMB server acting for a user) is refused with EACCES, since
        nothing would check that user's rights. The first refusal per uid is logged.
        """
        if ctx is None:
            return _ROOT
        if ctx.uid and self.root_only:
            if ctx.uid not in self._refused_uids and len(self._refused_uids) < 1000:
                self._refused_uids.add(ctx.uid)
                log.warning("request from file-system uid %d refused: a mount by root without "
                            "allow_other checks no permissions; set default_permissions: true "
                            "(or allow_other) to serve other users, e.g. through an NFS or "
                            "SMB export", ctx.uid)
            raise pyfuse3.FUSEError(errno.EACCES)
        return Ctx(uid=ctx.uid, gid=ctx.gid, umask=ctx.umask)

    def entry(self, inode):
        e = self.entry_class()
        e.st_ino = inode.id
        e.generation = 0
        e.entry_timeout = ENTRY_TIMEOUT
        e.attr_timeout = ATTR_TIMEOUT
        e.st_mode = inode.mode
        e.st_nlink = max(inode.nlink, 0)
        e.st_uid = inode.uid
        e.st_gid = inode.gid
        e.st_rdev = inode.rdev
        e.st_size = inode.size
        e.st_blksize = self.blksize
        e.st_blocks = self.fs.blocks(inode)
        e.st_atime_ns = inode.atime_ns
        e.st_mtime_ns = inode.mtime_ns
        e.st_ctime_ns = inode.ctime_ns
        return e

    @_translate
    async def lookup(self, parent_inode, name, ctx=None):
        inode = await self.fs.lookup(parent_inode, name, self._who(ctx), missing_ok=True)
        if inode is None:
            # "no such name", cached by the kernel like a positive entry: names are
            # created through the kernel (which replaces the negative entry) or by the
            # other front-ends, which invalidate it (see cosfs.keyspace)
            e = self.entry_class()
            e.st_ino = 0
            e.entry_timeout = ENTRY_TIMEOUT
            return e
        return self.entry(inode)

    async def forget(self, inode_list):
        # forget has no reply: any exception here, even FUSEError, ends the mount.
        try:
            # no page store may outlive the inode: its number may be given again
            await self.pages.forget([ino for ino, _ in inode_list])
            self.fs.forget(inode_list)
        except CosfsError as exc:
            # nameless objects whose purge failed are purged by make_room, or at next mount
            if exc.code != "CatalogFull" or not await _make_room(self.fs):
                log.warning("forget of %d inode(s): %s; their data is deleted at the next "
                            "mount", len(inode_list), exc)
        except Exception:
            log.exception("forget of %d inode(s) failed; their data stays until fsck",
                          len(inode_list))

    @_translate
    async def getattr(self, inode, ctx=None):
        self._who(ctx)
        return self.entry(await self.fs.getattr(inode))

    @_translate
    async def access(self, inode, mode, ctx):
        # asked only without default_permissions, where every caller is root (_who)
        who = self._who(ctx)
        return self.fs.access(inode, mode, who.uid, who.gid)

    @_translate
    async def setattr(self, inode, attr, fields, fh, ctx):
        kw = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        try:
            return self.entry(await self.fs.setattr(inode, ctx=self._who(ctx), **kw))
        finally:
            if fields.update_size:
                # the kernel cuts its pages once answered: no page store may land after that
                await self.pages.settle(inode)

    @_translate
    async def drop_setid(self, inode, ctx=None):
        """Clear the set-ID bits of ``inode`` as the kernel asks, with
        ``FUSE_HANDLE_KILLPRIV_V2``, before a write, truncation or change of owner
        (:meth:`cosfs.filesystem.FileSystem.drop_setid`); ``ctx``: the caller of a
        write or truncation, who lacks ``CAP_FSETID`` (None for a change of owner).
        Returns the new attributes if a bit was cleared (the kernel's copy is dropped
        then), else None. Not part of pyfuse3's interface: cosfs's own session calls it
        (cosfs.fuse.session)."""
        in_group = None if ctx is None else functools.partial(caller_in_group, ctx)
        if not await self.fs.drop_setid(inode, in_group):
            return None
        # attributes only: no page cache is touched, so this cannot wait on us
        self.kernel.invalidate_inode(inode, attr_only=True)
        return self.entry(self.fs.attr(inode))

    @_translate
    async def readlink(self, inode, ctx):
        self._who(ctx)
        return await self.fs.readlink(inode)

    @_translate
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self.entry(await self.fs.mknod(parent_inode, name, mode, rdev, self._who(ctx)))

    @_translate
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self.entry(await self.fs.mkdir(parent_inode, name, mode, self._who(ctx)))

    @_translate
    async def unlink(self, parent_inode, name, ctx):
        self._who(ctx)
        await self.fs.unlink(parent_inode, name)

    @_translate
    async def rmdir(self, parent_inode, name, ctx):
        self._who(ctx)
        await self.fs.rmdir(parent_inode, name)

    @_translate
    async def symlink(self, parent_inode, name, target, ctx):
        return self.entry(await self.fs.symlink(parent_inode, name, target, self._who(ctx)))

    @_translate
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._who(ctx)
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_translate
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self.entry(await self.fs.link(inode, new_parent_inode, new_name, self._who(ctx)))

    @_translate
    async def open(self, inode, flags, ctx):
        fh = await self.fs.open(inode, flags, self._who(ctx))
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            # opened, the object is no longer quiet: let page stores under way end before
            # the kernel may write pages (see cosfs.fuse.pagefill)
            await self.pages.settle(inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_translate
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, inode = await self.fs.create(parent_inode, name, mode, flags, self._who(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self.entry(inode)

    @_translate
    async def read(self, fh, off, size):
        return await self.pages.read(self.fs.inode_of(fh), off, size,
                                     functools.partial(self.fs.read, fh, off, size))

    @_translate
    async def write(self, fh, off, buf):
        return await self.fs.write(fh, off, buf)

    @_translate
    async def fallocate(self, fh, mode, offset, length):
        """fallocate(2) (cosfs's own session only: pyfuse3 has no such operation)."""
        try:
            await self.fs.fallocate(fh, offset, length, mode)
        except CosfsError as exc:
            if exc.errno in (errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                # the store failed the commit: the change stays buffered for the next one,
                # while the kernel, which changes nothing on an error, keeps its size and
                # pages; taking the attributes again (new times) makes it drop both
                try:
                    self.kernel.invalidate_inode(self.fs.inode_of(fh), attr_only=True)
                except (OSError, CosfsError):
                    pass
            raise

    @_translate
    async def flush(self, fh):
        stale = await self.fs.flush(fh)
        if stale is not None:
            # attributes only: no page cache is touched, so this cannot wait on us
            try:
                self.kernel.invalidate_inode(stale, attr_only=True)
            except OSError as exc:  # the commit stands: close must not fail for this
                log.warning("cannot drop the kernel's attributes of inode %d: %s", stale, exc)

    @_translate
    async def release(self, fh):
        await self.fs.release(fh)

    @_translate
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh, datasync)

    @_translate
    async def opendir(self, inode, ctx):
        self._who(ctx)
        return await self.fs.opendir(inode)

    @_translate
    async def readdir(self, fh, start_id, token):
        reply = self.kernel.readdir_reply
        for name, inode, next_id, counted in self.fs.readdir(fh, start_id):
            if not reply(token, name, self.entry(inode), next_id):
                break
            if counted:
                self.fs.readdir_sent(fh, name, inode.id)

    @_translate
    async def releasedir(self, fh):
        await self.fs.releasedir(fh)

    @_translate
    async def fsyncdir(self, fh, datasync):
        await self.fs.fsyncdir(fh, datasync)

    @_translate
    async def statfs(self, ctx):
        self._who(ctx)
        info = await self.fs.statfs()
        s = pyfuse3.StatvfsData()
        for k, v in info.items():
            setattr(s, k, v)
        return s

    # Only names in the user namespace are kept. The others are refused before anything
    # else, untimed: the kernel asks for security.capability before every write(2) (a
    # quarter of the requests of tar x, half of those of 4 KiB random writes). The way
    # through the translating wrapper costs 2.5 µs in-process, and took a getxattr loop
    # through the kernel from 96 to 60 µs per call (contrib/request_cost.py). No such
    # attribute exists for anyone to learn of, so no caller is checked for them.
    async def setxattr(self, inode, name, value, ctx):
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        await self._setxattr(inode, name, value, ctx)

    @functools.partial(_translate, operation="setxattr")
    async def _setxattr(self, inode, name, value, ctx):
        self._who(ctx)
        await self.fs.setxattr(inode, name, value)

    async def getxattr(self, inode, name, ctx=None):
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        return await self._getxattr(inode, name, ctx)

    @functools.partial(_translate, operation="getxattr")
    async def _getxattr(self, inode, name, ctx=None):
        self._who(ctx)
        return await self.fs.getxattr(inode, name)

    @_translate
    async def listxattr(self, inode, ctx):
        self._who(ctx)
        return await self.fs.listxattr(inode)

    async def removexattr(self, inode, name, ctx):
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        await self._removexattr(inode, name, ctx)

    @functools.partial(_translate, operation="removexattr")
    async def _removexattr(self, inode, name, ctx):
        self._who(ctx)
        await self.fs.removexattr(inode, name)
