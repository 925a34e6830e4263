"""POSIX behaviour of a real cosfs mount, driven through Python's os calls.

The mounts here use a 64 KiB chunk size so that multi-chunk paths (holes,
truncation across chunk boundaries, partial chunk rewrites) are exercised
with small files. Every test that claims persistence restarts the daemon
(``mount.restart()``), which is a clean unmount and a fresh mount of the store.
"""

import concurrent.futures
import ctypes
import ctypes.util
import errno
import mmap
import os
import random
import stat
import subprocess
import time

import pytest

from conftest import APPID, ENC, PLAIN, get, mounted, put, write_config

CHUNK = 64 * 1024

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config_path(tmp_path):
    return write_config(str(tmp_path / "fs"), chunk_size="64KiB", write_buffer="256KiB")


def oserr(fn, *args, **kwargs):
    """The errno that ``fn`` fails with (AssertionError if it succeeds)."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    raise AssertionError("%s%r did not fail" % (getattr(fn, "__name__", fn), args))


# -- the mount root: buckets -------------------------------------------------------
def test_root_lists_buckets(mount):
    assert sorted(os.listdir(mount.mnt)) == sorted([PLAIN, ENC])
    assert stat.S_ISDIR(os.stat(mount.plain).st_mode)


def test_mkdir_creates_bucket_and_rules(mount):
    new = os.path.join(mount.mnt, "photos-" + APPID)
    os.mkdir(new)
    put(os.path.join(new, "a.txt"), b"hello")
    assert "photos-" + APPID in os.listdir(mount.mnt)
    for bad in ("Upper-" + APPID, "under_score-" + APPID, "nodash", "-lead-" + APPID,
                "trail--" + APPID[:-1], "x-12", "other-1250000001", "a" * 70 + "-" + APPID):
        assert oserr(os.mkdir, os.path.join(mount.mnt, bad)) == errno.EINVAL, bad
    assert oserr(os.mkdir, new) == errno.EEXIST
    assert oserr(os.rmdir, new) == errno.ENOTEMPTY
    mount.restart()
    assert get(os.path.join(new, "a.txt")) == b"hello"
    os.unlink(os.path.join(new, "a.txt"))
    os.rmdir(new)
    assert "photos-" + APPID not in os.listdir(mount.mnt)
    mount.restart()
    assert sorted(os.listdir(mount.mnt)) == sorted([PLAIN, ENC])


def test_bucket_removed_while_an_object_is_open(mount):
    new = os.path.join(mount.mnt, "short-" + APPID)
    os.mkdir(new)
    p = os.path.join(new, "f")
    data = os.urandom(2 * CHUNK + 1)
    put(p, data)
    fd = os.open(p, os.O_RDONLY)
    os.unlink(p)
    os.rmdir(new)                                               # empty: the open file has no name
    assert os.pread(fd, len(data) + 1, 0) == data
    os.close(fd)
    os.mkdir(new)                                               # the name is free again
    assert os.listdir(new) == []
    mount.restart()
    assert os.listdir(new) == []
    assert os.statvfs(mount.mnt).f_bsize > 0


def test_root_refuses_files_and_symlinks(mount):
    root_file = os.path.join(mount.mnt, "loose.txt")
    assert oserr(open, root_file, "wb") == errno.EPERM
    assert oserr(os.symlink, PLAIN, os.path.join(mount.mnt, "link")) == errno.EPERM
    assert oserr(os.mknod, root_file) == errno.EPERM
    put(os.path.join(mount.plain, "f"), b"x")
    assert oserr(os.link, os.path.join(mount.plain, "f"), root_file) == errno.EPERM
    assert oserr(os.rename, os.path.join(mount.plain, "f"), root_file) in (errno.EPERM,
                                                                         errno.EXDEV)
    assert oserr(os.rename, mount.plain, os.path.join(mount.mnt, "x-" + APPID)) == errno.EPERM
    assert sorted(os.listdir(mount.mnt)) == sorted([PLAIN, ENC])


# -- file content ---------------------------------------------------------------------
class Model:
    """A file on the mount and the bytes it should hold."""

    def __init__(self, path):
        self.path = path
        self.data = bytearray()
        put(path, b"")

    def pwrite(self, off, data):
        fd = os.open(self.path, os.O_WRONLY)
        try:
            assert os.pwrite(fd, data, off) == len(data)
        finally:
            os.close(fd)
        if off > len(self.data):
            self.data.extend(bytes(off - len(self.data)))
        self.data[off:off + len(data)] = data

    def truncate(self, size):
        os.truncate(self.path, size)
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    def check(self):
        assert os.stat(self.path).st_size == len(self.data)
        got = get(self.path)
        assert len(got) == len(self.data)
        assert got == bytes(self.data), "content differs at %d" % next(
            i for i in range(len(got)) if got[i] != self.data[i])


@pytest.mark.parametrize("bucket", ["plain", "enc"])
def test_write_anywhere_holes_truncate(mount, bucket):
    m = Model(os.path.join(getattr(mount, bucket), "model.bin"))
    rnd = random.Random(7)
    m.pwrite(0, rnd.randbytes(1000))
    m.pwrite(3 * CHUNK + 17, rnd.randbytes(5000))           # hole over chunks 0..3
    m.check()
    assert get(m.path)[1000:3 * CHUNK] == bytes(3 * CHUNK - 1000)
    m.pwrite(CHUNK - 10, rnd.randbytes(20))                   # across a chunk boundary
    m.pwrite(2 * CHUNK, rnd.randbytes(CHUNK))                 # exactly one chunk
    m.check()
    m.truncate(2 * CHUNK + 5)                                 # down, into a chunk
    m.check()
    m.truncate(5 * CHUNK + 3)                                 # up: zeros
    m.check()
    m.pwrite(4 * CHUNK - 1, b"AB")                            # into the grown zero area
    m.truncate(CHUNK)                                         # down to a boundary
    m.check()
    m.truncate(CHUNK + 1)
    m.check()
    m.truncate(0)
    m.check()
    m.pwrite(CHUNK * 2 + 1, b"tail")
    m.check()
    for _ in range(30):
        op = rnd.random()
        if op < 0.7:
            off = rnd.randrange(0, 6 * CHUNK)
            m.pwrite(off, rnd.randbytes(rnd.choice([1, 100, 4096, CHUNK, CHUNK + 7])))
        else:
            m.truncate(rnd.randrange(0, 7 * CHUNK))
    m.check()
    mount.restart()
    m.check()


def test_append_and_read_write_handles(mount):
    p = os.path.join(mount.enc, "log.txt")
    expected = b""
    for i in range(20):
        line = b"line %d %s\n" % (i, b"x" * (i * 997))
        with open(p, "ab") as f:
            f.write(line)
        expected += line
    assert get(p) == expected
    fd = os.open(p, os.O_RDWR | os.O_APPEND)
    os.write(fd, b"END")
    os.lseek(fd, 0, os.SEEK_SET)
    assert os.read(fd, 4) == b"line"
    os.close(fd)
    assert get(p) == expected + b"END"
    with open(p, "r+b") as f:                                 # rewrite in the middle
        f.seek(5)
        f.write(b"ZZZ")
        f.flush()
        f.seek(0)
        assert f.read(10) == b"line ZZZli"
    with open(p, "wb") as f:                                  # O_TRUNC
        f.write(b"new")
    assert get(p) == b"new"
    mount.restart()
    assert get(p) == b"new"


def test_o_excl_and_basic_errors(mount):
    p = os.path.join(mount.plain, "excl")
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    assert oserr(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert oserr(os.open, os.path.join(mount.plain, "nope"), os.O_RDONLY) == errno.ENOENT
    assert oserr(os.open, mount.plain, os.O_WRONLY) == errno.EISDIR
    assert oserr(os.listdir, p) == errno.ENOTDIR
    assert oserr(os.mkdir, os.path.join(p, "sub")) == errno.ENOTDIR


def test_read_only_open_with_o_trunc_truncates(mount):
    # as on ext4: O_TRUNC needs write permission and truncates whatever the access mode;
    # the kernel shows size 0 after it, so the object must be empty too
    p = os.path.join(mount.enc, "rdonly-trunc")
    put(p, os.urandom(3 * CHUNK))
    fd = os.open(p, os.O_RDONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0 and os.read(fd, 100) == b""
    finally:
        os.close(fd)
    mount.restart()
    assert get(p) == b"" and os.stat(p).st_size == 0


def test_unlink_while_open(mount):
    p = os.path.join(mount.enc, "victim")
    data = os.urandom(3 * CHUNK + 123)
    put(p, data)
    r1 = os.open(p, os.O_RDONLY)
    r2 = os.open(p, os.O_RDWR)
    os.unlink(p)
    assert "victim" not in os.listdir(mount.enc)
    assert oserr(os.stat, p) == errno.ENOENT
    assert os.pread(r1, len(data) + 10, 0) == data
    os.pwrite(r2, b"more", len(data))
    os.fsync(r2)
    os.close(r2)
    assert os.pread(r1, 10, len(data)) == b"more"
    assert os.fstat(r1).st_size == len(data) + 4
    put(p, b"a new object under the old name")
    assert os.pread(r1, 100, 0) == data[:100]
    os.close(r1)
    assert get(p) == b"a new object under the old name"
    mount.restart()
    assert os.listdir(mount.enc) == ["victim"]
    assert get(p) == b"a new object under the old name"


def test_removed_data_leaves_the_store(mount):
    """Blobs of unlinked, replaced and truncated objects are deleted (plain bucket: the
    bytes are visible in the blob files, so their absence is checkable)."""
    marks = [os.urandom(32) for _ in range(4)]
    paths = [os.path.join(mount.plain, "gone%d" % i) for i in range(4)]
    for p, mark in zip(paths, marks):
        put(p, mark * (3 * CHUNK // 32))
    fd = os.open(paths[0], os.O_RDONLY)
    os.unlink(paths[0])                                       # unlinked while open
    assert os.pread(fd, 32, CHUNK) == marks[0]
    os.close(fd)
    os.unlink(paths[1])                                       # plain unlink
    put(paths[2] + ".new", b"replacement")
    os.rename(paths[2] + ".new", paths[2])                    # replaced by rename
    os.truncate(paths[3], 0)                                  # truncated
    mount.stop()
    blobs = os.path.join(mount.store, "blobs")
    for d, _, files in os.walk(blobs):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                data = fh.read()
            assert not any(m in data for m in marks), f
    mount.start()
    assert os.listdir(mount.plain) == ["gone2", "gone3"]


# -- rename ----------------------------------------------------------------------------
def test_rename_replaces_atomically(mount):
    a, b = os.path.join(mount.plain, "a"), os.path.join(mount.plain, "b")
    put(a, b"A" * 100000)
    put(b, b"B" * 10)
    rb = os.open(b, os.O_RDONLY)
    os.rename(a, b)
    assert get(b) == b"A" * 100000
    assert not os.path.exists(a)
    assert os.read(rb, 100) == b"B" * 10                    # old target still open
    os.close(rb)
    os.makedirs(os.path.join(mount.plain, "d1/sub"))
    put(os.path.join(mount.plain, "d1/sub/f"), b"f")
    os.mkdir(os.path.join(mount.plain, "d2"))
    os.rename(os.path.join(mount.plain, "d1"), os.path.join(mount.plain, "d2"))  # empty target
    assert get(os.path.join(mount.plain, "d2/sub/f")) == b"f"
    os.mkdir(os.path.join(mount.plain, "d3"))
    put(os.path.join(mount.plain, "d3/x"), b"")
    assert oserr(os.rename, os.path.join(mount.plain, "d3"),
                 os.path.join(mount.plain, "d2")) == errno.ENOTEMPTY
    assert oserr(os.rename, b, os.path.join(mount.plain, "d3")) == errno.EISDIR
    assert oserr(os.rename, os.path.join(mount.plain, "d3"), b) == errno.ENOTDIR
    assert oserr(os.rename, os.path.join(mount.plain, "d2"),
                 os.path.join(mount.plain, "d2/sub/inside")) == errno.EINVAL
    os.link(b, os.path.join(mount.plain, "b2"))
    os.rename(b, os.path.join(mount.plain, "b2"))                # same inode: nothing happens
    assert os.path.exists(b) and os.stat(b).st_nlink == 2
    os.unlink(os.path.join(mount.plain, "b2"))
    os.rename(b, os.path.join(mount.plain, "d2/sub/moved"))   # across directories
    assert os.stat(os.path.join(mount.plain, "d2")).st_nlink == 3
    mount.restart()
    assert sorted(os.listdir(mount.plain)) == ["d2", "d3"]
    assert get(os.path.join(mount.plain, "d2/sub/moved")) == b"A" * 100000
    assert sorted(os.listdir(os.path.join(mount.plain, "d2/sub"))) == ["f", "moved"]


def _renameat2():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        pytest.skip("libc has no renameat2")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

    def call(old, new, flags):
        AT_FDCWD = -100
        if fn(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), old)
    return call


def test_renameat2_flags(mount):
    renameat2 = _renameat2()
    a, b = os.path.join(mount.enc, "a"), os.path.join(mount.enc, "b")
    put(a, b"aaa")
    put(b, b"bbb")
    assert oserr(renameat2, a, b, 1) == errno.EEXIST           # RENAME_NOREPLACE
    renameat2(a, os.path.join(mount.enc, "c"), 1)
    c = os.path.join(mount.enc, "c")
    renameat2(c, b, 2)                                          # RENAME_EXCHANGE
    assert get(b) == b"aaa" and get(c) == b"bbb"
    os.mkdir(os.path.join(mount.enc, "dir"))
    renameat2(c, os.path.join(mount.enc, "dir"), 2)             # exchange file and dir
    assert get(os.path.join(mount.enc, "dir")) == b"bbb"
    assert os.path.isdir(c)
    assert oserr(renameat2, b, os.path.join(mount.enc, "missing"), 2) == errno.ENOENT
    mount.restart()
    assert get(b) == b"aaa" and os.path.isdir(c)
    assert get(os.path.join(mount.enc, "dir")) == b"bbb"


def test_exdev_between_buckets(mount):
    a = os.path.join(mount.plain, "a")
    put(a, b"data")
    os.mkdir(os.path.join(mount.plain, "dir"))
    assert oserr(os.rename, a, os.path.join(mount.enc, "a")) == errno.EXDEV
    assert oserr(os.rename, os.path.join(mount.plain, "dir"),
                 os.path.join(mount.enc, "dir")) == errno.EXDEV
    assert oserr(os.link, a, os.path.join(mount.enc, "a")) == errno.EXDEV
    assert get(a) == b"data"


# -- directories, links ------------------------------------------------------------
def test_nested_dirs_persist(mount):
    base = mount.plain
    os.makedirs(os.path.join(base, "a/b/c/d"))
    os.makedirs(os.path.join(base, "empty/inner"))
    os.mkdir(os.path.join(base, "solo"))
    put(os.path.join(base, "a/b/c/d/leaf"), b"leaf")
    assert oserr(os.rmdir, os.path.join(base, "a/b")) == errno.ENOTEMPTY
    assert oserr(os.mkdir, os.path.join(base, "a")) == errno.EEXIST
    assert os.stat(os.path.join(base, "a/b")).st_nlink == 3
    assert oserr(os.rmdir, os.path.join(base, "a/b/c/d/leaf")) == errno.ENOTDIR
    mount.restart()
    assert sorted(os.listdir(base)) == ["a", "empty", "solo"]
    assert os.listdir(os.path.join(base, "empty")) == ["inner"]
    assert os.listdir(os.path.join(base, "empty/inner")) == []
    assert get(os.path.join(base, "a/b/c/d/leaf")) == b"leaf"
    os.unlink(os.path.join(base, "a/b/c/d/leaf"))
    for d in ("a/b/c/d", "a/b/c", "a/b", "a", "empty/inner"):
        os.rmdir(os.path.join(base, d))
    mount.restart()
    assert sorted(os.listdir(base)) == ["empty", "solo"]


def test_symlinks(mount):
    base = mount.enc
    put(os.path.join(base, "target"), b"T")
    os.symlink("target", os.path.join(base, "rel"))
    os.symlink("/nonexistent/far/away", os.path.join(base, "dangling"))
    os.mkdir(os.path.join(base, "d"))
    os.symlink("../target", os.path.join(base, "d/up"))
    assert os.readlink(os.path.join(base, "rel")) == "target"
    assert get(os.path.join(base, "rel")) == b"T"
    assert get(os.path.join(base, "d/up")) == b"T"
    st = os.lstat(os.path.join(base, "dangling"))
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("/nonexistent/far/away")
    assert oserr(os.stat, os.path.join(base, "dangling")) == errno.ENOENT
    assert oserr(os.symlink, "x", os.path.join(base, "rel")) == errno.EEXIST
    mount.restart()
    assert os.readlink(os.path.join(base, "dangling")) == "/nonexistent/far/away"
    assert get(os.path.join(base, "d/up")) == b"T"
    os.unlink(os.path.join(base, "rel"))
    assert get(os.path.join(base, "target")) == b"T"


def test_hard_links(mount):
    a = os.path.join(mount.plain, "orig")
    put(a, b"shared")
    os.mkdir(os.path.join(mount.plain, "sub"))
    b = os.path.join(mount.plain, "sub/alias")
    os.link(a, b)
    assert os.stat(a).st_nlink == 2 and os.stat(a).st_ino == os.stat(b).st_ino
    with open(b, "ab") as f:
        f.write(b" content")
    assert get(a) == b"shared content"
    assert oserr(os.link, os.path.join(mount.plain, "sub"),
                 os.path.join(mount.plain, "dirlink")) == errno.EPERM
    mount.restart()
    assert os.stat(b).st_nlink == 2 and get(b) == b"shared content"
    os.unlink(a)
    assert os.stat(b).st_nlink == 1 and get(b) == b"shared content"
    mount.restart()
    assert get(b) == b"shared content" and not os.path.exists(a)


def test_attributes_with_nanoseconds(mount):
    p = os.path.join(mount.enc, "attrs")
    d = os.path.join(mount.enc, "adir")
    put(p, b"x" * 5000)
    os.mkdir(d)
    os.chown(p, 1234, 5678)                                   # before chmod: chown drops suid
    os.chmod(p, 0o4751)
    os.chmod(d, 0o700)
    os.chown(d, 42, 43)
    times = (1_234_567_890_123_456_789, 1_600_000_000_987_654_321)
    os.utime(p, ns=times)
    os.utime(d, ns=(1_000_000_001, 2_000_000_002))
    os.symlink("attrs", os.path.join(mount.enc, "ln"))
    os.chown(os.path.join(mount.enc, "ln"), 7, 8, follow_symlinks=False)
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == times
    assert os.getxattr(p, "user.cos.server-side-encryption") == b"AES256"
    mount.restart()
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o4751 and (st.st_uid, st.st_gid) == (1234, 5678)
    assert (st.st_atime_ns, st.st_mtime_ns) == times
    assert st.st_size == 5000 and get(p) == b"x" * 5000
    st = os.stat(d)
    assert stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (42, 43)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_001, 2_000_000_002)
    assert os.lstat(os.path.join(mount.enc, "ln")).st_uid == 7
    assert os.getxattr(p, "user.cos.server-side-encryption") == b"AES256"
    before = os.stat(p).st_ctime_ns
    time.sleep(0.01)
    os.chmod(p, 0o644)
    assert os.stat(p).st_ctime_ns > before


def test_mtime_follows_writes(mount):
    p = os.path.join(mount.plain, "m")
    put(p, b"1")
    os.utime(p, ns=(5, 5))
    with open(p, "ab") as f:
        f.write(b"2")
    assert os.stat(p).st_mtime_ns > 10 ** 18
    os.utime(p, ns=(7, 9))
    mount.restart()
    assert os.stat(p).st_mtime_ns == 9


def test_touch_never_moves_a_file_back_in_time(mount):
    """The issue's loop: create -> m1; utime(m1 - 10 s); touch -> m2 >= m1. ``touch``
    (UTIME_NOW) is dated by the kernel, the create and the write by the daemon."""
    for bucket in (mount.plain, mount.enc):
        for i in range(300):
            p = os.path.join(bucket, "touched%d" % (i % 7))
            put(p, b"x" * (i % 3))
            m1 = os.stat(p).st_mtime_ns
            os.utime(p, ns=(m1 - 10 ** 10, m1 - 10 ** 10))
            assert os.stat(p).st_mtime_ns == m1 - 10 ** 10     # explicit times are exact
            os.utime(p, None)
            st = os.stat(p)
            assert st.st_mtime_ns >= m1, (i, st.st_mtime_ns - m1)
            assert st.st_atime_ns == st.st_mtime_ns <= st.st_ctime_ns


def touch(path, rnd):
    """Mark ``path`` changed now, as ``touch`` the program or ``os.utime(path, None)``."""
    if rnd.random() < 0.3:
        subprocess.run(["touch", path], check=True)
    else:
        os.utime(path, None)


def test_make_style_ordering(mount):
    """A target written after its sources is never older than any of them; a source
    touched or rewritten after the target is never older than the target."""
    rnd = random.Random(17)
    d = os.path.join(mount.enc, "build")
    os.mkdir(d)
    sources = [os.path.join(d, "s%d.c" % i) for i in range(3)]
    target = os.path.join(d, "prog")
    for s in sources:
        put(s, b"int x;")
    for i in range(300):
        for s in sources:
            touch(s, rnd)
        newest = max(os.stat(s).st_mtime_ns for s in sources)
        if i % 2:
            put(target, b"built %d" % i)               # a new version of the target
        else:
            with open(target + ".tmp", "wb") as f:     # a new file renamed onto it
                f.write(b"built %d" % i)
            os.rename(target + ".tmp", target)
        built = os.stat(target).st_mtime_ns
        assert built >= newest, (i, built - newest)
        s = rnd.choice(sources)
        if i % 3 == 0:
            put(s, b"int y;")                          # an edit
        else:
            touch(s, rnd)
        assert os.stat(s).st_mtime_ns >= built, (i, os.stat(s).st_mtime_ns - built)


def test_statfs(mount):
    sv = os.statvfs(mount.plain)
    assert sv.f_bsize > 0 and sv.f_blocks > 0 and sv.f_bavail <= sv.f_blocks
    assert sv.f_namemax == 255
    assert sv.f_files >= sv.f_ffree > 0


def test_fsync_survives_a_daemon_kill(mount):
    p = os.path.join(mount.enc, "durable")
    q = os.path.join(mount.plain, "durable2")
    data = os.urandom(4 * CHUNK + 5)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    fd2 = os.open(q, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd2, data[:1000])
    os.fdatasync(fd2)
    mount.kill9()
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        os.close(fd2)
    except OSError:
        pass
    mount.start()
    assert get(p) == data
    assert get(q) == data[:1000]


def test_shared_mmap(mount):
    p = os.path.join(mount.enc, "mapped")
    data = bytearray(os.urandom(3 * CHUNK))
    put(p, data)
    with open(p, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
        assert mm[:] == data
        mm[CHUNK - 2:CHUNK + 2] = b"MMAP"
        mm[-1:] = b"!"
        data[CHUNK - 2:CHUNK + 2] = b"MMAP"
        data[-1:] = b"!"
        mm.flush()
        mm.close()
    assert get(p) == data
    with open(p, "rb") as f:                                   # read-only map
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        assert mm[CHUNK - 2:CHUNK + 2] == b"MMAP"
        mm.close()
    mount.restart()
    assert get(p) == data


# -- xattrs ------------------------------------------------------------------------------
def test_user_xattrs(mount):
    p = os.path.join(mount.plain, "x")
    put(p, b"")
    os.setxattr(p, "user.color", b"blue")
    os.setxattr(p, "user.empty", b"")
    os.setxattr(p, "user.bin", bytes(range(256)) * 4)
    assert os.getxattr(p, "user.color") == b"blue"
    assert os.getxattr(p, "user.empty") == b""
    assert sorted(os.listxattr(p)) == ["user.bin", "user.color", "user.empty"]
    assert oserr(os.setxattr, p, "user.color", b"red", os.XATTR_CREATE) == errno.EEXIST
    assert oserr(os.setxattr, p, "user.nope", b"v", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.color", b"red", os.XATTR_REPLACE)
    os.setxattr(p, "user.new", b"n", os.XATTR_CREATE)
    assert os.getxattr(p, "user.color") == b"red"
    assert oserr(os.getxattr, p, "user.nope") == errno.ENODATA
    os.removexattr(p, "user.empty")
    assert oserr(os.removexattr, p, "user.empty") == errno.ENODATA
    d = os.path.join(mount.plain, "dir")
    os.mkdir(d)
    os.setxattr(d, "user.on-dir", b"1")
    os.symlink("x", os.path.join(mount.plain, "sl"))
    mount.restart()
    assert sorted(os.listxattr(p)) == ["user.bin", "user.color", "user.new"]
    assert os.getxattr(p, "user.bin") == bytes(range(256)) * 4
    assert os.getxattr(d, "user.on-dir") == b"1"
    for ns in ("trusted.x", "security.x", "system.x", "other.x"):
        e = oserr(os.setxattr, p, ns, b"v")
        assert e in (errno.ENOTSUP, errno.EOPNOTSUPP), (ns, e)
    assert oserr(os.getxattr, p, "trusted.x") in (errno.ENOTSUP, errno.ENODATA)


def test_xattr_limits(mount):
    p = os.path.join(mount.plain, "big")
    put(p, b"")
    os.setxattr(p, "user.big", b"v" * 60000)
    assert os.getxattr(p, "user.big") == b"v" * 60000
    assert oserr(os.setxattr, p, "user." + "n" * 300, b"") == errno.ERANGE
    for fn, args in ((os.setxattr, (b"v",)), (os.getxattr, ()), (os.removexattr, ())):
        assert oserr(fn, p, "user.", *args) == errno.EINVAL       # a bare namespace, as ext4
    for i in range(3):
        os.setxattr(p, "user.more%d" % i, b"m" * 60000)
    assert oserr(os.setxattr, p, "user.toomuch", b"t" * 60000) == errno.ENOSPC
    os.setxattr(p, "user.more0", b"m" * 50000)                 # replacing frees room
    os.setxattr(p, "user.fits", b"f" * 9000)
    assert sorted(os.listxattr(p)) == ["user.big", "user.fits", "user.more0", "user.more1",
                                       "user.more2"]


# -- scale and names -----------------------------------------------------------------------
@pytest.mark.timeout(400)
def test_directory_with_100000_entries(mount):
    d = os.path.join(mount.plain, "many")
    os.mkdir(d)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)

    def create(first):
        for i in range(first, 100_000, 2):
            os.mknod("f%06d" % i, 0o644 | stat.S_IFREG, dir_fd=fd)
    try:
        # two threads keep the daemon busy while the other waits for its reply
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(create, k) for k in range(2)]:
                f.result()
    finally:
        os.close(fd)
    names = os.listdir(d)
    assert len(names) == 100_000
    assert sorted(names) == ["f%06d" % i for i in range(100_000)]
    count = 0
    with os.scandir(d) as it:
        for entry in it:
            count += 1
            if count % 20000 == 0:                           # mutate while listing
                os.unlink(os.path.join(d, entry.name))
    assert count == 100_000
    assert len(os.listdir(d)) == 100_000 - 5
    mount.restart()
    names = os.listdir(d)
    assert len(names) == 100_000 - 5 and len(set(names)) == len(names)


def test_key_length_limit(mount):
    base = mount.plain
    part = "p" * 200
    path = base
    key_len = 0
    for _ in range(4):                                          # key of 4*200 + 3 = 803 bytes
        path = os.path.join(path, part)
        os.mkdir(path)
        key_len += len(part) + 1
    room = 850 - key_len                                        # name bytes left: 46
    put(os.path.join(path, "n" * room), b"ok")
    assert oserr(put, os.path.join(path, "n" * (room + 1)), b"") == errno.ENAMETOOLONG
    assert oserr(os.mkdir, os.path.join(path, "m" * (room + 5))) == errno.ENAMETOOLONG
    # a directory is also the marker object "key/": its key must leave room for the "/"
    assert oserr(os.mkdir, os.path.join(path, "m" * room)) == errno.ENAMETOOLONG
    os.mkdir(os.path.join(path, "m" * (room - 1)))
    os.mkdir(os.path.join(base, "short"))
    assert oserr(os.rename, os.path.join(base, "short"),
                 os.path.join(path, "s" * room)) == errno.ENAMETOOLONG
    assert oserr(os.symlink, "t", os.path.join(path, "s" * (room + 1))) == errno.ENAMETOOLONG
    assert oserr(os.rename, os.path.join(path, "n" * room),
                 os.path.join(path, "r" * (room + 1))) == errno.ENAMETOOLONG
    assert oserr(open, os.path.join(base, "x" * 256), "wb") == errno.ENAMETOOLONG
    mount.restart()
    assert get(os.path.join(path, "n" * room)) == b"ok"
    assert os.listdir(os.path.join(path, "m" * (room - 1))) == []


def test_rename_dir_cannot_push_keys_past_the_limit(mount):
    base = mount.plain
    deep = os.path.join(base, "d", "e" * 200, "f" * 200, "g" * 200)
    os.makedirs(deep)
    put(os.path.join(deep, "h" * 40), b"x")                    # key 2+600+3+40 = 645 bytes
    os.mkdir(os.path.join(base, "L" * 250))
    # moving "d" below a 250-byte directory would make that key 896 bytes long
    assert oserr(os.rename, os.path.join(base, "d"),
                 os.path.join(base, "L" * 250, "d")) == errno.ENAMETOOLONG
    assert get(os.path.join(deep, "h" * 40)) == b"x"
    # an empty directory deep inside counts with its "/": 2+600+3+238+1 = 844 bytes now
    os.mkdir(os.path.join(deep, "k" * 238))
    os.mkdir(os.path.join(base, "M" * 5))
    os.rename(os.path.join(base, "d"), os.path.join(base, "M" * 5, "d"))          # 850
    os.rename(os.path.join(base, "M" * 5, "d"), os.path.join(base, "d"))
    os.mkdir(os.path.join(base, "N" * 6))
    assert oserr(os.rename, os.path.join(base, "d"),
                 os.path.join(base, "N" * 6, "d")) == errno.ENAMETOOLONG           # 851


def test_many_files_survive_remount(mount):
    rnd = random.Random(3)
    files = {}
    for i in range(60):
        sub = os.path.join(rnd.choice([mount.plain, mount.enc]), "t%d" % (i % 5))
        os.makedirs(sub, exist_ok=True)
        p = os.path.join(sub, "f%d" % i)
        files[p] = rnd.randbytes(rnd.choice([0, 1, 500, CHUNK, 2 * CHUNK + 9]))
        put(p, files[p])
    mount.restart()
    for p, data in files.items():
        assert get(p) == data


# -- concurrency ---------------------------------------------------------------------------
@pytest.mark.parametrize("bucket", ["plain", "enc"])
def test_concurrent_writers_share_chunks(mount, bucket):
    """Four threads write interleaved, disjoint stripes of the same chunks through their own
    descriptors, with fsyncs; every stripe ends with its owner's last write."""
    p = os.path.join(getattr(mount, bucket), "shared")
    put(p, b"")
    n_chunks, writers, reps = 16, 4, 2
    stripe = CHUNK // writers // 2 + 13                        # not aligned to anything

    def stripes(k):
        for idx in range(n_chunks):
            for s in range(k, CHUNK // stripe + 1, writers):
                off = idx * CHUNK + s * stripe
                length = min(stripe, (idx + 1) * CHUNK - off)
                if length > 0:
                    yield idx, off, length

    def work(k):
        fd = os.open(p, os.O_WRONLY)
        rnd = random.Random(k)
        try:
            for rep in range(reps):
                mine = list(stripes(k))
                rnd.shuffle(mine)
                for idx, off, length in mine:
                    os.pwrite(fd, bytes([(k * 31 + idx + rep) % 256]) * length, off)
                    if rnd.random() < 0.01:
                        os.fsync(fd)
        finally:
            os.close(fd)

    expected = bytearray(n_chunks * CHUNK)
    for k in range(writers):
        for idx, off, length in stripes(k):
            expected[off:off + length] = bytes([(k * 31 + idx + reps - 1) % 256]) * length
    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        for f in [pool.submit(work, k) for k in range(writers)]:
            f.result()
    assert get(p) == expected
    mount.restart()
    assert get(p) == expected


def test_rename_replacement_is_atomic_for_readers(mount):
    target = os.path.join(mount.enc, "target")
    versions = [bytes([i]) * (2 * CHUNK + i * 1000) for i in range(1, 30)]
    put(target, versions[0])

    def writer():
        for i, v in enumerate(versions[1:]):
            tmp = os.path.join(mount.enc, ".tmp%d" % i)
            put(tmp, v)
            os.rename(tmp, target)

    reads = 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(writer)
        while not done.done() or reads < 5:
            data = get(target)
            assert data in versions, (len(data), set(data))
            reads += 1
        done.result()
    assert get(target) == versions[-1] and os.listdir(mount.enc) == ["target"]


def test_huge_sparse_offsets(mount):
    p = os.path.join(mount.enc, "sparse")
    far = 1 << 40
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"far", far)
        assert os.fstat(fd).st_size == far + 3
        assert os.pread(fd, 10, far - 5) == bytes(5) + b"far"
        assert os.pread(fd, 4096, 500 << 30) == bytes(4096)
        os.ftruncate(fd, far // 2)
        assert os.fstat(fd).st_size == far // 2
        os.ftruncate(fd, 5)
        assert os.pread(fd, 10, 0) == bytes(5)
    finally:
        os.close(fd)
    os.truncate(p, 1 << 50)
    mount.restart()
    assert os.stat(p).st_size == 1 << 50
    with open(p, "rb") as f:
        f.seek((1 << 50) - 3)
        assert f.read() == bytes(3)


@pytest.mark.parametrize("bucket", ["plain", "enc"])
def test_st_blocks_counts_what_is_stored(mount, bucket):
    """du tells the truth: holes count nothing, written chunks count their bytes, and a
    file with uncommitted writes counts its whole size until close."""
    p = os.path.join(getattr(mount, bucket), "sparse.img")
    subprocess.run(["truncate", "-s", "1G", p], check=True)
    assert os.stat(p).st_size == 1 << 30 and os.stat(p).st_blocks == 0
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"x" * 4096, 512 << 20)               # the start of one chunk
        os.pwrite(fd, b"y" * 100, 3 * CHUNK + 10)          # inside another: 110 bytes
        assert os.fstat(fd).st_blocks == (1 << 30) // 512  # not committed yet: the size
    finally:
        os.close(fd)
    assert os.stat(p).st_blocks == (4096 + 110 + 511) // 512
    du = subprocess.run(["du", "-B1", p], check=True, capture_output=True, text=True)
    assert int(du.stdout.split()[0]) == os.stat(p).st_blocks * 512
    with open(os.path.join(getattr(mount, bucket), "full"), "wb") as f:
        f.write(b"z" * (2 * CHUNK + 1))
    assert os.stat(f.name).st_blocks == (2 * CHUNK + 1 + 511) // 512
    os.truncate(f.name, CHUNK + 1)                            # down: the cut chunks go
    assert os.stat(f.name).st_blocks == (CHUNK + 1 + 511) // 512
    os.truncate(f.name, 10 * CHUNK)                           # up: a hole
    assert os.stat(f.name).st_blocks == (CHUNK + 1 + 511) // 512
    assert os.stat(mount.plain).st_blocks >= 0
    mount.restart()
    assert os.stat(p).st_blocks == (4096 + 110 + 511) // 512
    assert os.stat(f.name).st_blocks == (CHUNK + 1 + 511) // 512
    assert get(p)[(512 << 20) - 1:(512 << 20) + 4097] == b"\0" + b"x" * 4096 + b"\0"


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_ZERO_RANGE = 0x08, 0x10


def fallocate(fd, mode, offset, length):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.mark.parametrize("bucket", ["plain", "enc"])
def test_fallocate_punches_holes_that_du_sees(mount, bucket):
    """fallocate(2): holes punched read as zeros and leave the store (st_blocks, du);
    zeroed ranges and the sizes of every mode as on ext4; unsupported modes refused."""
    p = os.path.join(getattr(mount, bucket), "img")
    data = os.urandom(4 * CHUNK + 1000)
    put(p, data)
    blocks = os.stat(p).st_blocks
    expect = bytearray(data)
    fd = os.open(p, os.O_RDWR | os.O_APPEND)  # O_APPEND does not stop fallocate
    try:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, CHUNK, 2 * CHUNK)
        expect[CHUNK:3 * CHUNK] = bytes(2 * CHUNK)
        st = os.fstat(fd)
        assert st.st_size == len(data) and st.st_blocks == blocks - 2 * CHUNK // 512
        assert os.pread(fd, len(data) + 10, 0) == bytes(expect)
        fallocate(fd, FALLOC_FL_ZERO_RANGE, 10, 20)                   # inside: zeroed
        expect[10:30] = bytes(20)
        fallocate(fd, FALLOC_FL_ZERO_RANGE, 4 * CHUNK + 500, CHUNK)  # over the end: grows
        expect[4 * CHUNK + 500:] = bytes(CHUNK)
        assert os.fstat(fd).st_size == len(expect)
        os.posix_fallocate(fd, 0, 10 * CHUNK)                        # grows, stores nothing
        expect.extend(bytes(10 * CHUNK - len(expect)))
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 20 * CHUNK)
        st = os.fstat(fd)
        assert st.st_size == 10 * CHUNK
        # chunks 0 and 3, and chunk 4 cut where the zeroed range began
        assert st.st_blocks == (2 * CHUNK + 500 + 511) // 512
        for mode in (FALLOC_FL_PUNCH_HOLE, FALLOC_FL_COLLAPSE_RANGE):
            assert oserr(fallocate, fd, mode, 0, CHUNK) == errno.EOPNOTSUPP
        assert oserr(fallocate, fd, 0, -1, CHUNK) == errno.EINVAL
        assert oserr(os.posix_fallocate, fd, 0, 1 << 50) == errno.ENOSPC  # fails early
        assert os.fstat(fd).st_size == 10 * CHUNK
    finally:
        os.close(fd)
    ro = os.open(p, os.O_RDONLY)
    try:
        assert oserr(fallocate, ro, 0, 0, 10) == errno.EBADF
    finally:
        os.close(ro)
    mount.restart()
    assert get(p) == bytes(expect)
    # fallocate --dig-holes finds the zeros written as data and punches them out
    q = os.path.join(getattr(mount, bucket), "zeros")
    put(q, b"a" * 100 + bytes(3 * CHUNK) + b"b")
    subprocess.run(["fallocate", "--dig-holes", q], check=True)
    assert os.stat(q).st_blocks == (CHUNK + 101 + 511) // 512  # its reads were of 64 KiB
    assert get(q) == b"a" * 100 + bytes(3 * CHUNK) + b"b"


def test_fallocate_on_pyfuse3s_loop_is_emulated(tmp_path):
    """pyfuse3 has no fallocate: through its loop the kernel answers EOPNOTSUPP, and
    posix_fallocate falls back to writing zeros (glibc)."""
    cfg = write_config(str(tmp_path / "fs"), chunk_size="64KiB", extra="fuse_loop: pyfuse3\n")
    gen = mounted(cfg)
    m = next(gen)
    try:
        p = os.path.join(m.plain, "f")
        put(p, b"abc")
        fd = os.open(p, os.O_RDWR)
        try:
            assert oserr(fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1) \
                == errno.EOPNOTSUPP
            os.posix_fallocate(fd, 0, 2 * CHUNK)
            assert os.fstat(fd).st_size == 2 * CHUNK
        finally:
            os.close(fd)
        assert get(p) == b"abc" + bytes(2 * CHUNK - 3)
    finally:
        gen.close()


def test_reads_leave_access_times_alone(mount):
    """The mount is noatime, and says so in the mount table."""
    opts = [line.split()[3] for line in open("/proc/mounts") if line.split()[1] == mount.mnt]
    assert opts and "noatime" in opts[0].split(","), opts
    p = os.path.join(mount.enc, "read-me")
    put(p, b"data")
    os.utime(p, ns=(10 ** 9, 2 * 10 ** 9))
    assert get(p) == b"data" and os.listdir(mount.enc)
    assert os.stat(p).st_atime_ns == 10 ** 9 and os.stat(p).st_mtime_ns == 2 * 10 ** 9


def test_special_files(mount):
    os.mkfifo(os.path.join(mount.plain, "fifo"))
    os.mknod(os.path.join(mount.plain, "null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    mount.restart()
    assert stat.S_ISFIFO(os.stat(os.path.join(mount.plain, "fifo")).st_mode)
    st = os.stat(os.path.join(mount.plain, "null"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert oserr(os.getxattr, os.path.join(mount.plain, "fifo"), "user.cos.etag") == \
        errno.ENODATA


# -- requests the kernel need not send, work the daemon need not repeat ------------
def test_attributes_set_before_close_commit_with_the_data(mount):
    """tar's order: write, futimens, fchown, fchmod, close. The attributes join the
    close's commit; stat shows them at once, and they survive a kill after close."""
    p = os.path.join(mount.enc, "extracted")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"payload" * 100)
    os.utime(fd, ns=(1_000_000_123, 2_000_000_456))
    os.fchown(fd, 1234, 5678)
    os.fchmod(fd, 0o640)
    st = os.stat(p)  # before close: the deferred attributes are what stat shows
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert st.st_mtime_ns == 2_000_000_456 and st.st_atime_ns == 1_000_000_123
    os.close(fd)
    mount.kill9()
    mount.start()
    st = os.stat(p)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert st.st_mtime_ns == 2_000_000_456 and st.st_atime_ns == 1_000_000_123
    assert get(p) == b"payload" * 100


def test_attributes_without_pending_data_commit_at_once(mount):
    p = os.path.join(mount.plain, "f")
    put(p, b"x")
    fd = os.open(p, os.O_RDWR)
    os.fchmod(fd, 0o604)  # no new data waits: its own transaction
    mount.kill9()
    try:
        os.close(fd)
    except OSError:  # the daemon is gone
        pass
    mount.start()
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o604


def test_a_write_after_utime_moves_mtime_again(mount):
    p = os.path.join(mount.plain, "g")
    with open(p, "wb") as f:
        f.write(b"a")
        f.flush()
        os.utime(f.fileno(), ns=(5, 5))
        f.write(b"b")
    assert os.stat(p).st_mtime_ns > 5


def test_missing_names_are_cached_and_still_appear_when_created(mount):
    d = os.path.join(mount.plain, "neg")
    os.mkdir(d)
    target = os.path.join(d, "later")
    for _ in range(3):
        assert oserr(os.stat, target) == errno.ENOENT
    put(target, b"1")
    assert get(target) == b"1"
    os.unlink(target)
    assert oserr(os.stat, target) == errno.ENOENT
    put(os.path.join(d, "tmp"), b"2")
    os.rename(os.path.join(d, "tmp"), target)
    assert get(target) == b"2"
    os.mkdir(os.path.join(d, "sub"))
    assert oserr(os.stat, os.path.join(d, "sub", "x")) == errno.ENOENT
    os.rename(os.path.join(d, "sub"), os.path.join(d, "sub2"))
    assert oserr(os.stat, os.path.join(d, "sub")) == errno.ENOENT
    assert os.listdir(os.path.join(d, "sub2")) == []


# -- the kernel's page cache ------------------------------------------------------------
def _resident_pages(fd, size):
    """Indexes of the pages of ``fd``'s file in the kernel's page cache (mincore(2))."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    try:
        vec = ctypes.create_string_buffer(-(-size // mmap.PAGESIZE))
        if libc.mincore(addr, size, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return {i for i, b in enumerate(vec.raw) if b & 1}
    finally:
        libc.munmap(addr, size)


def _pages_of(start, end):
    return set(range(start // mmap.PAGESIZE, -(-end // mmap.PAGESIZE)))


def _wait_resident(fd, size, want, timeout=10):
    deadline = time.monotonic() + timeout
    while _resident_pages(fd, size) != want:
        assert time.monotonic() < deadline, "resident %s, not %s" % (
            sorted(_resident_pages(fd, size)), sorted(want))
        time.sleep(0.02)


def test_a_random_reader_back_in_a_segment_gets_it_in_the_page_cache(mount):
    """A random reader that comes back to a 64 KiB segment gets the whole segment in the
    kernel's page cache (cosfs.fuse.pagefill); writes and truncates stay visible."""
    path = os.path.join(mount.enc, "random-reads")
    data = bytearray(os.urandom(4 * CHUNK + 5000))
    put(path, bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        size = len(data)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the pages the writes left
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)    # no read-ahead
        assert _resident_pages(fd, size) == set()
        assert os.pread(fd, 4096, CHUNK) == data[CHUNK:CHUNK + 4096]
        assert _resident_pages(fd, size) == _pages_of(CHUNK, CHUNK + 4096)  # once: its page
        assert os.pread(fd, 4096, CHUNK + 8192) == data[CHUNK + 8192:CHUNK + 12288]
        _wait_resident(fd, size, _pages_of(CHUNK, 2 * CHUNK))  # back in it: all of it
        # the last segment up to the object's end, and nothing beyond it
        os.pread(fd, 4096, 4 * CHUNK)
        os.pread(fd, 4096, 4 * CHUNK)
        os.posix_fadvise(fd, 4 * CHUNK, 0, os.POSIX_FADV_DONTNEED)
        os.pread(fd, 100, 4 * CHUNK + 4096)
        _wait_resident(fd, size, _pages_of(CHUNK, 2 * CHUNK) | _pages_of(4 * CHUNK, size))
        assert os.fstat(fd).st_size == size
        assert os.pread(fd, size, 0) == data

        # a writer's pages replace them; a truncate cuts them
        with open(path, "r+b") as w:
            w.seek(CHUNK + 4096)
            w.write(b"x" * 5000)
        data[CHUNK + 4096:CHUNK + 9096] = b"x" * 5000
        assert os.pread(fd, 2 * CHUNK, 0) == data[:2 * CHUNK]
        os.truncate(path, CHUNK + 6000)
        assert os.pread(fd, size, 0) == data[:CHUNK + 6000]
        os.truncate(path, 2 * CHUNK)
        assert os.pread(fd, size, 0) == data[:CHUNK + 6000] + bytes(CHUNK - 6000)
    finally:
        os.close(fd)
    assert get(path) == data[:CHUNK + 6000] + bytes(CHUNK - 6000)


def test_no_segment_goes_to_the_page_cache_while_the_object_may_be_written(mount):
    path = os.path.join(mount.enc, "read-write")
    data = os.urandom(2 * CHUNK)
    put(path, data)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for off in (0, 8192, 16384):
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
        time.sleep(0.3)
        want = _pages_of(0, 4096) | _pages_of(8192, 12288) | _pages_of(16384, 20480)
        assert _resident_pages(fd, len(data)) == want
    finally:
        os.close(fd)


def test_times_beyond_what_the_catalog_stores_are_clamped(mount):
    """``touch -d 2300-01-01`` or a time before 1677 (an archive from elsewhere) is brought
    into the catalog's range (64-bit nanoseconds: 1677-09-21 to 2262-04-11), as ext4
    clamps to its own; it is not refused, and the mount logs no error."""
    p = os.path.join(mount.plain, "far")
    put(p, b"x")
    far = 2 ** 34 * 10 ** 9  # year 2514
    os.utime(p, ns=(far, -far))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == ((1 << 63) - 1, -(1 << 63))
    subprocess.run(["touch", "-d", "2300-01-01 00:00:00 UTC", p], check=True)
    assert os.stat(p).st_mtime_ns == (1 << 63) - 1
    mount.restart()
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == ((1 << 63) - 1, (1 << 63) - 1)
    assert not mount.unexpected_log_lines()


def test_times_before_1970(mount):
    """A time before the epoch (``touch -d 1960-01-01``, an old archive's members) is kept
    to the nanosecond, in the listing too, and survives a remount."""
    p = os.path.join(mount.plain, "old")
    put(p, b"x")
    when = -315_619_200_000_000_000 + 123_456_789  # 1960-01-01 plus some nanoseconds
    os.utime(p, ns=(when, when - 1))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (when, when - 1)
    assert subprocess.run(["ls", "--full-time", p], capture_output=True, text=True, check=True,
                          env=dict(os.environ, TZ="UTC")).stdout.split()[5] == "1960-01-01"
    mount.restart()
    assert os.stat(p).st_mtime_ns == when - 1
