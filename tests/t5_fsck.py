"""``cosfs fsck``: what it repairs, what it only reports, and when it refuses to run.

- orphan blobs (in the store, referenced by nothing) are removed, and nothing else;
- a missing, short or (with ``--verify``) tampered blob is reported as damage
  with a non-zero exit status and is never "repaired";
- ``--dry-run`` reports the same findings and changes neither blobs nor catalog;
- on a mounted store it refuses with one clear line and touches nothing.
"""

import os
import sqlite3
import time

import pytest

from conftest import Mount, fuse_available, write_config

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

REGION = "ap-guangzhou"


def blob_dir(m):
    return os.path.join(m.store, "blobs", REGION)


def blob_path(m, blob):
    name = blob.hex()
    return os.path.join(blob_dir(m), name[:2], name)


def blobs_on_disk(m):
    """{blob id: size} of every blob file in the store."""
    out = {}
    root = blob_dir(m)
    for sub in os.listdir(root):
        for name in os.listdir(os.path.join(root, sub)):
            out[bytes.fromhex(name)] = os.path.getsize(os.path.join(root, sub, name))
    return out


def catalog_dump(m):
    """Every row of the tables fsck could change, from the unmounted store."""
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(m.store, "catalog.db"), uri=True)
    try:
        return {t: sorted(db.execute("SELECT * FROM %s" % t))
                for t in ("inodes", "dentries", "chunks", "xattrs", "garbage")}
    finally:
        db.close()


def chunks_of(m, path_in_bucket):
    """[(idx, blob, length)] of an object, looked up by name in the catalog."""
    bucket, *parts = path_in_bucket.split("/")
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(m.store, "catalog.db"), uri=True)
    try:
        ino = db.execute("SELECT inode FROM buckets WHERE name=?", (bucket,)).fetchone()[0]
        for name in parts:
            ino = db.execute("SELECT inode FROM dentries WHERE parent=? AND name=?",
                             (ino, name.encode())).fetchone()[0]
        return list(db.execute("SELECT idx, blob, length FROM chunks WHERE inode=? ORDER BY idx",
                               (ino,)))
    finally:
        db.close()


def plant_orphan(m):
    """A partial blob file that nothing names, as a crash in the middle of a write
    leaves one; returns its id."""
    blob = os.urandom(16)
    with open(blob_path(m, blob), "wb") as f:
        f.write(b"partial")
    return blob


def close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def fsck(m, *args):
    return m.cli("fsck", "--config", m.config, *args, check=False)


def counts(out):
    res = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("removed", "found") and parts[1].isdigit():
            res[parts[2]] = int(parts[1])
    return res


@pytest.fixture
def store(tmp_path):
    """A store with a few multi-chunk objects in both buckets, unmounted."""
    m = Mount(write_config(str(tmp_path / "fs"), chunk_size="64KiB"))
    m.start()
    m.contents = {}
    try:
        for bucket in (os.path.basename(m.plain), os.path.basename(m.enc)):
            for i, size in enumerate((0, 1000, 200 * 1024)):
                rel = "%s/f%d" % (bucket, i)
                data = os.urandom(size)
                with open(os.path.join(m.mnt, rel), "wb") as f:
                    f.write(data)
                m.contents[rel] = data
    finally:
        m.stop()
    yield m
    m.kill9()


def check_contents(m):
    m.start()
    try:
        for rel, data in m.contents.items():
            with open(os.path.join(m.mnt, rel), "rb") as f:
                assert f.read() == data, rel
    finally:
        m.stop()
    assert not m.unexpected_log_lines()


def test_clean_store_is_clean(store):
    res = fsck(store, "--verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert counts(res.stdout) == {"orphan": 0, "released": 0, "unlinked": 0}
    assert "DAMAGED" not in res.stdout


def test_removes_orphan_blobs_only(store):
    before = blobs_on_disk(store)
    fake = [os.urandom(16) for _ in range(3)]
    for i, blob in enumerate(fake):
        with open(blob_path(store, blob), "wb") as f:
            f.write(os.urandom(100 * i))  # sizes 0, 100, 200: a partial write looks like this
    res = fsck(store)
    assert res.returncode == 0, res.stdout + res.stderr
    assert counts(res.stdout)["orphan"] == 3
    assert blobs_on_disk(store) == before
    res = fsck(store)
    assert res.returncode == 0 and counts(res.stdout) == {"orphan": 0, "released": 0,
                                                          "unlinked": 0}, res.stdout
    check_contents(store)


def test_missing_blob_is_damage(store):
    rel = "%s/f2" % os.path.basename(store.enc)
    idx, blob, _ = chunks_of(store, rel)[1]
    os.unlink(blob_path(store, blob))
    before_blobs, before_cat = blobs_on_disk(store), catalog_dump(store)
    res = fsck(store)
    assert res.returncode != 0
    damaged = [line for line in res.stdout.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 1, res.stdout
    assert "missing blob" in damaged[0] and blob.hex() in damaged[0]
    assert "chunk %d" % idx in damaged[0]
    # damage is reported, never "repaired": the reference and every other blob stay
    assert blobs_on_disk(store) == before_blobs
    assert catalog_dump(store) == before_cat
    assert fsck(store).returncode != 0


def test_short_blob_is_damage(store):
    rel = "%s/f2" % os.path.basename(store.plain)
    _, blob, _ = chunks_of(store, rel)[0]
    path = blob_path(store, blob)
    os.truncate(path, os.path.getsize(path) - 1)
    res = fsck(store)
    assert res.returncode != 0
    assert "blob of wrong size %s" % blob.hex() in res.stdout, res.stdout


def test_verify_finds_tampered_chunk(store):
    rel = "%s/f2" % os.path.basename(store.enc)
    _, blob, _ = chunks_of(store, rel)[2]
    path = blob_path(store, blob)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    # same size: only authentication notices
    assert fsck(store).returncode == 0
    res = fsck(store, "--verify")
    assert res.returncode != 0
    assert "chunk failing authentication %s" % blob.hex() in res.stdout, res.stdout
    assert os.path.exists(path)


def test_dry_run_changes_nothing(store):
    # an unlinked-while-open object left by a crash, and an orphan blob
    store.start()
    path = os.path.join(store.plain, "open-unlinked")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(150 * 1024))
        os.fsync(fd)
        os.unlink(path)
        store.kill9()
    finally:
        close_quietly(fd)
    orphan = plant_orphan(store)
    before_blobs, before_cat = blobs_on_disk(store), catalog_dump(store)

    res = fsck(store, "--dry-run", "--verify")
    assert res.returncode == 0, res.stdout + res.stderr
    found = counts(res.stdout)
    assert found["orphan"] >= 1 and found["unlinked"] == 1, res.stdout
    assert all(line.split()[0] != "removed" for line in res.stdout.splitlines()), res.stdout
    assert blobs_on_disk(store) == before_blobs
    assert catalog_dump(store) == before_cat
    assert counts(fsck(store, "--dry-run").stdout) == found

    res = fsck(store)
    assert res.returncode == 0 and counts(res.stdout) == found, res.stdout
    assert orphan not in blobs_on_disk(store)
    assert counts(fsck(store).stdout) == {"orphan": 0, "released": 0, "unlinked": 0}
    check_contents(store)


def test_refuses_mounted_store(store):
    orphan = os.urandom(16)
    with open(blob_path(store, orphan), "wb") as f:
        f.write(b"x")
    store.start()
    try:
        before = catalog_dump(store)
        for args in ((), ("--dry-run",)):
            res = fsck(store, *args)
            assert res.returncode != 0
            assert res.stdout == ""
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1, res.stderr
            assert "Traceback" not in res.stderr
            assert "in use" in lines[0] and "unmount" in lines[0], lines[0]
        assert orphan in blobs_on_disk(store)
        assert catalog_dump(store) == before
        # the mount is unharmed
        with open(os.path.join(store.plain, "after"), "wb") as f:
            f.write(b"still works")
        with open(os.path.join(store.plain, "after"), "rb") as f:
            assert f.read() == b"still works"
    finally:
        store.stop()
    assert not store.unexpected_log_lines()


def test_no_store(tmp_path):
    cfg = write_config(str(tmp_path / "fresh"))
    res = Mount(cfg).cli("fsck", "--config", cfg, check=False)
    assert res.returncode != 0
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not os.path.exists(os.path.join(str(tmp_path / "fresh"), "data", "catalog.db"))


def test_a_start_after_a_crash_removes_the_blobs_no_commit_named(store):
    """A kill -9 leaves the blobs of chunks sealed for a commit that never came; the next
    mount removes them (and a blob planted there), so disk space does not leak until an
    offline fsck. A clean start removes nothing."""
    committed = len(blobs_on_disk(store))
    store.start()
    path = os.path.join(store.enc, "never-closed")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(8):  # a sequential writer's completed chunks are sealed at once
            os.write(fd, os.urandom(64 * 1024))
        deadline = 0
        while len(blobs_on_disk(store)) < committed + 6 and deadline < 200:
            deadline += 1
            time.sleep(0.05)
        store.kill9()
    finally:
        close_quietly(fd)
    planted = plant_orphan(store)
    left = blobs_on_disk(store)
    assert planted in left and len(left) > committed + 1
    store.start()
    try:
        named = {blob for rel in store.contents for _, blob, _ in chunks_of(store, rel)}
        assert set(blobs_on_disk(store)) <= named  # packed chunks have no blob file
        for rel, data in store.contents.items():
            with open(os.path.join(store.mnt, rel), "rb") as f:
                assert f.read() == data, rel
    finally:
        store.stop()
    assert "removed %d blob(s) that no commit named" % (len(left) - committed) in store.log_text()
    assert counts(fsck(store).stdout) == {"orphan": 0, "released": 0, "unlinked": 0}
    before = blobs_on_disk(store)
    check_contents(store)  # a clean start removes nothing
    assert blobs_on_disk(store) == before
