"""Stores written by earlier formats stay readable; the packed small-chunk layout.

``tests/golden/store-v1`` is a store (catalog, blobs and key folder) written by
cosfs with catalog format 1, before small chunks were packed into the catalog.
It pins that format: it must mount, read back byte for byte, pass ``fsck
--verify`` and be upgraded in place to the current format. The second half
checks what format 2 adds: small chunks live sealed in their catalog rows, are
read back from there, and are as tamper-evident as blobs.
"""

import hashlib
import json
import os
import shutil
import sqlite3

import pytest

from cosfs.catalog import SCHEMA_VERSION

from conftest import ENC, Mount, fuse_available, get, put, write_config

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "store-v1")

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def golden_plaintext(n, seed):
    out, i = b"", 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, i)).digest()
        i += 1
    return out[:n]


def copy_golden(tmp_path):
    """A private copy of the golden store with the modes git does not keep."""
    folder = tmp_path / "golden"
    shutil.copytree(GOLDEN, folder)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
        for f in files:
            os.chmod(os.path.join(root, f), 0o600)
    os.makedirs(folder / "mnt", exist_ok=True)
    return folder


def schema_version(store):
    db = sqlite3.connect(os.path.join(store, "catalog.db"))
    try:
        return db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    finally:
        db.close()


def chunk_rows(store):
    db = sqlite3.connect(os.path.join(store, "catalog.db"))
    try:
        return list(db.execute("SELECT inode, idx, blob, length, data FROM chunks"))
    finally:
        db.close()


def test_format_1_store_reads_back_and_is_upgraded(tmp_path):
    folder = copy_golden(tmp_path)
    config = str(folder / "c.yaml")
    manifest = json.load(open(folder / "manifest.json"))
    assert schema_version(folder / "data") == 1
    m = Mount(config)
    res = m.cli("fsck", "--config", config, "--verify", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "DAMAGED" not in res.stdout + res.stderr
    m.start()
    try:
        for path, entry in manifest.items():
            data = get(os.path.join(m.mnt, path))
            assert len(data) == entry["size"], path
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], path
        assert os.readlink(os.path.join(m.mnt, "aes-1250000000", "link")) == "small"
        assert os.getxattr(os.path.join(m.mnt, "aes-1250000000", "small"),
                           "user.color") == b"blue"
        assert os.getxattr(os.path.join(m.mnt, "aes-1250000000", "small"),
                           "user.cos.server-side-encryption") == b"AES256"
        # old and new data side by side: a new small file is packed
        put(os.path.join(m.mnt, "aes-1250000000", "new"), b"written by format 2")
    finally:
        m.stop()
    assert schema_version(folder / "data") == SCHEMA_VERSION
    assert any(r[4] is not None for r in chunk_rows(folder / "data"))
    db = sqlite3.connect(os.path.join(folder, "data", "catalog.db"))
    try:  # rebuilt as a rowid table (see catalog._CHUNKS_TABLE)
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name='chunks'").fetchone()[0]
        assert "WITHOUT ROWID" not in sql.upper()
    finally:
        db.close()
    res = m.cli("fsck", "--config", config, "--verify", check=False)
    assert res.returncode == 0 and "DAMAGED" not in res.stdout, res.stdout + res.stderr
    m.start()
    try:
        assert get(os.path.join(m.mnt, "aes-1250000000", "new")) == b"written by format 2"
        chunks = manifest["sm4-1250000000/chunks"]
        assert get(os.path.join(m.mnt, "sm4-1250000000", "chunks")) == \
            golden_plaintext(chunks["size"], chunks["seed"])
    finally:
        m.stop()


def test_newer_format_is_refused_with_one_line(tmp_path):
    folder = copy_golden(tmp_path)
    db = sqlite3.connect(os.path.join(folder, "data", "catalog.db"))
    db.execute("UPDATE meta SET value=99 WHERE key='schema_version'")
    db.commit()
    db.close()
    m = Mount(str(folder / "c.yaml"))
    res = m.cli("fsck", "--config", m.config, check=False)
    assert res.returncode != 0
    assert "schema version 99" in res.stderr and "Traceback" not in res.stderr


# -- packed chunks ------------------------------------------------------------------
@pytest.fixture
def packed_mount(tmp_path):
    config = write_config(tmp_path, chunk_size="256KiB")
    m = Mount(config).start()
    yield m
    if m.proc is not None and m.proc.poll() is None:
        m.stop()


def small_rows(m):
    return [r for r in chunk_rows(m.store) if r[4] is not None]


def test_small_files_live_in_the_catalog_sealed(packed_mount):
    m = packed_mount
    secret = b"packed secret " * 100
    put(os.path.join(m.enc, "small"), secret)
    put(os.path.join(m.enc, "tail"), os.urandom(256 * 1024) + secret[:1000])
    put(os.path.join(m.plain, "plain"), b"plain text")
    m.stop()
    rows = small_rows(m)
    assert len(rows) == 3
    for root, _, files in os.walk(m.store):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert secret[:64] not in fh.read(), f
    # one blob file: the tail file's first, whole chunk
    blobs = [f for _, _, files in os.walk(os.path.join(m.store, "blobs")) for f in files]
    assert len(blobs) == 1
    m.start()
    assert get(os.path.join(m.enc, "small")) == secret
    assert get(os.path.join(m.enc, "tail"))[-1000:] == secret[:1000]
    assert get(os.path.join(m.plain, "plain")) == b"plain text"


def _patch_row(m, blob, data):
    db = sqlite3.connect(os.path.join(m.store, "catalog.db"))
    db.execute("UPDATE chunks SET data=? WHERE blob=?", (data, blob))
    db.commit()
    db.close()


@pytest.mark.parametrize("how", ["flip", "truncate", "extend", "swap"])
def test_tampered_packed_chunk_reads_as_eio(packed_mount, how):
    m = packed_mount
    put(os.path.join(m.enc, "a"), b"A" * 5000)
    put(os.path.join(m.enc, "b"), b"B" * 5000)
    m.stop()
    a_row, b_row = sorted(small_rows(m), key=lambda r: r[0])
    data = bytes(a_row[4])
    if how == "flip":
        data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    elif how == "truncate":
        data = data[:-1]
    elif how == "extend":
        data = data + b"\0"
    else:  # another object's sealed bytes under this object's row
        data = bytes(b_row[4])
    _patch_row(m, a_row[2], data)
    m.expect_log("cannot read inode")
    m.start()
    with pytest.raises(OSError) as ei:
        get(os.path.join(m.enc, "a"))
    assert ei.value.errno == 5
    assert get(os.path.join(m.enc, "b")) == b"B" * 5000
    m.stop()
    res = m.cli("fsck", "--config", m.config, "--verify", check=False)
    assert "DAMAGED" in res.stdout + res.stderr


def test_growing_a_packed_file_moves_it_to_a_blob(packed_mount):
    m = packed_mount
    path = os.path.join(m.enc, "grow")
    put(path, b"x" * 100)
    with open(path, "ab") as f:
        f.write(b"y" * (300 * 1024))
    assert get(path) == b"x" * 100 + b"y" * (300 * 1024)
    with open(path, "r+b") as f:
        f.truncate(50)
    assert get(path) == b"x" * 50
    m.stop()
    res = m.cli("fsck", "--config", m.config, "--verify", check=False)
    assert res.returncode == 0 and "orphan" in res.stdout
    assert "found 0 orphan" in res.stdout or "removed 0 orphan" in res.stdout
    m.start()
    assert get(path) == b"x" * 50


def test_reencryption_keeps_small_chunks_packed(packed_mount):
    m = packed_mount
    path = os.path.join(m.plain, "p")
    put(path, b"p" * 3000)
    os.setxattr(path, "user.cos.server-side-encryption", b"AES256")
    assert os.getxattr(path, "user.cos.server-side-encryption") == b"AES256"
    m.stop()
    rows = small_rows(m)
    assert len(rows) == 1 and b"p" * 64 not in bytes(rows[0][4])
    m.start()
    assert get(path) == b"p" * 3000


def test_fsck_dry_run_reports_packed_chunks_of_unlinked_inodes_as_nothing(packed_mount):
    """Packed chunks go with their row: nothing is left in the store to collect."""
    m = packed_mount
    path = os.path.join(m.enc, "gone")
    put(path, b"g" * 100)
    fd = os.open(path, os.O_RDONLY)
    os.unlink(path)
    m.kill9()
    try:
        os.close(fd)
    except OSError:  # the daemon is gone
        pass
    res = m.cli("fsck", "--config", m.config, "--dry-run", check=False)
    out = res.stdout + res.stderr
    assert "1 unlinked inode" in out and "0 released blob" in out, out
