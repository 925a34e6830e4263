"""Versioning and cross-region replication on a real mount with two regions.

Each region has its own chunk store folder (``data/blobs/<region>``). The tests
drive the mount with ordinary file operations and the ``cosfs`` command line
(bucket-versioning, bucket-replication, versions), and check the seed's rule 5
for all four combinations (source plain or encrypted x destination with or
without a default) through ``user.cos.server-side-encryption`` and by scanning
the destination region's store for plaintext. A kill -9 with a full queue is
followed by a remount that finishes the queue without tearing or doubling.
"""

import json
import os
import time

import pytest

from conftest import APPID, Mount, errno_of, fuse_available, get, put

SRC_A = "srca-" + APPID
SRC_B = "srcb-" + APPID
DEST_PLAIN = "dstplain-" + APPID
DEST_SM4 = "dstsm4-" + APPID

CONFIG = """\
mountpoint: ./mnt
store: ./data
keys: ./keys
appid: "{appid}"
region: ap-guangzhou
regions: [ap-guangzhou, ap-shanghai]
buckets:
  - name: {a}
  - name: {b}
  - name: {dp}
    region: ap-shanghai
  - name: {ds}
    region: ap-shanghai
    encryption: SM4
chunk_size: 256KiB
write_buffer: 4MiB
log_level: info
"""

SSE = "user.cos.server-side-encryption"
STATUS = "user.cos.replication-status"


@pytest.fixture
def m(tmp_path):
    if not fuse_available():
        pytest.skip("needs /dev/fuse and fusermount3")
    folder = tmp_path / "fs"
    folder.mkdir()
    path = folder / "cosfs.yaml"
    path.write_text(CONFIG.format(appid=APPID, a=SRC_A, b=SRC_B, dp=DEST_PLAIN, ds=DEST_SM4))
    mnt = Mount(str(path)).start()
    try:
        yield mnt
    finally:
        mnt.stop()
    bad = mnt.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


def b(m, bucket, *rest):
    return os.path.join(m.mnt, bucket, *rest)


def xattr(path, name):
    try:
        return os.getxattr(path, name).decode()
    except OSError:
        return None


def enable_versioning(m, *buckets):
    for bucket in buckets:
        m.cli("bucket-versioning", "--method", "put", b(m, bucket), "--status", "Enabled")
        assert "Enabled" in m.cli("bucket-versioning", "--method", "get", b(m, bucket)).stdout


def replicate(m, src, dest, prefix=""):
    m.cli("bucket-replication", "--method", "put", b(m, src), "--dest-bucket",
          "qcs::cos:ap-shanghai::%s" % dest, "--prefix", prefix, "--rule-id", "to-" + dest)


def wait_status(path, want="COMPLETED", timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = xattr(path, STATUS)
        if got == want:
            return
        time.sleep(0.05)
    raise AssertionError("%s: replication status %r, expected %s" % (path, got, want))


def wait_for(cond, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def versions(m, target):
    """[(version id, latest, marker)] from ``cosfs versions list``."""
    out = m.cli("versions", "list", target).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        rows.append((parts[0], "latest" in parts[1:3], "delete-marker" in parts[1:3]))
    return rows


def store_holds(m, region, needle):
    folder = os.path.join(m.store, "blobs", region)
    for root, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                if needle in fh.read():
                    return True
    return False


def test_versions_on_the_mount_and_the_command_line(m, tmp_path):
    enable_versioning(m, SRC_A)
    f = b(m, SRC_A, "notes", "todo.txt")
    os.makedirs(os.path.dirname(f))
    put(f, b"first draft\n")
    first = xattr(f, "user.cos.version-id")
    with open(f, "ab") as fh:  # one session: one new version
        fh.write(b"more\n")
        fh.flush()
        os.fsync(fh.fileno())
        fh.write(b"and more\n")
    assert xattr(f, "user.cos.version-id") not in (first, "null")
    rows = versions(m, f)
    assert len(rows) == 2 and rows[0][1] and rows[1][0] == first
    out = tmp_path / "old.txt"
    m.cli("versions", "get", f, "--version-id", first, "-o", str(out))
    assert out.read_bytes() == b"first draft\n"
    # rm leaves a delete marker; the versions stay listed under the gone path
    os.unlink(f)
    rows = versions(m, f)
    assert rows[0][2] and rows[0][1] and len(rows) == 3
    res = m.cli("versions", "restore", f, "--version-id", first)
    assert "restored" in res.stdout
    wait_for(lambda: os.path.exists(f), what="the restored file")
    assert get(f) == b"first draft\n"
    assert len(versions(m, f)) == 4
    # a version deleted for good is gone; an unknown one is a clear error
    m.cli("versions", "delete", f, "--version-id", first)
    res = m.cli("versions", "get", f, "--version-id", first, check=False)
    assert res.returncode == 1 and "NoSuchVersion" in res.stderr
    # a bucket with versions left cannot be removed
    os.unlink(f)
    os.rmdir(os.path.dirname(f))
    assert errno_of(os.rmdir, b(m, SRC_A)) is not None
    # versioning cannot be removed, only suspended
    assert errno_of(os.removexattr, b(m, SRC_A), "user.cos.bucket-versioning") is not None
    m.cli("bucket-versioning", "--method", "put", b(m, SRC_A), "--status", "Suspended")
    g = b(m, SRC_A, "suspended")
    put(g, b"x")
    put(g, b"y")
    assert xattr(g, "user.cos.version-id") == "null" and len(versions(m, g)) == 1


def test_replication_follows_rule_five_in_all_four_combinations(m):
    enable_versioning(m, SRC_A, SRC_B, DEST_PLAIN, DEST_SM4)
    res = m.cli("bucket-replication", "--method", "get", b(m, SRC_A), check=False)
    assert res.returncode == 1 and "ReplicationConfigurationNotFound" in res.stderr
    replicate(m, SRC_A, DEST_PLAIN, prefix="docs/")
    replicate(m, SRC_B, DEST_SM4)
    assert DEST_PLAIN in m.cli("bucket-replication", "--method", "get", b(m, SRC_A)).stdout
    secret_plain = b"plaintext-marker-%s\n" % os.urandom(8).hex().encode()
    secret_enc = b"encrypted-marker-%s\n" % os.urandom(8).hex().encode()
    cases = []
    for src, dest in ((SRC_A, DEST_PLAIN), (SRC_B, DEST_SM4)):
        folder = b(m, src, "docs")
        os.makedirs(folder)
        plain, enc = os.path.join(folder, "plain.txt"), os.path.join(folder, "enc.txt")
        put(plain, secret_plain * 1000)  # larger than packed chunks
        put(enc, b"")
        os.setxattr(enc, SSE, b"AES256")  # the object's request, before any data
        put(enc, secret_enc * 1000)
        cases += [(plain, src, dest, None), (enc, src, dest, "AES256")]
    outside = b(m, SRC_A, "other.txt")
    put(outside, b"not under docs/")
    for path, src, dest, sse in cases:
        wait_status(path)
        replica = b(m, dest, "docs", os.path.basename(path))
        assert get(replica) == get(path)
        assert xattr(replica, STATUS) == "REPLICA"
        assert xattr(replica, "user.cos.version-id") == xattr(path, "user.cos.version-id")
        expected = sse or ("SM4" if dest == DEST_SM4 else None)
        assert xattr(replica, SSE) == expected, (path, dest)
    assert xattr(outside, STATUS) is None
    assert not os.path.exists(b(m, DEST_PLAIN, "other.txt"))
    # the destination region's store: plaintext only of the plain object with no default
    assert store_holds(m, "ap-shanghai", secret_plain)  # SRC_A plain -> DEST_PLAIN
    assert not store_holds(m, "ap-shanghai", secret_enc)
    # replicas never replicate again; the queue is empty
    status = json.loads(m.cli("bucket-replication", "--method", "status", b(m, SRC_B)).stdout)
    assert status["queued"] == 0 and status["failed"] == 0


def test_renames_overwrites_and_deletes_replicate(m):
    enable_versioning(m, SRC_A, DEST_PLAIN)
    replicate(m, SRC_A, DEST_PLAIN)
    f = b(m, SRC_A, "a.txt")
    put(f, b"one")
    put(f, b"two")  # an overwrite: a second version, copied in order
    wait_status(f)
    dest = b(m, DEST_PLAIN, "a.txt")
    assert get(dest) == b"two"
    assert len(versions(m, dest)) == 2
    os.rename(f, b(m, SRC_A, "b.txt"))
    wait_status(b(m, SRC_A, "b.txt"))
    wait_for(lambda: not os.path.exists(dest), what="the replicated delete marker")
    assert get(b(m, DEST_PLAIN, "b.txt")) == b"two"
    rows = versions(m, dest)
    assert rows[0][2] and len(rows) == 3  # marker on top of both versions
    # deleting the rule stops replication; what was copied stays
    m.cli("bucket-replication", "--method", "delete", b(m, SRC_A))
    put(b(m, SRC_A, "c.txt"), b"after the rule")
    time.sleep(1)
    assert not os.path.exists(b(m, DEST_PLAIN, "c.txt"))
    assert xattr(b(m, SRC_A, "c.txt"), STATUS) is None


def test_a_full_queue_survives_kill9(m):
    enable_versioning(m, SRC_A, DEST_PLAIN)
    replicate(m, SRC_A, DEST_PLAIN)
    data = {"f%03d" % i: os.urandom(1000 + 5000 * i) for i in range(40)}
    for name, content in data.items():
        put(b(m, SRC_A, name), content)
    m.kill9()  # the queue is durable with the writes it belongs to
    m.start()
    for name, content in data.items():
        wait_status(b(m, SRC_A, name))
        assert get(b(m, DEST_PLAIN, name)) == content
        assert len(versions(m, b(m, DEST_PLAIN, name))) == 1, name  # no copy twice
    # holders of noncurrent versions and replicas are whole: fsck finds nothing to fix
    m.stop()
    res = m.cli("fsck", "--config", m.config, "--verify", "--dry-run")
    assert "DAMAGED" not in res.stdout + res.stderr
