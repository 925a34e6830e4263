"""Real store faults on a real mount: a full disk (blobs, catalog, during
re-encryption, and a store full of small objects that must still be
deletable), a read-only store (also seen by a reader of the failing object),
lost and cut blobs, SIGTERM in the middle of a large copy, and an unmount
refused while a file is open.

The faults are real kernel mechanisms (we run as root): the store lives on a
small tmpfs that fills up, the blob directory is bind-mounted read-only over
itself, blobs are deleted or truncated on disk, the daemon gets a real
SIGTERM. Each test checks what the writer saw, that the mount stayed up,
that data written before the fault is intact, that service resumes once the
fault is gone, and that the store is consistent afterwards (SQLite
``integrity_check`` and ``cosfs fsck``).
"""

import errno
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import (ENC, PLAIN, Mount, errno_of, fuse_available, get, is_mounted, put,
                      write_config)

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for tmpfs and bind mounts"),
]

MiB = 1024 * 1024
REGION = "ap-guangzhou"


# -- helpers -----------------------------------------------------------------------
def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def catalog_ro(m):
    """A read-only SQLite connection to the store's catalog (fine while mounted: WAL)."""
    return sqlite3.connect("file:%s?mode=ro" % os.path.join(m.store, "catalog.db"), uri=True)


def blob_path(m, blob, region=REGION):
    h = blob.hex()
    return os.path.join(m.store, "blobs", region, h[:2], h)


def chunks_of(m, path):
    """[(idx, blob, length)] of the stored chunks of the object at ``path`` (its st_ino is
    the catalog inode); packed chunks (kept in the catalog, no blob) are left out."""
    ino = os.stat(path).st_ino
    db = catalog_ro(m)
    try:
        return list(db.execute("SELECT idx, blob, length FROM chunks"
                               " WHERE inode=? AND data IS NULL ORDER BY idx", (ino,)))
    finally:
        db.close()


def integrity_ok(m):
    db = sqlite3.connect(os.path.join(m.store, "catalog.db"))
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def fsck_clean(m):
    res = m.cli("fsck", "--config", m.config, check=False)
    assert res.returncode == 0 and "DAMAGED" not in res.stdout, res.stdout + res.stderr
    return res.stdout


def stop_checked(m):
    """Clean unmount; the daemon must exit by itself with status 0."""
    proc = m.proc
    m.stop()
    assert proc.returncode == 0, m.log_text()[-3000:]


def wait_for(pred, timeout=20, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def meta(path):
    st = os.stat(path)
    return (st.st_size, st.st_mode, st.st_uid, st.st_mtime_ns, os.getxattr(path, "user.note"))


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path / "fs")


def _finish(m):
    """Teardown: stop the daemon (never hangs), then report unexpected log errors."""
    if m.proc is not None:
        m.stop()
    bad = m.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


# -- ENOSPC: the store's file system fills up ------------------------------------
def mount_on_tmpfs(folder, size, **config):
    """Fixture body: a mount whose store lives on a tmpfs of ``size`` (e.g. "24m")."""
    m = Mount(write_config(folder, **config))
    os.makedirs(m.store, mode=0o700)
    sh("mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", m.store)
    try:
        m.start()
        yield m
        _finish(m)
    finally:
        m.kill9()
        subprocess.run(["umount", "-l", m.store], capture_output=True, timeout=60)


@pytest.fixture
def small_store(folder):
    """A mount whose store lives on a 24 MiB tmpfs."""
    yield from mount_on_tmpfs(folder, "24m", chunk_size="1MiB", write_buffer="4MiB")


def fill(path, limit=64 * MiB):
    """Write ``path`` until the store is full. Returns (bytes acknowledged, where it failed)."""
    block = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written, failed = 0, None
    try:
        while written < limit:
            try:
                written += os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                failed = "write"
                break
        if failed is None:
            try:
                os.fsync(fd)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                failed = "fsync"
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            failed = failed or "close"
    return written, failed


def test_enospc(small_store):
    m = small_store
    m.expect_log(r"No space left|ENOSPC|disk is full|could not commit")
    keep = os.path.join(m.enc, "keep.bin")
    keep_data = os.urandom(MiB + 12345)
    put(keep, keep_data)
    os.setxattr(keep, "user.note", b"precious")
    os.chmod(keep, 0o640)
    before = meta(keep)

    big = os.path.join(m.plain, "big.bin")
    written, failed = fill(big)
    assert failed is not None, "48 MiB of writes on a 24 MiB store reported no ENOSPC"
    assert written < 48 * MiB
    assert "No space left" in m.log_text() or "ENOSPC" in m.log_text()

    # the mount is up, the object written before the fault is intact
    assert is_mounted(m.mnt) and m.proc.poll() is None
    assert sorted(os.listdir(m.mnt)) == sorted([PLAIN, ENC])
    assert get(keep) == keep_data
    assert meta(keep) == before
    # a second small write while full also fails cleanly (not EIO, not a hang)
    err = errno_of(put, os.path.join(m.plain, "more.bin"), os.urandom(4 * MiB))
    assert err in (None, errno.ENOSPC)

    # free the space: the big file goes, and new writes work again
    os.unlink(big)
    if err is None:
        os.unlink(os.path.join(m.plain, "more.bin"))
    else:
        try:
            os.unlink(os.path.join(m.plain, "more.bin"))
        except FileNotFoundError:
            pass

    def free_enough():
        sv = os.statvfs(m.store)
        return sv.f_bavail * sv.f_frsize > 16 * MiB
    assert wait_for(free_enough, timeout=30), "space not released after deleting the big file"
    fresh = os.urandom(6 * MiB + 7)
    put(os.path.join(m.plain, "after.bin"), fresh)
    assert get(os.path.join(m.plain, "after.bin")) == fresh
    assert get(keep) == keep_data

    stop_checked(m)
    assert integrity_ok(m)
    fsck_clean(m)
    m.start()
    assert get(keep) == keep_data and meta(keep) == before
    assert get(os.path.join(m.plain, "after.bin")) == fresh
    assert not os.path.exists(big)


# -- EROFS: the blob directory becomes read-only --------------------------------
@pytest.fixture
def mnt(folder):
    m = Mount(write_config(folder, chunk_size="64KiB", write_buffer="256KiB"))
    m.start()
    try:
        yield m
        _finish(m)
    finally:
        m.kill9()


def test_erofs(mnt):
    m = mnt
    m.expect_log(r"Read-only file system|could not commit")
    blobs = os.path.join(m.store, "blobs")
    old = os.urandom(200 * 1024)
    other = os.urandom(150 * 1024)
    a, b, c = (os.path.join(m.enc, n) for n in ("a.bin", "b.bin", "c.bin"))
    put(a, old)
    put(os.path.join(m.plain, "c.bin"), other)
    c = os.path.join(m.plain, "c.bin")
    m.restart()  # cold caches: reads below go to the store
    a_chunks = chunks_of(m, a)

    sh("mount", "--bind", blobs, blobs)
    try:
        sh("mount", "-o", "remount,ro,bind", blobs)
        # overwrite in place: the error arrives at close (or fsync) at the latest
        new = os.urandom(200 * 1024)
        fd = os.open(a, os.O_WRONLY)
        errs = []
        try:
            os.write(fd, new)
            try:
                os.fsync(fd)
            except OSError as exc:
                errs.append(exc.errno)
        except OSError as exc:
            errs.append(exc.errno)
        finally:
            try:
                os.close(fd)
            except OSError as exc:
                errs.append(exc.errno)
        assert errs and set(errs) <= {errno.EROFS, errno.EIO}, errs
        # a new object: the same
        err = errno_of(put, b, os.urandom(100 * 1024))
        assert err in (errno.EROFS, errno.EIO)
        # reads of stored objects still work; the committed version is the old one
        assert get(c) == other
        assert chunks_of(m, a) == a_chunks
        assert all(os.path.exists(blob_path(m, blob)) for _, blob, _ in a_chunks)
        assert is_mounted(m.mnt) and m.proc.poll() is None
    finally:
        # lazily: the daemon keeps descriptors of blobs it read open (a read cache)
        subprocess.run(["umount", "-l", blobs], capture_output=True, timeout=60)
    assert not is_mounted(blobs)

    # the store is writable again: a retry succeeds
    fd = os.open(a, os.O_WRONLY)
    try:
        os.write(fd, new)
        os.fsync(fd)
    finally:
        os.close(fd)
    b_data = os.urandom(100 * 1024)
    put(b, b_data)
    assert get(a) == new and get(b) == b_data
    stop_checked(m)
    assert integrity_ok(m)
    fsck_clean(m)
    m.start()
    assert get(a) == new and get(b) == b_data and get(c) == other


# -- lost and cut blobs -------------------------------------------------------------
def test_missing_and_truncated_blob(mnt):
    m = mnt
    m.expect_log(r"cannot read|IntegrityError|missing|damaged")
    datas = {n: os.urandom(3 * 64 * 1024 + 99) for n in ("gone", "cut", "fine")}
    for n, d in datas.items():
        put(os.path.join(m.enc, n), d)
    put(os.path.join(m.plain, "cutplain"), datas["cut"])
    m.restart()
    gone = chunks_of(m, os.path.join(m.enc, "gone"))[1][1]
    os.unlink(blob_path(m, gone))
    for path in (os.path.join(m.enc, "cut"), os.path.join(m.plain, "cutplain")):
        blob = chunks_of(m, path)[2][1]
        with open(blob_path(m, blob), "r+b") as f:
            f.truncate(1000)

    f = open(os.path.join(m.enc, "gone"), "rb", buffering=0)
    assert f.read(64 * 1024) == datas["gone"][:64 * 1024]  # chunk 0 is still there
    assert errno_of(f.read, 64 * 1024) == errno.EIO
    f.close()
    assert errno_of(get, os.path.join(m.enc, "cut")) == errno.EIO
    assert errno_of(get, os.path.join(m.plain, "cutplain")) == errno.EIO
    assert get(os.path.join(m.enc, "fine")) == datas["fine"]
    assert is_mounted(m.mnt)
    stop_checked(m)
    res = m.cli("fsck", "--config", m.config, check=False)
    assert res.returncode != 0 and res.stdout.count("DAMAGED") == 3, res.stdout


# -- SIGTERM during a large copy -----------------------------------------------------
COPIER = r"""
import os, sys
src, dst = sys.argv[1:]
fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
done = 0
with open(src, "rb") as f:
    while True:
        block = f.read(1 << 20)
        if not block:
            break
        try:
            done += os.write(fd, block)
        except OSError as exc:
            print("ERR", exc.errno, flush=True)
            sys.exit(1)
        print("ACK", done, flush=True)
try:
    os.close(fd)
except OSError as exc:
    print("ERR", exc.errno, flush=True)
"""


def test_sigterm_during_copy(mnt, tmp_path):
    m = mnt
    src = str(tmp_path / "source.bin")
    with open(src, "wb") as f:
        for _ in range(96):
            f.write(os.urandom(MiB))
    dst = os.path.join(m.enc, "copy.bin")
    # a copier like dd that reports every write(2) the file system acknowledged
    copier = subprocess.Popen([sys.executable, "-c", COPIER, src, dst], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: os.path.exists(dst) and os.stat(dst).st_size >= 8 * MiB,
                        timeout=60, step=0.02)
        m.proc.send_signal(signal.SIGTERM)
        status = m.proc.wait(timeout=120)
        assert status == 0, m.log_text()[-3000:]
        assert "received signal" in m.log_text()
    finally:
        try:
            out = copier.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            copier.kill()
            out = copier.communicate()[0]
    assert not is_mounted(m.mnt)
    m.proc = None
    acked = [int(line.split()[1]) for line in out.splitlines() if line.startswith("ACK ")]
    acknowledged = acked[-1] if acked else 0
    if "ERR" not in out:  # the copy finished before the signal: then all of it is there
        assert acknowledged == 96 * MiB, out[-500:]
    assert integrity_ok(m)
    fsck_clean(m)
    m.start()
    size = os.stat(dst).st_size
    assert size >= max(acknowledged, 1), (size, acknowledged)
    print("SIGTERM after %d bytes acknowledged, %d bytes stored" % (acknowledged, size))
    with open(src, "rb") as f:
        expect = f.read(size)
    assert get(dst) == expect  # a prefix of the source: nothing torn, nothing lost


# -- SIGTERM among random readers ----------------------------------------------------
READER = r"""
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
size = os.fstat(fd).st_size
rnd = random.Random(int(sys.argv[2]))
n = 0
print("START", flush=True)
while True:
    try:
        os.pread(fd, 4096, rnd.randrange(size // 4096) * 4096)
    except OSError as exc:
        print("ERR", exc.errno, n, flush=True)
        break
    n += 1
"""


def test_sigterm_among_random_readers(mnt):
    # Random readers keep page stores going (cosfs.fuse.pagefill); a store may wait for a
    # page that a READ holds locked, so the stop must drain them while READs are still
    # answered: the daemon ends cleanly instead of hanging on a store.
    m = mnt
    path = os.path.join(m.enc, "random.bin")
    put(path, os.urandom(16 * MiB))
    readers = [subprocess.Popen([sys.executable, "-c", READER, path, str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(4)]
    try:
        for r in readers:
            assert r.stdout.readline().strip() == "START"
        time.sleep(1.0)
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(timeout=60) == 0, m.log_text()[-3000:]
        for r in readers:  # the mount is gone under them: each ends with an error
            assert "ERR" in r.communicate(timeout=30)[0]
    finally:
        for r in readers:
            r.kill()
            r.wait()
    m.proc = None
    assert not is_mounted(m.mnt)
    m.start()
    assert len(get(path)) == 16 * MiB


# -- cosfs umount while a file is open --------------------------------------------
def test_umount_busy(mnt):
    m = mnt
    path = os.path.join(m.plain, "open.txt")
    f = open(path, "wb")
    try:
        f.write(b"still writing")
        f.flush()
        res = m.cli("umount", m.mnt, check=False)
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cosfs: ") and "busy" in lines[0].lower(), \
            res.stderr
        assert is_mounted(m.mnt) and m.proc.poll() is None
        f.write(b" and done")
    finally:
        f.close()
    res = m.cli("umount", m.store, check=False)  # not a mount point at all
    assert res.returncode == 1 and res.stderr.startswith("cosfs: NotMounted"), res.stderr
    res = m.cli("umount", m.mnt, check=False)
    assert res.returncode == 0, res.stderr
    assert m.proc.poll() == 0  # umount waited for the daemon to exit
    assert not is_mounted(m.mnt)
    m.proc = None
    m.start()
    assert get(path) == b"still writing and done"


def test_enospc_catalog(small_store):
    """The catalog's own file system is full: metadata changes fail with ENOSPC, never EIO."""
    m = small_store
    m.expect_log(r"No space left|disk is full|could not commit|ENOSPC")
    keep = os.path.join(m.plain, "keep.txt")
    put(keep, b"kept")
    filler = os.path.join(m.store, "filler")
    subprocess.run(["dd", "if=/dev/zero", "of=" + filler, "bs=1M"], capture_output=True)
    results = {}
    for i in range(40):  # enough changes to outgrow whatever room the WAL had
        ops = {
            "mkdir": lambda: os.mkdir(os.path.join(m.plain, "d%d" % i)),
            "create": lambda: put(os.path.join(m.plain, "f%d" % i), os.urandom(5000)),
            "setxattr": lambda: os.setxattr(keep, "user.n%d" % i, b"v" * 3000),
            "rename": lambda: os.rename(keep, keep + ".2") or os.rename(keep + ".2", keep),
        }
        for name, op in ops.items():
            err = errno_of(op)
            assert err in (None, errno.ENOSPC), (name, i, err)
            results.setdefault(name, set()).add(err)
    assert errno.ENOSPC in set().union(*results.values()), results
    assert is_mounted(m.mnt) and m.proc.poll() is None
    assert re.search(r"WARNING .*(disk is full|No space left)", m.log_text())
    assert get(keep) == b"kept"
    os.unlink(filler)
    os.mkdir(os.path.join(m.plain, "after"))
    put(os.path.join(m.plain, "after", "x"), b"works")
    assert get(os.path.join(m.plain, "after", "x")) == b"works"
    stop_checked(m)
    assert integrity_ok(m)
    fsck_clean(m)


def test_enospc_during_reencryption(small_store):
    """Setting or removing an object's encryption re-encrypts it; when the store is full
    that fails with ENOSPC and the object keeps its old state, now and later."""
    m = small_store
    m.expect_log(r"No space left|disk is full|could not commit|ENOSPC")
    plain = os.path.join(m.plain, "plain.bin")
    enc = os.path.join(m.enc, "enc.bin")
    pdata, edata = os.urandom(5 * MiB), os.urandom(5 * MiB)
    put(plain, pdata)
    put(enc, edata)
    assert os.getxattr(enc, "user.cos.server-side-encryption") == b"AES256"
    filler = os.path.join(m.store, "filler")
    # leave room for catalog updates, not for a chunk: only the re-encryption fails
    sv = os.statvfs(m.store)
    room = sv.f_bavail * sv.f_frsize - 512 * 1024
    with open(filler, "wb") as f:
        f.write(bytes(room))
    assert errno_of(os.setxattr, plain, "user.cos.server-side-encryption", b"AES256") \
        == errno.ENOSPC
    assert errno_of(os.setxattr, enc, "user.cos.server-side-encryption", b"SM4") == errno.ENOSPC
    assert errno_of(os.getxattr, plain, "user.cos.server-side-encryption") == errno.ENODATA
    assert os.getxattr(enc, "user.cos.server-side-encryption") == b"AES256"
    assert get(plain) == pdata and get(enc) == edata
    os.unlink(filler)
    # the refused requests must not come back at the next write of the objects
    for path in (plain, enc):
        with open(path, "r+b") as f:
            f.write(b"x")
    assert errno_of(os.getxattr, plain, "user.cos.server-side-encryption") == errno.ENODATA
    assert os.getxattr(enc, "user.cos.server-side-encryption") == b"AES256"
    assert get(plain) == b"x" + pdata[1:] and get(enc) == b"x" + edata[1:]
    stop_checked(m)
    assert integrity_ok(m)
    fsck_clean(m)


@pytest.fixture
def small_store_small_chunks(folder):
    """A mount with 64 KiB chunks whose store lives on a 16 MiB tmpfs."""
    yield from mount_on_tmpfs(folder, "16m", chunk_size="64KiB", write_buffer="256KiB")


def test_enospc_delete_frees(small_store_small_chunks):
    """A store filled by many small objects: deleting them must still work (a full disk is
    cured by deleting files), and then writing works again."""
    m = small_store_small_chunks
    m.expect_log(r"No space left|disk is full|could not commit|ENOSPC|forget of")
    names = []
    for i in range(2000):
        path = os.path.join(m.plain if i % 2 else m.enc, "f%04d" % i)
        err = errno_of(put, path, os.urandom(60000))
        if os.path.exists(path):
            names.append(path)
        if err is not None:
            assert err == errno.ENOSPC, err
            break
    else:
        raise AssertionError("2000 files of 60 KB fit on a 16 MiB store")
    assert len(names) > 50
    # a few more attempts at the edge, as a busy writer would make
    for i in range(20):
        errno_of(put, os.path.join(m.plain, "edge%d" % i), os.urandom(3000))
    failed = {}
    for path in names:
        err = errno_of(os.unlink, path)
        if err is not None:
            failed[path] = err
    assert not failed, "%d of %d deletes failed on the full store: %s" % (
        len(failed), len(names), sorted(set(failed.values())))
    for i in range(20):
        try:
            os.unlink(os.path.join(m.plain, "edge%d" % i))
        except FileNotFoundError:
            pass

    def free_enough():
        sv = os.statvfs(m.store)
        return sv.f_bavail * sv.f_frsize > 8 * MiB
    assert wait_for(free_enough, timeout=30)
    data = os.urandom(4 * MiB)
    put(os.path.join(m.enc, "after"), data)
    assert get(os.path.join(m.enc, "after")) == data
    stop_checked(m)
    assert integrity_ok(m)
    fsck_clean(m)


def test_reader_close_does_not_report_writer_failure(mnt):
    """A writer's commit fails (read-only store); a reader of the same object closes its
    descriptor without error, as on a local file system."""
    m = mnt
    m.expect_log(r"Read-only file system|could not commit")
    path = os.path.join(m.plain, "shared.bin")
    put(path, os.urandom(100 * 1024))
    blobs = os.path.join(m.store, "blobs")
    sh("mount", "--bind", blobs, blobs)
    try:
        sh("mount", "-o", "remount,ro,bind", blobs)
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, b"y" * 70000, 0)
        assert errno_of(os.close, fd) in (errno.EROFS, errno.EIO)
        reader = os.open(path, os.O_RDONLY)
        assert os.read(reader, 5) == b"yyyyy"  # the buffered change is what the file holds
        os.close(reader)  # must not raise
        with open(path, "rb") as f:
            f.read()
    finally:
        # lazily: the daemon keeps descriptors of blobs it read open (a read cache)
        subprocess.run(["umount", "-l", blobs], capture_output=True, timeout=60)
    fd = os.open(path, os.O_WRONLY)
    os.fsync(fd)  # the retry of the buffered change succeeds now
    os.close(fd)
    stop_checked(m)
    m.start()
    assert get(path)[:70000] == b"y" * 70000
