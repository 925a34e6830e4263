"""Differential test: seeded random operations on a cosfs bucket and on a plain directory.

The same operation is applied to both sides (a bucket of a real mount, and a
directory on the local file system under ``tmp_path``); their outcomes must
agree: the same result, or an OSError with the same errno on both. After each
step the entries it touched are compared (type, size, content, mode, nlink,
user xattrs, symlink target, mtime where it was set explicitly); every
``FULL_EVERY`` steps the whole tree is compared, hard-link groups included.

Operations: create/overwrite, pwrite at random offsets (holes, far beyond
EOF), truncate up and down, rename (also over existing targets, and with
RENAME_NOREPLACE / RENAME_EXCHANGE), unlink, mkdir, rmdir, link, symlink,
readlink, user xattrs (with XATTR_CREATE / XATTR_REPLACE), chmod, chown,
utime with nanoseconds, and up to six descriptors kept open at once: writes,
reads, ftruncate, fsync, fstat, writes through a shared mapping,
copy_file_range between descriptors, posix_fallocate and fallocate's modes
(punched holes, zeroed ranges, with and without KEEP_SIZE), also after the file was
renamed or unlinked. Names longer than NAME_MAX, missing parents and
files used as directories make the error paths agree too.

The chunk size is 64 KiB so writes of up to 300 KiB at random offsets cross
chunk boundaries, leave holes and grow or cut multi-chunk objects cheaply. One
run uses chunks of 256 KiB and files of up to 1,100 KiB, whose chunks are
written partly held (``cosfs.chunkbuf``).

On a mismatch the assertion message holds the seed, the step and the last
operations; the whole log is written next to the test's temporary folder.
``Differential`` is reused by ``contrib/stress.py`` for longer runs.
"""

import ctypes
import errno
import hashlib
import mmap
import os
import random
import stat
import time

import pytest

from conftest import ENC, PLAIN, mounted, write_config

CHUNK = 64 * 1024
NAMES = ["a", "b", "c", "dd", "e"]
LONG_NAME = "n" * 256  # one byte over NAME_MAX
XATTR_NAMES = ["user.k1", "user.k2", "user.long.name"]
MAX_HANDLES = 6
FULL_EVERY = 100
#: Explicit mtimes lie far in the past, so a write or create never produces one by chance.
EXPLICIT_MTIME_BASE = 10 ** 18


AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(src, dst, flags):
    if _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src)


class Mismatch(AssertionError):
    pass


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
FALLOC_MODES = [0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                FALLOC_FL_ZERO_RANGE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd, mode, offset, length):
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def digest(data):
    return "<%d bytes %s>" % (len(data), hashlib.md5(data).hexdigest()[:8])


def short(arg):
    if isinstance(arg, bytes) and len(arg) > 24:
        return digest(arg)
    if isinstance(arg, str) and len(arg) > 40:
        return repr(arg[:12] + "...<%d chars>" % len(arg))
    return repr(arg)


def describe(op):
    return "%s(%s)" % (op[0], ", ".join(short(a) for a in op[1:]))


def user_xattrs(path):
    """{name: value} of user.* xattrs (cosfs' own user.cos.* left out); follows no symlink."""
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if name.startswith("user.") and not name.startswith("user.cos."):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


class Side:
    """One side of the comparison: a root directory and the descriptors opened below it."""

    def __init__(self, root):
        self.root = root
        self.fds = {}

    def p(self, rel):
        return os.path.join(self.root, rel) if rel else self.root

    def close_all(self):
        errors = {}
        for hid in sorted(self.fds):
            try:
                os.close(self.fds[hid])
            except OSError as exc:
                errors[hid] = exc.errno
        self.fds.clear()
        return errors

    # -- operations: each returns a comparable value or raises OSError ------------------
    def apply(self, op):
        kind, args = op[0], op[1:]
        return getattr(self, "op_" + kind)(*args)

    def op_write_file(self, rel, data, mode):
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def op_pwrite(self, rel, offset, data):
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            return os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def op_read(self, rel):
        with open(self.p(rel), "rb") as f:
            return f.read()

    def op_truncate(self, rel, size):
        os.truncate(self.p(rel), size)

    def op_rename(self, src, dst):
        os.rename(self.p(src), self.p(dst))

    def op_rename2(self, src, dst, flags):
        renameat2(self.p(src), self.p(dst), flags)

    def op_chown(self, rel, uid, gid):
        os.chown(self.p(rel), uid, gid)

    def op_unlink(self, rel):
        os.unlink(self.p(rel))

    def op_mkdir(self, rel, mode):
        os.mkdir(self.p(rel), mode)

    def op_rmdir(self, rel):
        os.rmdir(self.p(rel))

    def op_link(self, src, dst):
        os.link(self.p(src), self.p(dst), follow_symlinks=False)

    def op_symlink(self, target, rel):
        os.symlink(target, self.p(rel))

    def op_readlink(self, rel):
        return os.readlink(self.p(rel))

    def op_setxattr(self, rel, name, value, flags):
        os.setxattr(self.p(rel), name, value, flags)

    def op_getxattr(self, rel, name):
        return os.getxattr(self.p(rel), name)

    def op_removexattr(self, rel, name):
        os.removexattr(self.p(rel), name)

    def op_chmod(self, rel, mode):
        os.chmod(self.p(rel), mode)

    def op_utime(self, rel, atime_ns, mtime_ns):
        os.utime(self.p(rel), ns=(atime_ns, mtime_ns))

    def op_open(self, hid, rel, flags, mode):
        fd = os.open(self.p(rel), flags, mode)
        if flags & os.O_ACCMODE == os.O_RDONLY and stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)  # handles are for files (a directory's size is each side's own)
            raise IsADirectoryError(errno.EISDIR, "a reader's handle on a directory")
        self.fds[hid] = fd
        if flags & os.O_ACCMODE == os.O_RDONLY:
            # page by page, as a random reader: cosfs hands segments a reader comes back
            # to to the kernel's page cache (cosfs.fuse.pagefill), where later changes
            # must show
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)

    def op_close(self, hid):
        os.close(self.fds.pop(hid))

    def op_hwrite(self, hid, offset, data):
        return os.pwrite(self.fds[hid], data, offset)

    def op_hread(self, hid, offset, size):
        return os.pread(self.fds[hid], size, offset)

    def op_hpages(self, hid, offset):
        """Three pages from ``offset``, one read each, out of the page cache first: a random
        reader back in a segment (the comparisons read whole files)."""
        fd = self.fds[hid]
        os.posix_fadvise(fd, offset, 3 * 4096, os.POSIX_FADV_DONTNEED)
        return b"".join(os.pread(fd, 4096, offset + i * 4096) for i in range(3))

    def op_htruncate(self, hid, size):
        os.ftruncate(self.fds[hid], size)

    def op_hfsync(self, hid):
        os.fsync(self.fds[hid])

    def op_hmmap(self, hid, offset, data):
        """Store ``data`` at ``offset`` (clipped to the size) through a shared mapping."""
        fd = self.fds[hid]
        size = os.fstat(fd).st_size
        if size == 0:
            return "empty"
        offset = min(offset, size - 1)
        data = data[:size - offset]
        with mmap.mmap(fd, size) as m:
            m[offset:offset + len(data)] = data
            m.flush()
        return len(data)

    def op_hcopy(self, src, dst, count, src_off, dst_off):
        return os.copy_file_range(self.fds[src], self.fds[dst], count, src_off, dst_off)

    def op_hfallocate(self, hid, offset, length):
        os.posix_fallocate(self.fds[hid], offset, length)

    def op_hfalloc(self, hid, mode, offset, length):
        fallocate(self.fds[hid], mode, offset, length)

    def op_hstat(self, hid):
        st = os.fstat(self.fds[hid])
        return (st.st_size, st.st_nlink, stat.S_IMODE(st.st_mode))

    def op_listdir(self, rel):
        return sorted(os.listdir(self.p(rel)))


def outcome(side, op):
    try:
        return ("ok", side.apply(op))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, exc.errno))


class Differential:
    """Generate and apply operations to ``cos`` (mount side) and ``ref`` (reference side).

    ``restart`` (optional) remounts the cosfs side; it is called with no handle open.
    """

    def __init__(self, seed, cos_root, ref_root, *, restart=None, log_path=None,
                 max_size=300 * 1024, fallocate=True):
        self.seed = seed
        #: the mount answers fallocate(2) itself (cosfs's own FUSE session; through
        #: pyfuse3's loop glibc emulates posix_fallocate and other modes fail)
        self.fallocate = fallocate
        self.rng = random.Random(seed)
        self.cos = Side(cos_root)
        self.ref = Side(ref_root)
        self.restart = restart
        self.log_path = log_path
        self.max_size = max_size
        self.log = []
        self.explicit_mtime = {}  # ref st_ino -> the mtime_ns set by utime
        self.hflags = {}  # handle -> open flags
        self.step = 0

    # -- failure reporting ------------------------------------------------------
    def fail(self, what):
        lines = ["%5d %s" % (i, line) for i, line in enumerate(self.log)]
        if self.log_path:
            with open(self.log_path, "w") as f:
                f.write("seed %r\n%s\n" % (self.seed, "\n".join(lines)))
        tail = "\n".join(lines[-60:])
        raise Mismatch("differential mismatch, seed %r, step %d: %s\nfull op log: %s\n"
                       "last operations:\n%s" % (self.seed, self.step, what, self.log_path, tail))

    # -- the reference tree ----------------------------------------------------
    def entries(self):
        """[(rel, kind)] of the reference tree, kind in 'f', 'd', 'l' (root excluded)."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.ref.root):
            rel_dir = os.path.relpath(dirpath, self.ref.root)
            rel_dir = "" if rel_dir == "." else rel_dir
            for name in sorted(dirnames) + sorted(filenames):
                rel = os.path.join(rel_dir, name)
                mode = os.lstat(self.ref.p(rel)).st_mode
                out.append((rel, "d" if stat.S_ISDIR(mode) else
                            "l" if stat.S_ISLNK(mode) else "f"))
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        out.sort()
        return out

    # -- random choices -----------------------------------------------------------
    def size(self):
        r = self.rng.random()
        if r < 0.15:
            return 0
        if r < 0.45:
            return self.rng.randint(1, 4096)
        if r < 0.7:
            k = self.rng.randint(1, 4)
            return max(0, min(self.max_size, k * CHUNK + self.rng.randint(-3, 3)))
        return self.rng.randint(0, self.max_size)

    def offset(self):
        r = self.rng.random()
        if r < 0.2:
            return 0
        if r < 0.6:
            return max(0, self.rng.randint(0, 6) * CHUNK + self.rng.randint(-5, 5))
        if r < 0.62:  # far beyond the end: a long hole
            return self.rng.randint(40, 80) * CHUNK + self.rng.randint(0, 99)
        return self.rng.randint(0, 6 * CHUNK + 1000)

    def data(self):
        n = self.size()
        if self.rng.random() < 0.3:
            return bytes([self.rng.randint(0, 255)]) * n
        return self.rng.randbytes(n)

    def pick(self, entries, kinds, new_chance=0.2):
        """An existing entry of ``kinds`` mostly; sometimes a fresh or broken path."""
        pool = [rel for rel, k in entries if k in kinds]
        dirs = [""] + [rel for rel, k in entries if k == "d"]
        r = self.rng.random()
        if pool and r > new_chance:
            return self.rng.choice(pool)
        if r < 0.03:
            files = [rel for rel, k in entries if k == "f"]
            if files:  # a file used as a directory: ENOTDIR
                return os.path.join(self.rng.choice(files), self.rng.choice(NAMES))
        if r < 0.05:
            return os.path.join("nodir", self.rng.choice(NAMES))
        if r < 0.06:
            return os.path.join(self.rng.choice(dirs), LONG_NAME)
        return os.path.join(self.rng.choice(dirs), self.rng.choice(NAMES))

    def gen(self):
        """The next operation, as a tuple (kind, *args)."""
        rng = self.rng
        ents = self.entries()
        open_hids = sorted(self.ref.fds)
        choices = [("write_file", 8), ("pwrite", 10), ("read", 3), ("truncate", 6),
                   ("rename", 6), ("rename2", 3), ("chown", 1), ("unlink", 4), ("mkdir", 5),
                   ("rmdir", 3), ("link", 3),
                   ("symlink", 2), ("readlink", 1), ("setxattr", 4), ("getxattr", 1),
                   ("removexattr", 2), ("chmod", 2), ("utime", 3), ("listdir", 1),
                   ("open", 6 if len(open_hids) < MAX_HANDLES else 0),
                   ("ropen", 3 if len(open_hids) < MAX_HANDLES else 0)]
        if open_hids:
            choices += [("close", 4), ("hwrite", 12), ("hread", 4), ("htruncate", 3),
                        ("hfsync", 2), ("hstat", 2), ("hmmap", 2), ("hcopy", 2),
                        ("hfallocate", 1), ("hfalloc", 3 if self.fallocate else 0)]
        kinds = [k for k, w in choices for _ in range(w)]
        kind = rng.choice(kinds)
        hid = rng.choice(open_hids) if open_hids else None
        if kind == "write_file":
            return (kind, self.pick(ents, "f"), self.data(), rng.choice([0o644, 0o600, 0o755]))
        if kind == "pwrite":
            return (kind, self.pick(ents, "f"), self.offset(), self.data())
        if kind in ("read", "unlink", "readlink"):
            return (kind, self.pick(ents, {"read": "fl", "unlink": "fl", "readlink": "l"}[kind]))
        if kind == "truncate":
            return (kind, self.pick(ents, "f", 0.05), self.size() + rng.choice([0, 0, CHUNK]))
        if kind == "rename":
            src = self.pick(ents, rng.choice(["f", "f", "d", "l"]), 0.05)
            return (kind, src, self.pick(ents, rng.choice(["f", "d", "l"]), 0.5))
        if kind == "rename2":
            src = self.pick(ents, rng.choice(["f", "f", "d", "l"]), 0.05)
            dst = self.pick(ents, rng.choice(["f", "d", "l"]), 0.3)
            return (kind, src, dst, rng.choice([RENAME_NOREPLACE, RENAME_EXCHANGE]))
        if kind == "chown":
            return (kind, self.pick(ents, "fd", 0.05), rng.choice([0, 1000, -1]),
                    rng.choice([0, 1000, -1]))
        if kind == "mkdir":
            return (kind, self.pick(ents, "d", 0.85), rng.choice([0o755, 0o700]))
        if kind == "rmdir":
            return (kind, self.pick(ents, "d", 0.05))
        if kind == "link":
            return (kind, self.pick(ents, "fl", 0.05), self.pick(ents, "f", 0.7))
        if kind == "symlink":
            target = rng.choice(NAMES + ["%s/%s" % (rng.choice(NAMES), rng.choice(NAMES))])
            return (kind, target, self.pick(ents, "l", 0.8))
        if kind in ("setxattr", "getxattr", "removexattr"):
            rel = self.pick(ents, "fd", 0.05)
            name = rng.choice(XATTR_NAMES)
            if kind == "setxattr":
                flags = rng.choice([0, 0, 0, os.XATTR_CREATE, os.XATTR_REPLACE])
                return (kind, rel, name, rng.randbytes(rng.randint(0, 200)), flags)
            return (kind, rel, name)
        if kind == "chmod":
            return (kind, self.pick(ents, "fd", 0.05), rng.choice([0o644, 0o600, 0o755, 0o4755,
                                                                   0o700, 0o444]))
        if kind == "utime":
            mt = EXPLICIT_MTIME_BASE + rng.randint(0, 10 ** 17)
            return (kind, self.pick(ents, "fd", 0.05), mt - rng.randint(0, 10 ** 9), mt)
        if kind == "listdir":
            return (kind, self.pick(ents, "d", 0.05))
        if kind == "open":
            free = [h for h in range(MAX_HANDLES) if h not in self.ref.fds]
            flags = os.O_RDWR
            for extra, chance in ((os.O_CREAT, 0.5), (os.O_TRUNC, 0.15), (os.O_APPEND, 0.1)):
                if rng.random() < chance:
                    flags |= extra
            if flags & os.O_CREAT and rng.random() < 0.1:
                flags |= os.O_EXCL
            return (kind, rng.choice(free), self.pick(ents, "f", 0.3), flags, 0o644)
        if kind == "ropen":  # a reader's handle, kept open while others write
            free = [h for h in range(MAX_HANDLES) if h not in self.ref.fds]
            # mostly a file no handle has open (only such a file's pages are stored)
            held = {os.fstat(fd).st_ino for fd in self.ref.fds.values()}
            quiet = [rel for rel, k in ents if k == "f"
                     and os.lstat(self.ref.p(rel)).st_ino not in held]
            rel = rng.choice(quiet) if quiet and rng.random() < 0.8 else self.pick(ents, "f", 0.1)
            return ("open", rng.choice(free), rel, os.O_RDONLY, 0o644)
        if kind == "hread" and self.hflags[hid] & os.O_ACCMODE == os.O_RDONLY \
                and rng.random() < 0.8:
            # pages inside the file, in one segment mostly: a reader coming back to it
            pages = os.fstat(self.ref.fds[hid]).st_size // 4096
            return ("hpages", hid, rng.randint(0, max(0, pages - 3)) * 4096)
        if kind == "close" or kind == "hfsync" or kind == "hstat":
            return (kind, hid)
        if kind == "hwrite":
            return (kind, hid, self.offset(), self.data())
        if kind == "hread":
            return (kind, hid, self.offset(), rng.randint(0, 3 * CHUNK))
        if kind == "htruncate":
            return (kind, hid, self.size())
        if kind == "hmmap":
            return (kind, hid, self.offset(), self.data())
        if kind == "hcopy":
            return (kind, hid, rng.choice(open_hids), self.size(), self.offset(), self.offset())
        if kind == "hfallocate":
            # through pyfuse3's loop glibc emulates it with writes, which it refuses
            # (EBADF) on O_APPEND descriptors; local file systems allocate natively
            plain = [h for h in open_hids
                     if self.fallocate or not self.hflags[h] & os.O_APPEND]
            if not plain:
                return ("hstat", hid)
            return (kind, rng.choice(plain), self.offset(), rng.randint(1, 2 * CHUNK))
        if kind == "hfalloc":  # punch holes, zero ranges (whole chunks too), grow
            return (kind, hid, rng.choice(FALLOC_MODES), self.offset(),
                    rng.randint(1, 3 * CHUNK))
        raise AssertionError(kind)

    # -- comparisons -------------------------------------------------------------
    def compare_entry(self, rel):
        got = []
        for side in (self.cos, self.ref):
            try:
                st = os.lstat(side.p(rel))
            except OSError as exc:
                got.append(("err", exc.errno))
                continue
            info = {"type": stat.S_IFMT(st.st_mode)}
            if not stat.S_ISLNK(st.st_mode):
                info["owner"] = (st.st_uid, st.st_gid)
                info["mode"] = stat.S_IMODE(st.st_mode)
                info["nlink"] = st.st_nlink
                info["xattrs"] = user_xattrs(side.p(rel))
            if stat.S_ISREG(st.st_mode):
                info["size"] = st.st_size
                with open(side.p(rel), "rb") as f:
                    info["content"] = digest(f.read())
            elif stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(side.p(rel))
                info["size"] = st.st_size
            elif stat.S_ISDIR(st.st_mode):
                info["names"] = sorted(os.listdir(side.p(rel)))
            got.append(info)
            if side is self.ref:
                ref_ino, ref_mtime = st.st_ino, st.st_mtime_ns
            else:
                cos_mtime = st.st_mtime_ns
        cos, ref = got
        if cos != ref:
            self.fail("entry %r differs:\n  cosfs: %r\n  local: %r" % (rel, cos, ref))
        if isinstance(ref, dict) and ref["type"] != stat.S_IFLNK:
            want = self.explicit_mtime.get(ref_ino)
            if want is not None and ref_mtime == want and cos_mtime != want:
                self.fail("entry %r: mtime_ns %d, expected %d (set by utime)"
                          % (rel, cos_mtime, want))

    def compare_handle(self, hid):
        res = [outcome(side, ("hstat", hid)) for side in (self.cos, self.ref)]
        if res[0] != res[1]:
            self.fail("fstat of handle %d differs: cosfs %r, local %r" % (hid, *res))
        if res[1][0] == "ok":
            size = res[1][1][0]
            data = [outcome(side, ("hread", hid, 0, size + 10)) for side in (self.cos, self.ref)]
            if data[0] != data[1]:
                self.fail("content through handle %d differs: cosfs %s, local %s"
                          % (hid, self._show(data[0]), self._show(data[1])))

    @staticmethod
    def _show(res):
        if res[0] == "ok" and isinstance(res[1], bytes):
            return ("ok", digest(res[1]))
        return res

    def tree(self, side):
        """{rel: (type, size/target, content digest)} and hard-link groups of a whole tree."""
        out, groups = {}, {}
        for dirpath, dirnames, filenames in os.walk(side.root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, side.root)
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        out[rel] = ("f", st.st_size, digest(f.read()), st.st_nlink)
                    groups.setdefault(st.st_ino, set()).add(rel)
                elif stat.S_ISLNK(st.st_mode):
                    out[rel] = ("l", os.readlink(path))
                    groups.setdefault(st.st_ino, set()).add(rel)
                else:
                    out[rel] = ("d", st.st_nlink, stat.S_IMODE(st.st_mode))
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        return out, sorted(sorted(g) for g in groups.values())

    def compare_tree(self):
        cos, ref = self.tree(self.cos), self.tree(self.ref)
        if cos[0] != ref[0]:
            diff = sorted(set(cos[0].items()) ^ set(ref[0].items()))
            self.fail("trees differ: %r" % diff[:20])
        if cos[1] != ref[1]:
            self.fail("hard-link groups differ:\n  cosfs: %r\n  local: %r" % (cos[1], ref[1]))

    # -- the run --------------------------------------------------------------------
    def affected(self, op):
        kind = op[0]
        if kind in ("rename", "rename2", "link"):
            paths = [op[1], op[2]]
        elif kind == "symlink":
            paths = [op[2]]
        elif kind == "open":
            paths = [op[2]]
        elif kind == "hcopy":
            return [], [op[1], op[2]]
        elif kind in ("close", "hwrite", "hread", "hpages", "htruncate", "hfsync", "hstat", "hmmap",
                      "hfallocate", "hfalloc"):
            return [], [op[1]] if kind != "close" else []
        else:
            paths = [op[1]]
        out = []
        for p in paths:
            out.append(p)
            parent = os.path.dirname(p)
            if parent not in out:
                out.append(parent)
        return out, []

    def do(self, op):
        self.log.append(describe(op))
        cos = outcome(self.cos, op)
        ref = outcome(self.ref, op)
        if cos != ref:
            self.fail("%s: cosfs %r, local %r" % (describe(op), self._show(cos), self._show(ref)))
        if op[0] == "open" and cos[0] == "err":
            for side in (self.cos, self.ref):
                side.fds.pop(op[1], None)
        elif op[0] == "open":
            self.hflags[op[1]] = op[3]
        if op[0] == "utime" and ref[0] == "ok":
            self.explicit_mtime[os.stat(self.ref.p(op[1])).st_ino] = op[3]
        paths, hids = self.affected(op)
        for p in paths:
            self.compare_entry(p)
        for h in hids:
            self.compare_handle(h)

    def close_all(self):
        self.log.append("close_all()")
        cos, ref = self.cos.close_all(), self.ref.close_all()
        if cos != ref:
            self.fail("closing all handles: cosfs %r, local %r" % (cos, ref))

    def run(self, steps, *, remount_at=()):
        """Apply ``steps`` random operations; remount before each step in ``remount_at``."""
        for self.step in range(steps):
            if self.step in remount_at and self.restart is not None:
                self.close_all()
                self.log.append("remount()")
                self.restart()
                self.compare_tree()
            self.do(self.gen())
            if self.step % FULL_EVERY == FULL_EVERY - 1:
                self.compare_tree()
        self.close_all()
        self.compare_tree()
        for rel, kind in self.entries():
            self.compare_entry(rel)


@pytest.fixture
def small_chunk_mount(tmp_path, write_buffer, chunk_size, fuse_loop):
    yield from mounted(write_config(str(tmp_path / "fs"), chunk_size=chunk_size,
                                    write_buffer=write_buffer,
                                    extra="fuse_loop: %s\n" % fuse_loop))


STEPS = int(os.environ.get("COSFS_DIFF_STEPS", "3000"))


# The smallest write buffer (two chunks) makes most writes seal chunks before the
# commit, so reads, overwrites and truncates meet chunks in every stage. Chunks of
# four segments (256 KiB) are written partly held (cosfs.chunkbuf): writes inside a
# stored chunk or a hole hold only the segments they touch. The last run is answered by
# pyfuse3's request loop instead of cosfs's own (fuse_loop).
@pytest.mark.parametrize("bucket,seed,write_buffer,chunk_size,fuse_loop", [
    (PLAIN, 1, "16MiB", "64KiB", "native"), (ENC, 2, "128KiB", "64KiB", "native"),
    (ENC, 3, "512KiB", "256KiB", "native"), (ENC, 4, "128KiB", "64KiB", "pyfuse3")])
def test_differential(small_chunk_mount, tmp_path, bucket, seed, write_buffer, chunk_size,
                      fuse_loop):
    m = small_chunk_mount
    ref = tmp_path / "ref"
    ref.mkdir()
    cos_root = os.path.join(m.mnt, bucket, "t")
    os.mkdir(cos_root)
    os.chmod(ref, os.stat(cos_root).st_mode & 0o7777)
    # files of up to four large chunks and a bit
    max_size = 300 * 1024 if chunk_size == "64KiB" else 1100 * 1024
    d = Differential(seed, cos_root, str(ref), restart=m.restart,
                     log_path=str(tmp_path / "oplog.txt"), max_size=max_size,
                     fallocate=fuse_loop == "native")
    t0 = time.monotonic()
    d.run(STEPS, remount_at=(STEPS // 2,))
    print("seed %d: %d steps in %.1fs" % (seed, STEPS, time.monotonic() - t0))


def test_differential_is_reproducible(tmp_path):
    """The same seed yields the same operations (so a failing seed can be replayed)."""
    logs = []
    for run in range(2):
        a, b = tmp_path / ("a%d" % run), tmp_path / ("b%d" % run)
        a.mkdir()
        b.mkdir()
        d = Differential(7, str(a), str(b))
        d.run(150)
        logs.append(d.log)
    assert logs[0] == logs[1]
