"""A FUSE session of cosfs's own: the kernel's requests read from ``/dev/fuse`` and
answered without libfuse or pyfuse3's request loop.

pyfuse3 hands each request through libfuse's C loop and its own Cython layer, and
asks the kernel only for what libfuse 3.14 asks. :class:`Session` speaks the protocol
itself (:mod:`cosfs.fuse.protocol`): measured with ``contrib/request_cost.py``, an
empty file system answers 4-12 µs per request faster this way, and it can ask for
what pyfuse3 cannot (``FUSE_HANDLE_KILLPRIV_V2``, which spares the
``security.capability`` lookup before every write).

It drives the same adapter (:class:`cosfs.fuse.ops.Operations`, written against
pyfuse3's ``Operations`` interface): handlers are called with the same arguments and
their answers (``pyfuse3.EntryAttributes``, ``FileInfo``, ``StatvfsData``) read by
attribute name; a ``pyfuse3.FUSEError`` is the errno answered. The adapter's kernel
calls (``readdir_reply``, ``invalidate_inode``, ``invalidate_entry``,
``notify_store``) are methods of the session, with pyfuse3's signatures.

Contracts:

* Mounted by root only, with ``mount(2)`` (as libfuse does for root): source
  ``fsname``, type ``fuse.<subtype>``, always ``nosuid`` and ``nodev``.
  :meth:`Session.mount` raises RuntimeError (nothing mounted) otherwise.
* The kernel is offered protocol 7.:data:`~cosfs.fuse.protocol.MINOR` with the
  capabilities libfuse 3.14 and pyfuse3 ask for (asynchronous and direct-I/O reads,
  atomic ``O_TRUNC``, lookups of ``.`` and ``..``, 1 MiB writes, automatic page-cache
  invalidation, READDIRPLUS always, parallel directory operations), plus the
  writeback cache if the adapter enables it, and ``FUSE_HANDLE_KILLPRIV_V2`` if it
  has ``drop_setid(inode)``: the kernel then leaves clearing set-ID bits to the file
  system, flagging the writes, truncations, ``O_TRUNC`` opens and changes of owner
  that must clear them (``drop_setid`` is called before a write or open, after the
  SETATTR), and sends no ``security.capability`` lookup before each write.
* Requests are answered in trio tasks that wait on the device through a
  :class:`~cosfs.fuse.loop.RequestWait` (its contracts hold here: the task that
  answered a request reads the next; another takes over the waiting when a handler
  blocks). A new task is started whenever none is parked, up to ``max_tasks``.
  A task that has answered a request reads the next one at once, without going back
  to trio's scheduler, when trio has nothing else to do and the request comes within
  the poll window (:meth:`~cosfs.fuse.loop.RequestWait.poll_next`): that saves two
  system calls and a pass of the scheduler per request. At most :data:`IN_A_ROW`
  requests are read so; then the task waits through trio once, so that other tasks
  run.
* Every request but FORGET, BATCH_FORGET and INTERRUPT gets exactly one reply: its
  handler's answer, the errno of a ``FUSEError``, ENOSYS for an operation the adapter
  does not implement, EIO (logged with a traceback) for anything else. A reply to a
  request the kernel has given up (interrupted, or the connection aborted) is dropped.
  INTERRUPT is not acted on: every request runs to its end.
* :meth:`Session.main` returns once the file system is unmounted or
  :meth:`Session.terminate` was called; :meth:`Session.close` then closes the device
  (requests still queued fail with ENOTCONN) and unmounts lazily, unless the kernel
  ended the connection already.
* The kernel calls may be made from any thread; a failed one raises OSError
  (``invalidate_entry`` ignores ENOENT when asked to), as pyfuse3's do.
"""

import ctypes
import errno
import logging
import os
import queue
import resource
import select
import threading
import time

import pyfuse3
import trio

from . import protocol as P
from .loop import RequestWait

log = logging.getLogger(__name__)

#: Largest WRITE the kernel sends (and largest READ it asks for), bytes.
MAX_WRITE = 1 << 20
#: The request buffer: a WRITE's data and its headers.
BUFFER_SIZE = MAX_WRITE + 4096
#: Tasks answering requests at most (as pyfuse3's default).
MAX_TASKS = 99
#: Requests a task reads in a row while trio has nothing else to do, without going back
#: to its scheduler (see RequestWait.poll_next); then it waits through trio once, so that
#: tasks of the scheduler's current batch run.
IN_A_ROW = 32

# mount(2) flags and umount2(2)'s lazy detach
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_NOATIME = 1, 2, 4, 8, 1024
_FLAG_OPTIONS = {"ro": _MS_RDONLY, "noexec": _MS_NOEXEC, "noatime": _MS_NOATIME,
                 "nosuid": _MS_NOSUID, "nodev": _MS_NODEV}
_KERNEL_OPTIONS = ("default_permissions", "allow_other")
_MNT_DETACH = 2

_XATTR_CREATE, _XATTR_REPLACE = 1, 2

#: the SETATTR fields that change something (the rest: the handle, lock owner, ctime)
_SETATTR_CHANGES = (P.FATTR_MODE | P.FATTR_UID | P.FATTR_GID | P.FATTR_SIZE | P.FATTR_ATIME
                    | P.FATTR_MTIME | P.FATTR_ATIME_NOW | P.FATTR_MTIME_NOW)

#: what this session asks the kernel for, of what it offers (see the module)
_WANT = (P.ASYNC_READ | P.ATOMIC_O_TRUNC | P.BIG_WRITES | P.AUTO_INVAL_DATA
         | P.DO_READDIRPLUS | P.ASYNC_DIO | P.PARALLEL_DIROPS | P.MAX_PAGES)


class RequestContext:
    """Who sent a request (pyfuse3.RequestContext's names)."""

    __slots__ = ("uid", "gid", "pid", "umask")

    def __init__(self, uid, gid, pid, umask=0):
        self.uid, self.gid, self.pid, self.umask = uid, gid, pid, umask


class SetattrFields:
    """Which attributes a SETATTR changes (pyfuse3.SetattrFields' names)."""

    __slots__ = ("update_atime", "update_mtime", "update_ctime", "update_mode",
                 "update_uid", "update_gid", "update_size")


class SetattrValues:
    """The new values of a SETATTR (pyfuse3.EntryAttributes' names)."""

    __slots__ = ("st_mode", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns",
                 "st_ctime_ns")


class ReaddirToken:
    """The reply to one READDIRPLUS under construction (see :meth:`Session.readdir_reply`)."""

    __slots__ = ("room", "records")

    def __init__(self, room):
        self.room = room
        self.records = []


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount_parameters(options, fsname):
    """(flags, kernel options, source, type) of mount(2) for pyfuse3-style ``options``.
    Raises RuntimeError for an option this session does not know."""
    flags = _MS_NOSUID | _MS_NODEV
    kernel = []
    source, fstype = fsname, "fuse"
    for option in sorted(options):
        if option in _FLAG_OPTIONS:
            flags |= _FLAG_OPTIONS[option]
        elif option in _KERNEL_OPTIONS:
            kernel.append(option)
        elif option.startswith("fsname="):
            source = option[len("fsname="):]
        elif option.startswith("subtype="):
            fstype = "fuse." + option[len("subtype="):]
        else:
            raise RuntimeError("unknown mount option %r" % option)
    return flags, kernel, source, fstype


class Session:
    """The FUSE session of one mount (see the module): ``ops`` answers the requests."""

    def __init__(self, ops, mountpoint, options, *, poll_limit=50e-6, max_tasks=MAX_TASKS):
        self.ops = ops
        self.mountpoint = os.fspath(mountpoint)
        self.options = set(options)
        self.poll_limit = poll_limit
        self.max_tasks = max_tasks
        self.fd = -1
        self.proto_minor = None  # the kernel's minor version, once INIT is answered
        self.flags = 0           # the capabilities agreed on at INIT
        self._wait = None
        self._terminated = False
        self._tasks = 0
        self._starting = 0
        self._nursery = None
        self._notices = None     # queue of the asynchronous entry invalidations
        self._handlers = {
            P.LOOKUP: self._lookup, P.FORGET: self._forget, P.GETATTR: self._getattr,
            P.SETATTR: self._setattr, P.READLINK: self._readlink, P.SYMLINK: self._symlink,
            P.MKNOD: self._mknod, P.MKDIR: self._mkdir, P.UNLINK: self._unlink,
            P.RMDIR: self._rmdir, P.RENAME: self._rename, P.RENAME2: self._rename2,
            P.LINK: self._link, P.OPEN: self._open, P.READ: self._read, P.WRITE: self._write,
            P.STATFS: self._statfs, P.RELEASE: self._release, P.FSYNC: self._fsync,
            P.SETXATTR: self._setxattr, P.GETXATTR: self._getxattr,
            P.LISTXATTR: self._listxattr, P.REMOVEXATTR: self._removexattr,
            P.FLUSH: self._flush, P.INIT: self._init, P.OPENDIR: self._opendir,
            P.READDIRPLUS: self._readdirplus, P.RELEASEDIR: self._releasedir,
            P.FSYNCDIR: self._fsyncdir, P.ACCESS: self._access, P.CREATE: self._create,
            P.INTERRUPT: self._ignore, P.DESTROY: self._destroy,
            P.BATCH_FORGET: self._batch_forget, P.FALLOCATE: self._fallocate,
        }

    # -- mounting ---------------------------------------------------------------------

    def mount(self):
        """Open ``/dev/fuse`` and mount it at the mount point. Raises RuntimeError."""
        if os.geteuid() != 0:
            raise RuntimeError("cosfs's own FUSE session mounts as root only "
                               "(fuse_loop: pyfuse3 mounts as any user)")
        flags, kernel, source, fstype = _mount_parameters(self.options, "cosfs")
        try:
            st = os.stat(self.mountpoint)
            fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeError("cannot open %s: %s" % (exc.filename, exc.strerror)) from None
        data = ",".join(["fd=%d" % fd, "rootmode=%o" % (st.st_mode & 0o170000),
                         "user_id=%d" % os.getuid(), "group_id=%d" % os.getgid()] + kernel)
        libc = _libc()
        if libc.mount(source.encode(), os.fsencode(self.mountpoint), fstype.encode(),
                      ctypes.c_ulong(flags), data.encode()) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise RuntimeError("mount(2) failed: %s" % os.strerror(err))
        os.set_blocking(fd, False)
        self.fd = fd

    def close(self, unmount=True):
        """Close the device, which ends the connection, then unmount (lazily, if
        ``unmount`` and the connection was still alive)."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        if self._notices is not None:
            self._notices.put(None)
            self._notices = None
        alive = self._alive(fd)
        # closed first, as libfuse does: the connection ends, and whatever waits on it
        # fails with ENOTCONN, before the mount point would show the folder beneath
        os.close(fd)
        if unmount and alive:
            if _libc().umount2(os.fsencode(self.mountpoint), _MNT_DETACH) != 0:
                err = ctypes.get_errno()
                log.warning("cannot unmount %s: %s", self.mountpoint, os.strerror(err))

    @staticmethod
    def _alive(fd):
        """Whether the kernel's end of the connection is still there."""
        p = select.poll()
        p.register(fd, select.POLLIN)
        return not any(ev & select.POLLERR for _, ev in p.poll(0))

    # -- the request loop -------------------------------------------------------------

    async def main(self):
        """Answer requests until the file system is unmounted or :meth:`terminate`
        (also if that was called before)."""
        if self._terminated:
            return
        self._wait = RequestWait(self.fd, self.poll_limit)
        self._wait.attach(self._end_wait)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._spawn()
        finally:
            self._nursery = None
            self._wait.detach()

    def terminate(self):
        """End :meth:`main` (trio thread only): requests being answered are answered."""
        self._terminated = True
        if self._wait is not None:
            self._wait.terminate()

    def _end_wait(self):
        try:
            trio.lowlevel.notify_closing(self.fd)
        except (OSError, ValueError, RuntimeError):  # not waited on
            pass

    def _spawn(self):
        self._tasks += 1
        self._starting += 1
        self._nursery.start_soon(self._worker)

    async def _worker(self):
        buf = None
        wait = self._wait
        fd = self.fd
        started = True
        in_a_row = 0  # requests read without going back to trio's scheduler
        try:
            while True:
                if started:
                    started = False
                    self._starting -= 1
                if in_a_row and in_a_row < IN_A_ROW and wait.poll_next():
                    in_a_row += 1
                else:
                    if not await wait.wait():
                        return
                    in_a_row = 1
                if buf is None:
                    buf = bytearray(BUFFER_SIZE)
                try:
                    n = os.readv(fd, [buf])
                except (BlockingIOError, InterruptedError):
                    in_a_row = 0
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENOENT:  # interrupted before it was read
                        continue
                    if exc.errno == errno.ENODEV:  # unmounted
                        wait.terminate()
                        return
                    raise
                if n == 0:  # the other end is gone (a socket standing in for the device)
                    wait.terminate()
                    return
                if not wait.tasks_parked and not self._starting and \
                        self._tasks < self.max_tasks:
                    self._spawn()  # so that a task is there to take over the waiting
                await self._dispatch(buf, n)
        finally:
            self._tasks -= 1
            if started:
                self._starting -= 1

    async def _dispatch(self, buf, n):
        head = P.IN_HEADER.unpack_from(buf)
        handler = self._handlers.get(head[1])
        if handler is None:
            self._reply_error(head[2], errno.ENOSYS)
            return
        try:
            await handler(head, buf, n)
        except pyfuse3.FUSEError as exc:
            self._reply_error(head[2], exc.errno)
        except NotImplementedError:
            self._reply_error(head[2], errno.ENOSYS)
        except Exception:
            log.exception("FUSE request %s failed",
                          P.OPCODE_NAMES.get(head[1], str(head[1])))
            self._reply_error(head[2], errno.EIO)

    # -- replies ----------------------------------------------------------------------

    def _send(self, parts):
        try:
            os.writev(self.fd, parts)
        except FileNotFoundError:  # the kernel gave the request up meanwhile
            pass
        except OSError as exc:  # a reply the kernel refused: say so, answer the next
            log.error("the kernel refused a reply (%d bytes): %s",
                      sum(len(p) for p in parts), exc.strerror)

    def _reply(self, unique, payload=b""):
        self._send([P.OUT_HEADER.pack(16 + len(payload), 0, unique), payload])

    def _reply_error(self, unique, err):
        self._send([P.OUT_HEADER.pack(16, -err, unique)])

    @staticmethod
    def _ctx(head, umask=0):
        return RequestContext(head[4], head[5], head[6], umask)

    @staticmethod
    def _name(buf, n, start=P.IN_HEADER.size):
        return bytes(buf[start:n]).split(b"\0", 1)[0]

    # -- handlers: names --------------------------------------------------------------

    async def _init(self, head, buf, n):
        major, minor, readahead, offered = P.INIT_IN.unpack_from(buf, P.IN_HEADER.size)
        if major != P.MAJOR:
            log.error("the kernel speaks FUSE %d.%d, cosfs speaks %d.%d", major, minor,
                      P.MAJOR, P.MINOR)
            self._reply_error(head[2], errno.EPROTO)
            return
        want = _WANT
        if getattr(self.ops, "supports_dot_lookup", True):
            want |= P.EXPORT_SUPPORT
        if getattr(self.ops, "enable_writeback_cache", False):
            want |= P.WRITEBACK_CACHE
        if hasattr(self.ops, "drop_setid"):
            # the adapter clears set-ID bits itself when told to: the kernel then sends
            # no security.capability GETXATTR before each write
            want |= P.HANDLE_KILLPRIV_V2
        self.flags = offered & want
        self.proto_minor = min(minor, P.MINOR)
        self._reply(head[2], P.INIT_OUT.pack(P.MAJOR, self.proto_minor, readahead,
                                             self.flags, 0, 0, MAX_WRITE, 1,
                                             MAX_WRITE // resource.getpagesize(), 0, 0))
        init = getattr(self.ops, "init", None)
        if init is not None:
            init()

    async def _destroy(self, head, buf, n):
        self._reply(head[2])

    async def _ignore(self, head, buf, n):
        pass

    async def _lookup(self, head, buf, n):
        e = await self.ops.lookup(head[3], self._name(buf, n), self._ctx(head))
        self._reply(head[2], P.entry(e))

    async def _forget(self, head, buf, n):
        (nlookup,) = P.FORGET_IN.unpack_from(buf, P.IN_HEADER.size)
        await self._forget_list([(head[3], nlookup)])

    async def _batch_forget(self, head, buf, n):
        count, _ = P.BATCH_FORGET_IN.unpack_from(buf, P.IN_HEADER.size)
        start = P.IN_HEADER.size + P.BATCH_FORGET_IN.size
        await self._forget_list([P.FORGET_ONE.unpack_from(buf, start + 16 * i)
                                 for i in range(count)])

    async def _forget_list(self, inodes):
        try:
            await self.ops.forget(inodes)
        except Exception:  # no reply to give: say it
            log.exception("forget of %d inode(s) failed", len(inodes))

    async def _getattr(self, head, buf, n):
        self._reply(head[2], P.attr_out(await self.ops.getattr(head[3], self._ctx(head))))

    async def _setattr(self, head, buf, n):
        (valid, _, fh, size, _, atime, mtime, ctime, atimensec, mtimensec, ctimensec, mode,
         _, uid, gid, _) = P.SETATTR_IN.unpack_from(buf, P.IN_HEADER.size)
        fields = SetattrFields()
        values = SetattrValues()
        # the kernel sends the time it took for "now" with FATTR_[AM]TIME; the flags
        # FATTR_[AM]TIME_NOW alone (as pyfuse3 reads them) stand for the time here
        now = time.time_ns() if valid & (P.FATTR_ATIME_NOW | P.FATTR_MTIME_NOW) else 0
        values.st_mode, values.st_uid, values.st_gid, values.st_size = mode, uid, gid, size
        values.st_atime_ns = atime * 1_000_000_000 + atimensec if valid & P.FATTR_ATIME \
            else now
        values.st_mtime_ns = mtime * 1_000_000_000 + mtimensec if valid & P.FATTR_MTIME \
            else now
        values.st_ctime_ns = ctime * 1_000_000_000 + ctimensec
        fields.update_atime = bool(valid & (P.FATTR_ATIME | P.FATTR_ATIME_NOW))
        fields.update_mtime = bool(valid & (P.FATTR_MTIME | P.FATTR_MTIME_NOW))
        fields.update_ctime = bool(valid & P.FATTR_CTIME)
        fields.update_mode = bool(valid & P.FATTR_MODE)
        fields.update_uid = bool(valid & P.FATTR_UID)
        fields.update_gid = bool(valid & P.FATTR_GID)
        fields.update_size = bool(valid & P.FATTR_SIZE)
        e = await self.ops.setattr(head[3], values, fields,
                                   fh if valid & P.FATTR_FH else None, self._ctx(head))
        if valid & P.FATTR_KILL_SUIDGID or not valid & _SETATTR_CHANGES:
            # a truncation or change of owner went through; or a SETATTR that changes
            # nothing, which is chown(-1, -1): Linux clears set-ID bits then too, and the
            # kernel flags only a chown that names an owner or a group. A truncation is
            # flagged for a caller without CAP_FSETID only, a change of owner always.
            truncation = valid & (P.FATTR_SIZE | P.FATTR_UID | P.FATTR_GID) == P.FATTR_SIZE
            e = await self.ops.drop_setid(
                head[3], self._ctx(head) if truncation else None) or e
        self._reply(head[2], P.attr_out(e))

    async def _readlink(self, head, buf, n):
        self._reply(head[2], await self.ops.readlink(head[3], self._ctx(head)))

    async def _symlink(self, head, buf, n):
        name, target = bytes(buf[P.IN_HEADER.size:n]).split(b"\0")[:2]
        e = await self.ops.symlink(head[3], name, target, self._ctx(head))
        self._reply(head[2], P.entry(e))

    async def _mknod(self, head, buf, n):
        mode, rdev, umask, _ = P.MKNOD_IN.unpack_from(buf, P.IN_HEADER.size)
        name = self._name(buf, n, P.IN_HEADER.size + P.MKNOD_IN.size)
        e = await self.ops.mknod(head[3], name, mode, rdev, self._ctx(head, umask))
        self._reply(head[2], P.entry(e))

    async def _mkdir(self, head, buf, n):
        mode, umask = P.MKDIR_IN.unpack_from(buf, P.IN_HEADER.size)
        name = self._name(buf, n, P.IN_HEADER.size + P.MKDIR_IN.size)
        e = await self.ops.mkdir(head[3], name, mode, self._ctx(head, umask))
        self._reply(head[2], P.entry(e))

    async def _unlink(self, head, buf, n):
        await self.ops.unlink(head[3], self._name(buf, n), self._ctx(head))
        self._reply(head[2])

    async def _rmdir(self, head, buf, n):
        await self.ops.rmdir(head[3], self._name(buf, n), self._ctx(head))
        self._reply(head[2])

    async def _rename(self, head, buf, n):
        (newdir,) = P.RENAME_IN.unpack_from(buf, P.IN_HEADER.size)
        await self._rename_common(head, buf, n, newdir, 0, P.RENAME_IN.size)

    async def _rename2(self, head, buf, n):
        newdir, flags, _ = P.RENAME2_IN.unpack_from(buf, P.IN_HEADER.size)
        await self._rename_common(head, buf, n, newdir, flags, P.RENAME2_IN.size)

    async def _rename_common(self, head, buf, n, newdir, flags, size):
        old, new = bytes(buf[P.IN_HEADER.size + size:n]).split(b"\0")[:2]
        await self.ops.rename(head[3], old, newdir, new, flags, self._ctx(head))
        self._reply(head[2])

    async def _link(self, head, buf, n):
        (old,) = P.LINK_IN.unpack_from(buf, P.IN_HEADER.size)
        name = self._name(buf, n, P.IN_HEADER.size + P.LINK_IN.size)
        e = await self.ops.link(old, head[3], name, self._ctx(head))
        self._reply(head[2], P.entry(e))

    # -- handlers: files --------------------------------------------------------------

    @staticmethod
    def _open_out(fi):
        flags = ((P.FOPEN_DIRECT_IO if fi.direct_io else 0)
                 | (P.FOPEN_KEEP_CACHE if fi.keep_cache else 0)
                 | (P.FOPEN_NONSEEKABLE if fi.nonseekable else 0))
        return P.OPEN_OUT.pack(fi.fh, flags, 0)

    async def _open(self, head, buf, n):
        flags, open_flags = P.OPEN_IN.unpack_from(buf, P.IN_HEADER.size)
        fi = await self.ops.open(head[3], flags, self._ctx(head))
        if open_flags & P.OPEN_KILL_SUIDGID:  # an O_TRUNC by a caller without CAP_FSETID
            await self.ops.drop_setid(head[3], self._ctx(head))
        self._reply(head[2], self._open_out(fi))

    async def _create(self, head, buf, n):
        flags, mode, umask, _ = P.CREATE_IN.unpack_from(buf, P.IN_HEADER.size)
        name = self._name(buf, n, P.IN_HEADER.size + P.CREATE_IN.size)
        fi, e = await self.ops.create(head[3], name, mode, flags, self._ctx(head, umask))
        self._reply(head[2], P.entry(e) + self._open_out(fi))

    async def _read(self, head, buf, n):
        fh, offset, size, _, _, _, _ = P.READ_IN.unpack_from(buf, P.IN_HEADER.size)
        data = await self.ops.read(fh, offset, size)
        self._send([P.OUT_HEADER.pack(16 + len(data), 0, head[2]), data])

    async def _write(self, head, buf, n):
        fh, offset, size, flags, _, _, _ = P.WRITE_IN.unpack_from(buf, P.IN_HEADER.size)
        if flags & P.WRITE_KILL_SUIDGID:  # the writer lacks CAP_FSETID
            await self.ops.drop_setid(head[3], self._ctx(head))
        start = P.IN_HEADER.size + P.WRITE_IN.size
        with memoryview(buf) as view:  # one copy (a bytearray slice would make two)
            data = bytes(view[start:start + size])
        written = await self.ops.write(fh, offset, data)
        self._reply(head[2], P.WRITE_OUT.pack(written, 0))

    async def _fallocate(self, head, buf, n):
        fh, offset, length, mode, _ = P.FALLOCATE_IN.unpack_from(buf, P.IN_HEADER.size)
        if head[4]:
            # the kernel flags no fallocate for set-ID bits: a caller other than root
            # changes the file as a writer does, and ext4 clears them first. (By uid: the
            # request does not tell whether the caller holds CAP_FSETID.)
            await self.ops.drop_setid(head[3], self._ctx(head))
        await self.ops.fallocate(fh, mode, offset, length)
        self._reply(head[2])

    async def _statfs(self, head, buf, n):
        self._reply(head[2], P.kstatfs(await self.ops.statfs(self._ctx(head))))

    async def _release(self, head, buf, n):
        await self._handle_only(head, buf, P.RELEASE_IN, self.ops.release)

    async def _flush(self, head, buf, n):
        await self._handle_only(head, buf, P.FLUSH_IN, self.ops.flush)

    async def _fsync(self, head, buf, n):
        await self._sync(head, buf, self.ops.fsync)

    async def _handle_only(self, head, buf, layout, call):
        """A request whose only argument is the handle that opens ``layout``: ``call(fh)``."""
        await call(layout.unpack_from(buf, P.IN_HEADER.size)[0])
        self._reply(head[2])

    async def _sync(self, head, buf, call):
        """FSYNC or FSYNCDIR: ``call(fh, datasync)``."""
        fh, flags, _ = P.FSYNC_IN.unpack_from(buf, P.IN_HEADER.size)
        await call(fh, bool(flags & P.FSYNC_FDATASYNC))
        self._reply(head[2])

    async def _access(self, head, buf, n):
        mask, _ = P.ACCESS_IN.unpack_from(buf, P.IN_HEADER.size)
        if await self.ops.access(head[3], mask, self._ctx(head)):
            self._reply(head[2])
        else:
            self._reply_error(head[2], errno.EACCES)

    # -- handlers: directories --------------------------------------------------------

    async def _opendir(self, head, buf, n):
        fh = await self.ops.opendir(head[3], self._ctx(head))
        self._reply(head[2], P.OPEN_OUT.pack(fh, 0, 0))

    async def _readdirplus(self, head, buf, n):
        fh, offset, size, _, _, _, _ = P.READ_IN.unpack_from(buf, P.IN_HEADER.size)
        token = ReaddirToken(size)
        await self.ops.readdir(fh, offset, token)
        self._reply(head[2], b"".join(token.records))

    async def _releasedir(self, head, buf, n):
        await self._handle_only(head, buf, P.RELEASE_IN, self.ops.releasedir)

    async def _fsyncdir(self, head, buf, n):
        await self._sync(head, buf, self.ops.fsyncdir)

    # -- handlers: extended attributes ------------------------------------------------

    async def _setxattr(self, head, buf, n):
        size, flags = P.SETXATTR_IN.unpack_from(buf, P.IN_HEADER.size)
        body = bytes(buf[P.IN_HEADER.size + P.SETXATTR_IN.size:n])
        name, _, rest = body.partition(b"\0")
        value = rest[:size]
        if flags & ~(_XATTR_CREATE | _XATTR_REPLACE):
            raise pyfuse3.FUSEError(errno.EINVAL)
        ctx = self._ctx(head)
        if flags & _XATTR_CREATE:  # it must not exist
            try:
                await self.ops.getxattr(head[3], name, ctx)
            except pyfuse3.FUSEError as exc:
                if exc.errno != errno.ENODATA:
                    raise
            else:
                raise pyfuse3.FUSEError(errno.EEXIST)
        elif flags & _XATTR_REPLACE:  # it must exist
            await self.ops.getxattr(head[3], name, ctx)
        await self.ops.setxattr(head[3], name, value, ctx)
        self._reply(head[2])

    def _reply_sized(self, head, size, value):
        if size == 0:
            self._reply(head[2], P.GETXATTR_OUT.pack(len(value), 0))
        elif len(value) > size:
            self._reply_error(head[2], errno.ERANGE)
        else:
            self._reply(head[2], value)

    async def _getxattr(self, head, buf, n):
        size, _ = P.GETXATTR_IN.unpack_from(buf, P.IN_HEADER.size)
        name = self._name(buf, n, P.IN_HEADER.size + P.GETXATTR_IN.size)
        self._reply_sized(head, size, await self.ops.getxattr(head[3], name, self._ctx(head)))

    async def _listxattr(self, head, buf, n):
        size, _ = P.GETXATTR_IN.unpack_from(buf, P.IN_HEADER.size)
        names = await self.ops.listxattr(head[3], self._ctx(head))
        self._reply_sized(head, size, b"".join(name + b"\0" for name in names))

    async def _removexattr(self, head, buf, n):
        await self.ops.removexattr(head[3], self._name(buf, n), self._ctx(head))
        self._reply(head[2])

    # -- the adapter's kernel calls (pyfuse3's signatures) ----------------------------

    def readdir_reply(self, token, name, attr, next_id):
        """Add the entry ``name`` (attributes ``attr``) to the READDIRPLUS reply of
        ``token``; False (nothing added) once it is full."""
        record = P.direntplus(attr, name, next_id)
        if len(record) > token.room:
            return False
        token.room -= len(record)
        token.records.append(record)
        return True

    def _notify(self, code, parts):
        size = 16 + sum(len(p) for p in parts)
        os.writev(self.fd, [P.OUT_HEADER.pack(size, code, 0)] + parts)

    def invalidate_inode(self, inode, attr_only=False):
        """Drop the kernel's attributes of ``inode`` and, unless ``attr_only``, its pages."""
        self._notify(P.NOTIFY_INVAL_INODE,
                     [P.NOTIFY_INVAL_INODE_OUT.pack(inode, -1 if attr_only else 0, 0)])

    def invalidate_entry(self, parent, name, deleted=0, ignore_enoent=False):
        """Drop the kernel's entry ``name`` of directory ``parent`` (telling it that
        inode ``deleted`` is gone, if given). May block on the directory's lock: never
        on the trio thread while requests for it may wait."""
        try:
            if deleted:
                self._notify(P.NOTIFY_DELETE, [P.NOTIFY_DELETE_OUT.pack(
                    parent, deleted, len(name), 0), name, b"\0"])
            else:
                self._notify(P.NOTIFY_INVAL_ENTRY, [P.NOTIFY_INVAL_ENTRY_OUT.pack(
                    parent, len(name), 0), name, b"\0"])
        except FileNotFoundError:
            if not ignore_enoent:
                raise

    def invalidate_entry_async(self, parent, name, deleted=0, ignore_enoent=False):
        """:meth:`invalidate_entry` in a thread of the session's; failures are logged."""
        if self._notices is None:
            self._notices = queue.SimpleQueue()
            threading.Thread(target=self._notice_thread, args=(self._notices,), daemon=True,
                             name="cosfs-fuse-notices").start()
        self._notices.put((parent, name, deleted, ignore_enoent))

    def _notice_thread(self, notices):
        while True:
            item = notices.get()
            if item is None:
                return
            try:
                self.invalidate_entry(*item)
            except OSError as exc:
                log.warning("cannot invalidate entry %r of inode %d: %s", item[1], item[0],
                            exc.strerror)

    def notify_store(self, inode, offset, data):
        """Put ``data`` into the kernel's page cache of ``inode`` at ``offset``."""
        self._notify(P.NOTIFY_STORE, [P.NOTIFY_STORE_OUT.pack(inode, offset, len(data), 0),
                                      data])
