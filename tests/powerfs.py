"""powerfs: a FUSE file system that models a disk with a volatile write cache.

Mount it under another program's data directory and kill it with SIGKILL to
simulate a power cut::

    python tests/powerfs.py BACKING MOUNTPOINT [--zero-statfs] [--debug]

The model is the one POSIX promises and nothing more:

- ``fsync``/``fdatasync`` of a file (any handle of the inode) makes the inode's
  current content, size and attributes durable, but not its names;
- ``fsync`` of a directory makes its current entries (and its own attributes)
  durable. A durable entry that names an inode whose content was never made
  durable shows that inode with its durable content: empty if never fsynced.
  A new directory's own entries are durable only once it is fsynced itself;
- ``sync(2)``/``syncfs(2)`` never reach a FUSE file system, so they change
  nothing here either.

Everything else lives only in this process's memory. BACKING holds exactly the
durable state, so SIGKILL of this process is the power cut, and a new process
on the same BACKING shows what survived. A clean shutdown (``fusermount3 -u``,
SIGTERM, SIGINT) makes everything durable first, like a clean unmount.

Backing layout: ``BACKING/inodes/<n>`` is the durable content of inode ``n``
(absent means empty) and ``BACKING/inodes/<n>.json`` its durable record (mode,
owner, times, size; a directory's entries; a symlink's target). Records are
replaced atomically (temp file + rename). Inode 1 is the root. On start,
everything not reachable from the root's durable record is removed.

The module also holds :class:`PowerDisk`, which runs the file system in a
subprocess for tests, and :func:`verify_acknowledged`, a checker for what a
program claims to have made durable.
"""

import argparse
import errno
import functools
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections import OrderedDict

log = logging.getLogger("powerfs")

ROOT = 1
PAGE = 32 * 1024           # granularity of the volatile page map
TIMEOUT = 5.0              # kernel entry/attribute cache timeout (seconds)
FD_CACHE = 128             # open content files kept for reads
IOV_MAX = 512              # pages per pwritev call


# ----------------------------------------------------------------------------------
# the file system
# ----------------------------------------------------------------------------------
class Inode:
    """Volatile state of one inode (what the running system sees)."""

    __slots__ = ("ino", "mode", "uid", "gid", "atime", "mtime", "ctime", "nlink", "size",
                 "target", "entries", "parent", "lookups", "opens", "pages", "base", "dirty")

    def __init__(self, ino, mode, uid, gid, now):
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.atime = self.mtime = self.ctime = now
        self.nlink = 1
        self.size = 0
        self.target = None      # symlink target (bytes)
        self.entries = None     # directory: name (bytes) -> inode number
        self.parent = None      # directory: inode number of its parent
        self.lookups = 0        # kernel lookup count
        self.opens = 0          # open handles
        self.pages = {}         # file: page index -> bytearray(PAGE), volatile content
        self.base = 0           # file: content below this offset comes from the content file
        self.dirty = True       # anything differs from (or is missing in) the durable state

    @property
    def isdir(self):
        return stat.S_ISDIR(self.mode)

    @property
    def isreg(self):
        return stat.S_ISREG(self.mode)


def _now():
    return time.time_ns()


def _fuse_error(code):
    import pyfuse3
    return pyfuse3.FUSEError(code)


class PowerFS:
    """The in-memory model plus its durable image in ``backing``.

    All methods are synchronous and never yield, so each FUSE request is atomic.
    """

    def __init__(self, backing, *, zero_statfs=False):
        self.backing = os.path.abspath(backing)
        self.dir = os.path.join(self.backing, "inodes")
        self.zero_statfs = zero_statfs
        self.inodes = {}        # ino -> Inode (volatile: alive, linked or still referenced)
        self.has_rec = set()    # inos with a durable record
        self.dentries = {}      # dir ino -> durable entries {name (bytes): ino}
        self.dnlink = {}        # ino -> number of durable entries naming it
        self.next_ino = ROOT + 1
        self.files = {}         # fh -> Inode
        self.dirs = {}          # fh -> [Inode, snapshot list or None]
        self.next_fh = 1
        self.fds = OrderedDict()  # ino -> fd of its content file

    # -- paths and content files ------------------------------------------------------
    def _content(self, ino):
        return os.path.join(self.dir, str(ino))

    def _record(self, ino):
        return os.path.join(self.dir, "%d.json" % ino)

    def _fd(self, ino):
        fd = self.fds.get(ino)
        if fd is not None:
            self.fds.move_to_end(ino)
            return fd
        fd = os.open(self._content(ino), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.fds[ino] = fd
        while len(self.fds) > FD_CACHE:
            _, old = self.fds.popitem(last=False)
            os.close(old)
        return fd

    def _close_fd(self, ino):
        fd = self.fds.pop(ino, None)
        if fd is not None:
            os.close(fd)

    # -- loading ----------------------------------------------------------------------
    def load(self):
        """Read the durable state; remove what is not reachable from the root."""
        os.makedirs(self.dir, exist_ok=True)
        names = os.listdir(self.dir)
        records = {}
        root = self._read_record(ROOT)
        if root is None or not stat.S_ISDIR(root.get("mode", 0)):
            root = None
        else:
            records[ROOT] = root
        parents = {ROOT: None}
        repaired = set()
        queue = [ROOT] if root is not None else []
        while queue:
            d = queue.pop()
            entries = records[d].get("entries", {})
            for name in list(entries):
                child = entries[name]
                if child in records:
                    if stat.S_ISDIR(records[child]["mode"]):
                        # a directory cannot have two names: keep the first one found
                        log.warning("load: dropping second name %r of directory %d", name, child)
                        del entries[name]
                        repaired.add(d)
                        continue
                else:
                    rec = self._read_record(child)
                    if rec is None:
                        log.warning("load: dropping entry %r -> %d without a record", name, child)
                        del entries[name]
                        repaired.add(d)
                        continue
                    records[child] = rec
                    if stat.S_ISDIR(rec["mode"]):
                        parents[child] = d
                        queue.append(child)
                self.dnlink[child] = self.dnlink.get(child, 0) + 1
        # remove every file of an unreachable inode
        highest = ROOT
        for name in names:
            stem = name.split(".", 1)[0]
            num = int(stem) if stem.isdigit() else None
            if num is not None:
                highest = max(highest, num)
            if num is None or num not in records or name not in (stem, stem + ".json"):
                try:
                    os.unlink(os.path.join(self.dir, name))
                except IsADirectoryError:
                    pass
        self.next_ino = highest + 1
        now = _now()
        if root is None:
            node = Inode(ROOT, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), now)
            node.nlink = 2
            node.entries = {}
            node.parent = ROOT
            self.inodes[ROOT] = node
            self.dentries[ROOT] = {}
        for ino, rec in records.items():
            node = Inode(ino, rec["mode"], rec["uid"], rec["gid"], now)
            node.atime, node.mtime, node.ctime = rec["atime"], rec["mtime"], rec["ctime"]
            node.dirty = False
            if node.isdir:
                node.entries = {os.fsencode(k): v for k, v in rec.get("entries", {}).items()}
                self.dentries[ino] = dict(node.entries)
                node.nlink = 2 + sum(1 for c in node.entries.values()
                                     if stat.S_ISDIR(records[c]["mode"]))
                node.parent = parents[ino] or ROOT
            else:
                node.nlink = self.dnlink.get(ino, 0)
                if stat.S_ISLNK(node.mode):
                    node.target = os.fsencode(rec.get("target", ""))
                    node.size = len(node.target)
                else:
                    node.size = node.base = int(rec.get("size", 0))
                    self._fix_content_length(ino, node.size)
            self.inodes[ino] = node
            self.has_rec.add(ino)
        for d in repaired:
            self._write_record(self.inodes[d])
        log.info("loaded %d inodes from %s", len(records), self.backing)

    def _read_record(self, ino):
        try:
            with open(self._record(ino)) as f:
                rec = json.load(f)
            missing = [k for k in ("mode", "uid", "gid", "atime", "mtime", "ctime") if k not in rec]
            if missing:
                raise ValueError("no %s" % ", ".join(missing))
            return rec
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("load: unreadable record of inode %d: %s", ino, exc)
            return None

    def _fix_content_length(self, ino, size):
        path = self._content(ino)
        try:
            length = os.stat(path).st_size
        except FileNotFoundError:
            length = 0
            if size == 0:
                return
        if length != size:
            # the content file and its record disagree (cut inside an fsync): the record wins
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)

    # -- durable writes ---------------------------------------------------------------
    def _rec_of(self, node, *, initial=False):
        rec = {"mode": node.mode, "uid": node.uid, "gid": node.gid,
               "atime": node.atime, "mtime": node.mtime, "ctime": node.ctime}
        if node.isdir:
            entries = {} if initial else node.entries
            rec["entries"] = {os.fsdecode(k): v for k, v in entries.items()}
        elif stat.S_ISLNK(node.mode):
            rec["target"] = os.fsdecode(node.target)
        else:
            rec["size"] = 0 if initial else node.size
        return rec

    def _write_record(self, node, *, initial=False):
        path = self._record(node.ino)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self._rec_of(node, initial=initial), f, separators=(",", ":"))
        os.replace(tmp, path)
        self.has_rec.add(node.ino)
        if initial and node.isdir:
            self.dentries[node.ino] = {}

    def sync_file(self, node):
        """fsync: the inode's content, size and attributes become durable."""
        if not node.dirty:
            return
        if node.isreg:
            fd = self._fd(node.ino)
            if node.base < os.fstat(fd).st_size:
                os.ftruncate(fd, node.base)
            batch, start, expect = [], None, None
            for idx in sorted(node.pages):
                pstart = idx * PAGE
                view = memoryview(node.pages[idx])[:min(PAGE, node.size - pstart)]
                if batch and (pstart != expect or len(batch) >= IOV_MAX):
                    os.pwritev(fd, batch, start)
                    batch = []
                if not batch:
                    start = pstart
                batch.append(view)
                expect = pstart + PAGE
            if batch:
                os.pwritev(fd, batch, start)
            os.ftruncate(fd, node.size)
            node.pages.clear()
            node.base = node.size
        self._write_record(node)
        node.dirty = False

    def sync_dir(self, node):
        """fsyncdir: the directory's entries and attributes become durable."""
        if not node.dirty:
            return
        ino = node.ino
        new = dict(node.entries)
        old = self.dentries.get(ino, {})
        for name, child in new.items():
            if old.get(name) != child:
                self.dnlink[child] = self.dnlink.get(child, 0) + 1
                if child not in self.has_rec:
                    self._write_record(self.inodes[child], initial=True)
        self._write_record(node)
        self.dentries[ino] = new
        node.dirty = False
        for name, child in old.items():
            if new.get(name) != child:
                self._durable_unref(child)

    def _durable_unref(self, ino):
        """One durable entry naming ``ino`` is gone; drop the inode if nothing needs it."""
        stack = [ino]
        while stack:
            ino = stack.pop()
            n = self.dnlink.get(ino, 0) - 1
            if n > 0:
                self.dnlink[ino] = n
                continue
            self.dnlink.pop(ino, None)
            if ino in self.inodes or ino == ROOT:
                continue
            stack.extend(self._drop_durable(ino))

    def _drop_durable(self, ino):
        """Remove the durable files of ``ino``; returns the inodes its durable entries named."""
        self._close_fd(ino)
        for path in (self._content(ino), self._record(ino)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.has_rec.discard(ino)
        return list(self.dentries.pop(ino, {}).values())

    def sync_all(self):
        """Clean shutdown: make the whole volatile state durable, then drop the rest."""
        for node in list(self.inodes.values()):
            if not node.isdir and node.nlink > 0:
                self.sync_file(node)
        for node in list(self.inodes.values()):
            if node.isdir and (node.nlink > 0 or node.ino == ROOT):
                self.sync_dir(node)
        # anything no longer reachable from the root
        reach, queue = {ROOT}, [ROOT]
        while queue:
            for child in self.dentries.get(queue.pop(), {}).values():
                if child not in reach:
                    reach.add(child)
                    if child in self.dentries:
                        queue.append(child)
        for ino in list(self.has_rec):
            if ino not in reach:
                self._drop_durable(ino)
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    # -- volatile helpers -------------------------------------------------------------
    def node(self, ino):
        try:
            return self.inodes[ino]
        except KeyError:
            raise _fuse_error(errno.ENOENT) from None

    def dirnode(self, ino):
        node = self.node(ino)
        if not node.isdir:
            raise _fuse_error(errno.ENOTDIR)
        return node

    def new_inode(self, parent, mode, ctx):
        uid, gid = (ctx.uid, ctx.gid) if ctx is not None else (os.getuid(), os.getgid())
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        node = Inode(self.next_ino, mode, uid, gid, _now())
        self.next_ino += 1
        self.inodes[node.ino] = node
        return node

    def touch_dir(self, d, now=None):
        d.mtime = d.ctime = now or _now()
        d.dirty = True

    def maybe_forget(self, node):
        """Drop an inode from memory once it has no name, no handle and no kernel reference."""
        if node.nlink > 0 or node.lookups > 0 or node.opens > 0 or node.ino == ROOT:
            return
        if self.inodes.pop(node.ino, None) is None:
            return
        node.pages = {}
        self._close_fd(node.ino)
        if self.dnlink.get(node.ino, 0) == 0:
            for child in self._drop_durable(node.ino):
                self._durable_unref(child)

    def attr(self, node):
        import pyfuse3
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = 0
        a.st_size = node.size
        a.st_blksize = 4096
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = node.atime
        a.st_mtime_ns = node.mtime
        a.st_ctime_ns = node.ctime
        return a

    def entry(self, node):
        node.lookups += 1
        return self.attr(node)

    # -- volatile content -------------------------------------------------------------
    def _base_read(self, node, start, stop):
        n = min(stop, node.base) - start
        data = os.pread(self._fd(node.ino), n, start) if n > 0 else b""
        if len(data) < stop - start:
            data += bytes(stop - start - len(data))
        return data

    def read_content(self, node, off, size):
        end = min(off + size, node.size)
        if off >= end:
            return b""
        pages = node.pages
        if not pages:
            return self._base_read(node, off, end)
        out = bytearray()
        pos = off
        while pos < end:
            idx = pos // PAGE
            page = pages.get(idx)
            if page is not None:
                stop = min(end, (idx + 1) * PAGE)
                out += page[pos - idx * PAGE:stop - idx * PAGE]
            else:
                j = idx + 1
                while j * PAGE < end and j not in pages:
                    j += 1
                stop = min(end, j * PAGE)
                out += self._base_read(node, pos, stop)
            pos = stop
        return bytes(out)

    def write_content(self, node, off, buf):
        view = memoryview(buf)
        end = off + len(view)
        pages = node.pages
        pos = off
        while pos < end:
            idx = pos // PAGE
            pstart = idx * PAGE
            stop = min(end, pstart + PAGE)
            page = pages.get(idx)
            if page is None:
                if pos == pstart and stop == pstart + PAGE:
                    pages[idx] = bytearray(view[pos - off:stop - off])
                    pos = stop
                    continue
                page = bytearray(PAGE)
                n = min(PAGE, node.base - pstart)
                if n > 0:
                    data = os.pread(self._fd(node.ino), n, pstart)
                    page[:len(data)] = data
                pages[idx] = page
            page[pos - pstart:stop - pstart] = view[pos - off:stop - off]
            pos = stop
        if end > node.size:
            node.size = end
        node.mtime = node.ctime = _now()
        node.dirty = True

    def truncate(self, node, size):
        if size < node.size:
            node.base = min(node.base, size)
            for idx in [i for i in node.pages if i * PAGE >= size]:
                del node.pages[idx]
            idx = size // PAGE
            page = node.pages.get(idx)
            if page is not None:
                cut = size - idx * PAGE
                page[cut:] = bytes(PAGE - cut)
        node.size = size
        node.dirty = True

    def statfs(self):
        import pyfuse3
        st = os.statvfs(self.backing)
        out = pyfuse3.StatvfsData()
        out.f_bsize = st.f_bsize
        out.f_frsize = st.f_frsize
        out.f_namemax = 255
        if self.zero_statfs:
            out.f_blocks = out.f_bfree = out.f_bavail = 0
            out.f_files = out.f_ffree = out.f_favail = 0
        else:
            out.f_blocks, out.f_bfree, out.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
            out.f_files, out.f_ffree, out.f_favail = st.f_files, st.f_ffree, st.f_favail
        return out


def _handler(fn):
    """Run a synchronous handler; anything but FUSEError is logged and answered EIO."""
    @functools.wraps(fn)
    async def wrapper(self, *args):
        import pyfuse3
        try:
            return fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            log.error("%s failed", fn.__name__, exc_info=True)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def make_operations(fs):
    """pyfuse3 Operations over ``fs`` (a :class:`PowerFS`)."""
    import pyfuse3

    class Operations(pyfuse3.Operations):
        supports_dot_lookup = True
        enable_writeback_cache = False

        # -- names ------------------------------------------------------------
        @_handler
        def lookup(self, parent_inode, name, ctx=None):
            d = fs.dirnode(parent_inode)
            if name == b".":
                return fs.entry(d)
            if name == b"..":
                return fs.entry(fs.node(d.parent))
            ino = d.entries.get(name)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return fs.entry(fs.inodes[ino])

        @_handler
        def forget(self, inode_list):
            for ino, n in inode_list:
                node = fs.inodes.get(ino)
                if node is not None:
                    node.lookups = max(0, node.lookups - n)
                    fs.maybe_forget(node)

        @_handler
        def getattr(self, inode, ctx=None):
            return fs.attr(fs.node(inode))

        @_handler
        def setattr(self, inode, attr, fields, fh, ctx):
            node = fs.node(inode)
            now = _now()
            if fields.update_size:
                if node.isdir:
                    raise pyfuse3.FUSEError(errno.EISDIR)
                if not node.isreg:
                    raise pyfuse3.FUSEError(errno.EINVAL)
                fs.truncate(node, attr.st_size)
                if not fields.update_mtime:
                    node.mtime = now
            if fields.update_mode:
                node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
            if fields.update_uid:
                node.uid = attr.st_uid
            if fields.update_gid:
                node.gid = attr.st_gid
            if fields.update_atime:
                node.atime = attr.st_atime_ns
            if fields.update_mtime:
                node.mtime = attr.st_mtime_ns
            node.ctime = attr.st_ctime_ns if fields.update_ctime else now
            node.dirty = True
            return fs.attr(node)

        @_handler
        def readlink(self, inode, ctx):
            node = fs.node(inode)
            if not stat.S_ISLNK(node.mode):
                raise pyfuse3.FUSEError(errno.EINVAL)
            return node.target

        def _link_new(self, d, name, node):
            d.entries[name] = node.ino
            fs.touch_dir(d, node.ctime)

        def _check_new(self, parent_inode, name):
            d = fs.dirnode(parent_inode)
            if name in d.entries or name in (b".", b".."):
                raise pyfuse3.FUSEError(errno.EEXIST)
            if d.nlink == 0:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return d

        @_handler
        def mkdir(self, parent_inode, name, mode, ctx):
            d = self._check_new(parent_inode, name)
            node = fs.new_inode(d, stat.S_IFDIR | (stat.S_IMODE(mode) & ~ctx.umask), ctx)
            node.entries = {}
            node.nlink = 2
            node.parent = d.ino
            d.nlink += 1
            self._link_new(d, name, node)
            return fs.entry(node)

        @_handler
        def symlink(self, parent_inode, name, target, ctx):
            d = self._check_new(parent_inode, name)
            node = fs.new_inode(d, stat.S_IFLNK | 0o777, ctx)
            node.target = bytes(target)
            node.size = len(node.target)
            self._link_new(d, name, node)
            return fs.entry(node)

        @_handler
        def link(self, inode, new_parent_inode, new_name, ctx):
            node = fs.node(inode)
            if node.isdir:
                raise pyfuse3.FUSEError(errno.EPERM)
            d = self._check_new(new_parent_inode, new_name)
            node.nlink += 1
            node.ctime = _now()
            node.dirty = True
            self._link_new(d, new_name, node)
            return fs.entry(node)

        def _remove(self, parent_inode, name, want_dir):
            d = fs.dirnode(parent_inode)
            ino = d.entries.get(name)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = fs.inodes[ino]
            if want_dir and not node.isdir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            if not want_dir and node.isdir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if want_dir and node.entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            del d.entries[name]
            now = _now()
            fs.touch_dir(d, now)
            self._unref(d, node, now)

        def _unref(self, d, node, now):
            if node.isdir:
                node.nlink = 0
                d.nlink -= 1
            else:
                node.nlink -= 1
            node.ctime = now
            node.dirty = True
            fs.maybe_forget(node)

        @_handler
        def unlink(self, parent_inode, name, ctx):
            self._remove(parent_inode, name, False)

        @_handler
        def rmdir(self, parent_inode, name, ctx):
            self._remove(parent_inode, name, True)

        @_handler
        def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
            if flags & ~pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EINVAL)
            src = fs.dirnode(parent_inode_old)
            dst = fs.dirnode(parent_inode_new)
            ino = src.entries.get(name_old)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = fs.inodes[ino]
            old = dst.entries.get(name_new)
            if old is not None and flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if old == ino:
                return
            victim = fs.inodes[old] if old is not None else None
            if victim is not None:
                if node.isdir and not victim.isdir:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                if not node.isdir and victim.isdir:
                    raise pyfuse3.FUSEError(errno.EISDIR)
                if victim.isdir and victim.entries:
                    raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            if node.isdir:
                a = dst
                while a.ino != ROOT:  # no directory inside itself
                    if a.ino == node.ino:
                        raise pyfuse3.FUSEError(errno.EINVAL)
                    a = fs.inodes[a.parent]
            now = _now()
            del src.entries[name_old]
            dst.entries[name_new] = ino
            fs.touch_dir(src, now)
            fs.touch_dir(dst, now)
            node.ctime = now
            node.dirty = True
            if node.isdir and src is not dst:
                src.nlink -= 1
                dst.nlink += 1
                node.parent = dst.ino
            if victim is not None:
                self._unref(dst, victim, now)

        # -- files ------------------------------------------------------------
        def _open(self, node, flags):
            if node.isdir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY and node.size:
                fs.truncate(node, 0)
                node.mtime = node.ctime = _now()
            node.opens += 1
            fh = fs.next_fh
            fs.next_fh += 1
            fs.files[fh] = node
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)

        @_handler
        def open(self, inode, flags, ctx):
            return self._open(fs.node(inode), flags)

        @_handler
        def create(self, parent_inode, name, mode, flags, ctx):
            d = fs.dirnode(parent_inode)
            ino = d.entries.get(name)
            if ino is not None:
                if flags & os.O_EXCL:
                    raise pyfuse3.FUSEError(errno.EEXIST)
                node = fs.inodes[ino]
                return self._open(node, flags), fs.entry(node)
            d = self._check_new(parent_inode, name)
            node = fs.new_inode(d, stat.S_IFREG | (stat.S_IMODE(mode) & ~ctx.umask), ctx)
            self._link_new(d, name, node)
            return self._open(node, flags), fs.entry(node)

        @_handler
        def read(self, fh, off, size):
            return fs.read_content(fs.files[fh], off, size)

        @_handler
        def write(self, fh, off, buf):
            fs.write_content(fs.files[fh], off, buf)
            return len(buf)

        @_handler
        def flush(self, fh):
            pass

        @_handler
        def release(self, fh):
            node = fs.files.pop(fh)
            node.opens -= 1
            fs.maybe_forget(node)

        @_handler
        def fsync(self, fh, datasync):
            fs.sync_file(fs.files[fh])

        # -- directories ------------------------------------------------------
        @_handler
        def opendir(self, inode, ctx):
            node = fs.dirnode(inode)
            node.opens += 1
            fh = fs.next_fh
            fs.next_fh += 1
            fs.dirs[fh] = [node, None]
            return fh

        @_handler
        def readdir(self, fh, start_id, token):
            handle = fs.dirs[fh]
            node = handle[0]
            if start_id == 0 or handle[1] is None:
                handle[1] = list(node.entries.items())
            snapshot = handle[1]
            for i in range(start_id, len(snapshot)):
                name, ino = snapshot[i]
                if node.entries.get(name) != ino:
                    continue  # removed since the listing began
                child = fs.inodes[ino]
                if not pyfuse3.readdir_reply(token, name, fs.attr(child), i + 1):
                    break
                child.lookups += 1

        @_handler
        def releasedir(self, fh):
            node = fs.dirs.pop(fh)[0]
            node.opens -= 1
            fs.maybe_forget(node)

        @_handler
        def fsyncdir(self, fh, datasync):
            fs.sync_dir(fs.dirs[fh][0])

        @_handler
        def statfs(self, ctx):
            return fs.statfs()

    return Operations()


def run(backing, mountpoint, *, zero_statfs=False):
    """Mount and serve until unmounted (clean: everything made durable) or signalled."""
    import pyfuse3
    import trio

    fs = PowerFS(backing, zero_statfs=zero_statfs)
    fs.load()
    options = {"fsname=powerfs", "subtype=powerfs", "default_permissions"}
    pyfuse3.init(make_operations(fs), mountpoint, options)
    log.info("powerfs mounted %s at %s (pid %d)", backing, mountpoint, os.getpid())

    async def serve():
        async def on_signals(task_status=trio.TASK_STATUS_IGNORED):
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    log.info("signal %d: shutting down cleanly", signum)
                    pyfuse3.terminate()
                    return

        async with trio.open_nursery() as nursery:
            await nursery.start(on_signals)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    clean = False
    try:
        trio.run(serve)
        fs.sync_all()
        clean = True
    finally:
        pyfuse3.close(unmount=True)
        log.info("powerfs unmounted %s%s", mountpoint, "" if clean else " after an error")


def main(argv=None):
    parser = argparse.ArgumentParser(description="FUSE disk with a volatile write cache "
                                     "(SIGKILL = power cut)")
    parser.add_argument("backing", help="directory holding the durable state")
    parser.add_argument("mountpoint")
    parser.add_argument("--zero-statfs", action="store_true",
                        help="report 0 blocks and 0 files in statfs")
    parser.add_argument("--debug", action="store_true", help="log more")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s powerfs[%(process)d] %(levelname)s %(message)s")
    try:
        run(args.backing, args.mountpoint, zero_statfs=args.zero_statfs)
    except Exception:
        log.exception("powerfs failed")
        return 1
    return 0


# ----------------------------------------------------------------------------------
# test driver
# ----------------------------------------------------------------------------------
def _unescape_mount_path(field):
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_type(path):
    """File system type mounted exactly at ``path`` (e.g. ``fuse.powerfs``), or None."""
    path = os.path.realpath(path)
    found = None
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and _unescape_mount_path(parts[1]) == path:
                found = parts[2]
    return found


def _run_quiet(cmd, timeout):
    """Run ``cmd``; its exit status, or None if it did not finish within ``timeout``."""
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return None


class PowerDisk:
    """A powerfs process over ``backing`` mounted at ``mountpoint``.

    ``cut()`` is a power cut (SIGKILL, then a lazy unmount), ``stop()`` a clean
    shutdown, ``restart()`` starts again on the same backing. As a context
    manager it starts on entry and stops on exit. No method waits without a
    timeout. The process log goes to ``log`` (default: ``<backing>.log``).
    """

    READY_TIMEOUT = 30
    STOP_TIMEOUT = 60
    UNMOUNT_TIMEOUT = 30

    def __init__(self, backing, mountpoint, *, zero_statfs=False, log=None):
        self.backing = os.path.abspath(os.fspath(backing))
        self.mountpoint = os.path.abspath(os.fspath(mountpoint))
        self.zero_statfs = zero_statfs
        self.log = os.fspath(log) if log is not None else self.backing.rstrip("/") + ".log"
        self.proc = None

    # -- state --------------------------------------------------------------------
    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def mounted(self):
        return mount_type(self.mountpoint) is not None

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # -- control ------------------------------------------------------------------
    def start(self):
        """Spawn powerfs and wait until it is mounted. Returns self."""
        if self.running:
            raise RuntimeError("powerfs is already running (pid %d)" % self.proc.pid)
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        kind = mount_type(self.mountpoint)
        if kind == "fuse.powerfs":
            self._detach()  # left behind by a process that died
        elif kind is not None:
            raise RuntimeError("%s is already mounted (%s)" % (self.mountpoint, kind))
        cmd = [sys.executable, os.path.abspath(__file__), self.backing, self.mountpoint]
        if self.zero_statfs:
            cmd.append("--zero-statfs")
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.READY_TIMEOUT
        while mount_type(self.mountpoint) != "fuse.powerfs":
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError("powerfs exited with %s before mounting:\n%s"
                                   % (code, self.log_text()))
            if time.monotonic() > deadline:
                self.cut()
                raise RuntimeError("powerfs did not mount within %ss:\n%s"
                                   % (self.READY_TIMEOUT, self.log_text()))
            time.sleep(0.02)
        return self

    def cut(self):
        """Power cut: SIGKILL the process, then detach the dead mount."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=self.UNMOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self._detach()

    def stop(self):
        """Clean shutdown: everything becomes durable. Raises RuntimeError if it was not clean
        (the process had to be killed or failed); the mount is gone either way."""
        proc = self.proc
        if proc is None:
            self._detach()
            return
        status = None
        try:
            if proc.poll() is None:
                rc = _run_quiet(["fusermount3", "-u", self.mountpoint], self.UNMOUNT_TIMEOUT) \
                    if self.mounted() else None
                if rc != 0 and proc.poll() is None:
                    # busy (files still open) or stuck: the signal handler flushes and detaches
                    proc.send_signal(signal.SIGTERM)
            try:
                status = proc.wait(timeout=self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                status = None
        finally:
            self.cut()
        if status != 0:
            raise RuntimeError("powerfs did not shut down cleanly (%s):\n%s"
                               % ("timeout" if status is None else "exit status %d" % status,
                                  self.log_text()))

    def restart(self):
        """Start again on the same backing (stops cleanly first if still running)."""
        if self.running:
            self.stop()
        return self.start()

    def _detach(self):
        if not self.mounted():
            return
        _run_quiet(["fusermount3", "-uz", self.mountpoint], self.UNMOUNT_TIMEOUT)
        deadline = time.monotonic() + self.UNMOUNT_TIMEOUT
        while self.mounted():
            if time.monotonic() > deadline:
                _run_quiet(["umount", "-l", self.mountpoint], self.UNMOUNT_TIMEOUT)
                if self.mounted():
                    raise RuntimeError("cannot unmount %s" % self.mountpoint)
                break
            time.sleep(0.02)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stop()
        except RuntimeError:
            if exc_type is None:
                raise
        return False


# ----------------------------------------------------------------------------------
# checking what a program acknowledged
# ----------------------------------------------------------------------------------
def verify_acknowledged(root, acked):
    """Problems with files a program acknowledged as durable, after a cut and restart.

    ``acked`` maps a path (relative to ``root``) to the bytes it must hold, or to
    None if its removal was acknowledged. Returns a list of human-readable
    problems; empty means every acknowledgement held.
    """
    problems = []
    for rel, want in sorted(acked.items()):
        path = os.path.join(root, rel)
        try:
            with open(path, "rb") as f:
                got = f.read()
        except FileNotFoundError:
            if want is not None:
                problems.append("%s: acknowledged (%d bytes) but missing" % (rel, len(want)))
            continue
        except OSError as exc:
            problems.append("%s: unreadable: %s" % (rel, exc))
            continue
        if want is None:
            problems.append("%s: removal acknowledged but it exists (%d bytes)" % (rel, len(got)))
        elif got != want:
            if len(got) != len(want):
                detail = "%d bytes instead of %d" % (len(got), len(want))
            else:
                first = next(i for i in range(len(got)) if got[i] != want[i])
                detail = "differs from byte %d" % first
            problems.append("%s: acknowledged content lost (%s)" % (rel, detail))
    return problems


if __name__ == "__main__":
    sys.exit(main())
