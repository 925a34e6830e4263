"""Tampering with the chunk store of an unmounted store, then reading on a fresh mount.

Every sealed chunk is bound to its object, its position, its blob name and
the end of its stream, so a flipped bit, a truncated or extended blob, blobs
swapped between objects or between chunks of one object, and an older blob
replayed under a newer name must all read as EIO. The mount stays up, other
objects stay readable, and the daemon log names the inode, the chunk and the
blob that failed.
"""

import errno
import os
import shutil
import sqlite3

import pytest

from conftest import ENC, PLAIN, get, put, write_config

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024


@pytest.fixture
def config_path(tmp_path):
    return write_config(str(tmp_path / "fs"), chunk_size="64KiB", write_buffer="256KiB")


def read_errno(path, offset=0, size=None):
    """The errno of reading ``path`` (None if the read succeeds)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return exc.errno
    try:
        end = offset + (size if size is not None else os.fstat(fd).st_size)
        while offset < end:                  # a short read happens before a failing range
            got = os.pread(fd, end - offset, offset)
            if not got:
                break
            offset += len(got)
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)
    return None


class Blobs:
    """Object -> blob files, read from the catalog of an unmounted store."""

    def __init__(self, mount):
        assert mount.proc is None, "unmount first"
        self.mount = mount
        uri = "file:%s?immutable=1" % os.path.join(mount.store, "catalog.db")
        self.db = sqlite3.connect(uri, uri=True)

    def close(self):
        self.db.close()

    def inode(self, bucket, relpath):
        ino = self.db.execute("SELECT inode FROM buckets WHERE name=?", (bucket,)).fetchone()[0]
        for part in relpath.split("/"):
            ino = self.db.execute("SELECT inode FROM dentries WHERE parent=? AND name=?",
                                  (ino, part.encode())).fetchone()[0]
        return ino

    def region(self, bucket):
        return self.db.execute("SELECT region FROM buckets WHERE name=?", (bucket,)).fetchone()[0]

    def chunks(self, bucket, relpath):
        """[(idx, path of the blob file, plaintext length)] of an object."""
        ino = self.inode(bucket, relpath)
        region = self.region(bucket)
        out = []
        for idx, blob, length in self.db.execute(
                "SELECT idx, blob, length FROM chunks WHERE inode=? ORDER BY idx", (ino,)):
            h = bytes(blob).hex()
            out.append((idx, os.path.join(self.mount.store, "blobs", region, h[:2], h), length))
        return out


def swap_files(a, b):
    tmp = a + ".swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def expect_read_errors(mount):
    """Declare the ERROR lines a failed authenticated read writes."""
    mount.expect_log(r"ERROR cosfs\.reader: cannot read inode \d+ chunk \d+ \(blob [0-9a-f]{32}\)")
    mount.expect_log(r"ERROR cosfs\.fuse\.ops: read: ")
    mount.expect_log(r"ERROR cosfs\.filesystem: cannot read object [a-z0-9-]+/\S+ \(inode \d+\)")


def assert_logged(mount, ino, idx, blob_path, name):
    """The log names the chunk and blob that failed, and the object by bucket and key."""
    blob = os.path.basename(blob_path)
    lines = [line for line in mount.log_text().splitlines() if " ERROR " in line]
    assert any(("inode %d chunk %d" % (ino, idx)) in line and blob in line for line in lines), \
        "\n".join(lines[-10:])
    assert any(("cannot read object %s (inode %d)" % (name, ino)) in line for line in lines), \
        "\n".join(lines[-10:])


def stays_up(mount):
    """The mount answers and other objects read fine."""
    p = os.path.join(mount.plain, "after-tamper")
    put(p, b"still working")
    assert get(p) == b"still working"
    assert ENC in os.listdir(mount.mnt)


@pytest.fixture
def objects(mount):
    """Two encrypted objects of three chunks and one bystander; returns their data."""
    data = {"a": os.urandom(3 * CHUNK), "b": os.urandom(3 * CHUNK), "c": os.urandom(1000)}
    for name, content in data.items():
        put(os.path.join(mount.enc, name), content)
    mount.stop()
    return data


def test_flipped_bit(mount, objects):
    cat = Blobs(mount)
    ino = cat.inode(ENC, "a")
    idx, path, _ = cat.chunks(ENC, "a")[1]
    cat.close()
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    expect_read_errors(mount)
    mount.start()
    a = os.path.join(mount.enc, "a")
    assert read_errno(a) == errno.EIO
    assert read_errno(a, CHUNK + 10, 100) == errno.EIO
    with open(a, "rb") as f:                       # the untouched chunks still read
        assert f.read(CHUNK) == objects["a"][:CHUNK]
        f.seek(2 * CHUNK)
        assert f.read() == objects["a"][2 * CHUNK:]
    assert get(os.path.join(mount.enc, "b")) == objects["b"]
    assert get(os.path.join(mount.enc, "c")) == objects["c"]
    assert_logged(mount, ino, idx, path, ENC + "/a")
    stays_up(mount)


@pytest.mark.parametrize("cut", [1, 16, 1000])
def test_truncated_blob(mount, objects, cut):
    cat = Blobs(mount)
    ino = cat.inode(ENC, "a")
    idx, path, _ = cat.chunks(ENC, "a")[2]
    cat.close()
    os.truncate(path, os.path.getsize(path) - cut)
    expect_read_errors(mount)
    mount.start()
    assert read_errno(os.path.join(mount.enc, "a")) == errno.EIO
    assert read_errno(os.path.join(mount.enc, "a"), 3 * CHUNK - 10, 10) == errno.EIO
    assert get(os.path.join(mount.enc, "b")) == objects["b"]
    assert_logged(mount, ino, idx, path, ENC + "/a")
    stays_up(mount)


@pytest.mark.parametrize("extra", [1, 16, 70000])
def test_extended_blob(mount, objects, extra):
    cat = Blobs(mount)
    ino = cat.inode(ENC, "a")
    idx, path, _ = cat.chunks(ENC, "a")[0]
    cat.close()
    with open(path, "ab") as f:
        f.write(os.urandom(extra))
    expect_read_errors(mount)
    mount.start()
    assert read_errno(os.path.join(mount.enc, "a")) == errno.EIO
    assert get(os.path.join(mount.enc, "c")) == objects["c"]
    assert_logged(mount, ino, idx, path, ENC + "/a")
    stays_up(mount)


def test_blobs_swapped_between_objects(mount, objects):
    cat = Blobs(mount)
    ino_a, ino_b = cat.inode(ENC, "a"), cat.inode(ENC, "b")
    idx, path_a, _ = cat.chunks(ENC, "a")[1]
    _, path_b, _ = cat.chunks(ENC, "b")[1]
    cat.close()
    assert os.path.getsize(path_a) == os.path.getsize(path_b)
    swap_files(path_a, path_b)
    expect_read_errors(mount)
    mount.start()
    assert read_errno(os.path.join(mount.enc, "a")) == errno.EIO
    assert read_errno(os.path.join(mount.enc, "b")) == errno.EIO
    assert get(os.path.join(mount.enc, "c")) == objects["c"]
    assert_logged(mount, ino_a, idx, path_a, ENC + "/a")
    assert_logged(mount, ino_b, idx, path_b, ENC + "/b")
    stays_up(mount)


def test_chunks_of_one_object_swapped(mount, objects):
    cat = Blobs(mount)
    ino = cat.inode(ENC, "a")
    chunks = cat.chunks(ENC, "a")
    cat.close()
    swap_files(chunks[0][1], chunks[2][1])
    expect_read_errors(mount)
    mount.start()
    a = os.path.join(mount.enc, "a")
    assert read_errno(a, 0, 100) == errno.EIO
    assert read_errno(a, 2 * CHUNK, 100) == errno.EIO
    with open(a, "rb") as f:
        f.seek(CHUNK)
        assert f.read(CHUNK) == objects["a"][CHUNK:2 * CHUNK]
    assert_logged(mount, ino, 0, chunks[0][1], ENC + "/a")
    assert_logged(mount, ino, 2, chunks[2][1], ENC + "/a")
    stays_up(mount)


def test_older_blob_replayed_under_the_new_name(mount, tmp_path):
    p = os.path.join(mount.enc, "versioned")
    old = os.urandom(2 * CHUNK)
    put(p, old)
    mount.stop()
    cat = Blobs(mount)
    old_chunks = cat.chunks(ENC, "versioned")
    cat.close()
    saved = str(tmp_path / "old-blob")
    shutil.copyfile(old_chunks[1][1], saved)          # garbage collection deletes the original
    mount.start()
    new = old[:CHUNK] + os.urandom(CHUNK)
    with open(p, "r+b") as f:                          # same object, same data key, new chunk 1
        f.seek(CHUNK)
        f.write(new[CHUNK:])
    assert get(p) == new
    mount.stop()
    cat = Blobs(mount)
    ino = cat.inode(ENC, "versioned")
    new_chunks = cat.chunks(ENC, "versioned")
    cat.close()
    assert new_chunks[0][1] == old_chunks[0][1] and new_chunks[1][1] != old_chunks[1][1]
    assert not os.path.exists(old_chunks[1][1])
    assert os.path.getsize(saved) == os.path.getsize(new_chunks[1][1])
    shutil.copyfile(saved, new_chunks[1][1])
    expect_read_errors(mount)
    mount.start()
    assert read_errno(p, CHUNK, 10) == errno.EIO
    with open(p, "rb") as f:
        assert f.read(CHUNK) == old[:CHUNK]
    assert_logged(mount, ino, 1, new_chunks[1][1], ENC + "/versioned")
    stays_up(mount)


def test_missing_blob(mount, objects):
    cat = Blobs(mount)
    ino = cat.inode(ENC, "b")
    idx, path, _ = cat.chunks(ENC, "b")[1]
    cat.close()
    os.unlink(path)
    expect_read_errors(mount)
    mount.start()
    assert read_errno(os.path.join(mount.enc, "b")) == errno.EIO
    assert get(os.path.join(mount.enc, "a")) == objects["a"]
    assert_logged(mount, ino, idx, path, ENC + "/b")
    stays_up(mount)


def test_plain_blob_cut_short_is_an_error_not_zeros(mount):
    """A plain object has no authentication, but a blob shorter than its recorded length
    is detectable and must not read as a hole."""
    p = os.path.join(mount.plain, "short")
    put(p, os.urandom(2 * CHUNK))
    mount.stop()
    cat = Blobs(mount)
    ino = cat.inode(PLAIN, "short")
    idx, path, _ = cat.chunks(PLAIN, "short")[0]
    cat.close()
    os.truncate(path, 1000)
    expect_read_errors(mount)
    mount.start()
    assert read_errno(p, 0, CHUNK) == errno.EIO
    assert_logged(mount, ino, idx, path, PLAIN + "/short")
    stays_up(mount)


def test_tampered_object_can_be_replaced(mount, objects):
    """A damaged object can be overwritten or deleted; fresh content reads again."""
    cat = Blobs(mount)
    _, path, _ = cat.chunks(ENC, "a")[1]
    cat.close()
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 8)
    expect_read_errors(mount)
    mount.start()
    a = os.path.join(mount.enc, "a")
    assert read_errno(a) == errno.EIO
    put(a, b"replaced")                                 # O_TRUNC: no old chunk is needed
    assert get(a) == b"replaced"
    os.unlink(os.path.join(mount.enc, "b"))
    mount.restart()
    assert get(a) == b"replaced"
