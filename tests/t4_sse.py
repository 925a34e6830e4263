"""Encryption rules (cos-reference.md) on a real mount.

Bucket default encryption through the CLI and the bucket xattr, the override
xattr on objects, which operations may and may not change an object's
encryption, what copies carry, the read-only status xattrs, and a marker
test that looks at every byte the store and the catalog hold.
"""

import errno
import hashlib
import os
import shutil
import subprocess

import pytest

from conftest import APPID, get, put, write_config

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024
SSE = "user.cos.server-side-encryption"
BENC = "user.cos.bucket-encryption"


@pytest.fixture
def config_path(tmp_path):
    return write_config(str(tmp_path / "fs"), chunk_size="64KiB", write_buffer="256KiB")


def oserr(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    raise AssertionError("%s%r did not fail" % (fn.__name__, args))


def sse(path):
    """The object's actual encryption, or None when it is stored in plaintext."""
    try:
        return os.getxattr(path, SSE).decode()
    except OSError as exc:
        assert exc.errno == errno.ENODATA, exc
        return None


def make_marker():
    return os.urandom(64)


def marker_data(marker, size=5 * CHUNK + 100):
    return (marker * (size // 64 + 1))[:size]


def pieces(marker):
    """The marker and every 16-byte window of the repeated marker."""
    doubled = marker + marker
    return [marker] + [doubled[i:i + 16] for i in range(64)]


def store_files(mount):
    for d, _, files in os.walk(mount.store):
        for f in files:
            yield os.path.join(d, f)


def leaks(mount, marker):
    """Files under the store directory holding the marker or a 16-byte piece of it."""
    found = []
    needles = pieces(marker)
    for path in store_files(mount):
        with open(path, "rb") as f:
            data = f.read()
        if any(n in data for n in needles):
            found.append(os.path.relpath(path, mount.store))
    return found


def cli_ok(mount, *args, input=None):
    return mount.cli("bucket-encryption", *args, input=input)


# -- bucket default: CLI on the running mount -------------------------------------------
GOOD_XML = (b"<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault>"
            b"<SSEAlgorithm>AES256</SSEAlgorithm></ApplyServerSideEncryptionByDefault></Rule>"
            b"</ServerSideEncryptionConfiguration>")


def test_cli_bucket_encryption_on_the_mount(mount, tmp_path):
    res = mount.cli("bucket-encryption", "--method", "get", mount.plain, check=False)
    assert res.returncode != 0 and "NoSuchEncryptionConfiguration" in res.stderr
    out = cli_ok(mount, "--method", "get", mount.enc).stdout
    assert "<SSEAlgorithm>AES256</SSEAlgorithm>" in out
    cli_ok(mount, "--method", "put", mount.plain, "--sse-algorithm", "AES256")
    assert "<SSEAlgorithm>AES256</SSEAlgorithm>" in cli_ok(mount, "--method", "get",
                                                           mount.plain).stdout
    before = cli_ok(mount, "--method", "get", mount.plain).stdout
    bad = [b"<ServerSideEncryptionConfiguration><Rule>",                       # not closed
           GOOD_XML.replace(b"AES256", b"DES"),                                # algorithm
           GOOD_XML.replace(b"AES256", b"aes256"),
           b"<Other/>",
           b"not xml at all",
           GOOD_XML.replace(b"</SSEAlgorithm>",
                            b"</SSEAlgorithm><KMSMasterKeyID>k</KMSMasterKeyID>"),
           b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>' + GOOD_XML]
    for i, doc in enumerate(bad):
        f = tmp_path / ("bad%d.xml" % i)
        f.write_bytes(doc)
        res = mount.cli("bucket-encryption", "--method", "put", mount.plain, "--xml", str(f),
                        check=False)
        assert res.returncode == 1, (doc, res.stderr)
        assert "MalformedXML" in res.stderr, (doc, res.stderr)
        assert res.stderr.count("\n") == 1
        assert cli_ok(mount, "--method", "get", mount.plain).stdout == before
    cli_ok(mount, "--method", "put", mount.plain, "--xml", "-", input=GOOD_XML.decode())
    cli_ok(mount, "--method", "delete", mount.plain)
    res = mount.cli("bucket-encryption", "--method", "get", mount.plain, check=False)
    assert res.returncode != 0 and "NoSuchEncryptionConfiguration" in res.stderr
    cli_ok(mount, "--method", "delete", mount.plain)                # absent: no error
    mount.restart()
    res = mount.cli("bucket-encryption", "--method", "get", mount.plain, check=False)
    assert res.returncode != 0
    assert "AES256" in cli_ok(mount, "--method", "get", mount.enc).stdout
    res = mount.cli("bucket-encryption", "--method", "get", os.path.join(mount.mnt, "nope"),
                    check=False)
    assert res.returncode != 0


def test_bucket_encryption_xattr(mount):
    assert oserr(os.getxattr, mount.plain, BENC) == errno.ENODATA
    assert BENC not in os.listxattr(mount.plain) and BENC not in os.listxattr(mount.enc)
    assert os.getxattr(mount.plain, "user.cos.bucket-region") == b"ap-guangzhou"
    os.setxattr(mount.plain, BENC, b"AES256")
    doc = os.getxattr(mount.plain, BENC)
    assert b"<SSEAlgorithm>AES256</SSEAlgorithm>" in doc
    for bad in (b"DES", b"<x", b"", GOOD_XML.replace(b"AES256", b"RC4")):
        assert oserr(os.setxattr, mount.plain, BENC, bad) == errno.EINVAL
        assert os.getxattr(mount.plain, BENC) == doc
    os.removexattr(mount.plain, BENC)
    assert oserr(os.getxattr, mount.plain, BENC) == errno.ENODATA
    assert oserr(os.removexattr, mount.plain, BENC) == errno.ENODATA
    os.setxattr(mount.plain, BENC, GOOD_XML)
    mount.restart()
    assert b"AES256" in os.getxattr(mount.plain, BENC)
    # the bucket xattr means nothing on an object or a sub-directory
    os.mkdir(os.path.join(mount.plain, "sub"))
    assert oserr(os.getxattr, os.path.join(mount.plain, "sub"), BENC) == errno.ENODATA
    assert oserr(os.setxattr, os.path.join(mount.plain, "sub"), BENC, b"AES256") in (
        errno.EINVAL, errno.EPERM)
    assert oserr(os.setxattr, mount.plain, "user.cos.bucket-region", b"ap-shanghai") == \
        errno.EPERM


def test_default_applies_to_new_content_only(mount):
    old = os.path.join(mount.plain, "old")
    put(old, b"o" * (2 * CHUNK + 3))
    os.setxattr(mount.plain, BENC, b"AES256")
    assert sse(old) is None                                     # PUT never touches objects
    new = os.path.join(mount.plain, "new")
    put(new, b"n" * 1000)
    assert sse(new) == "AES256"
    os.chmod(old, 0o600)
    assert sse(old) is None
    mount.restart()
    assert sse(old) is None and sse(new) == "AES256"
    with open(old, "ab") as f:                                  # new content: re-resolved
        f.write(b"tail")
    assert sse(old) == "AES256"
    assert get(old) == b"o" * (2 * CHUNK + 3) + b"tail"
    os.removexattr(mount.plain, BENC)
    assert sse(new) == "AES256"                                 # DELETE touches nothing
    fresh = os.path.join(mount.plain, "fresh")
    put(fresh, b"f")
    assert sse(fresh) is None
    with open(new, "r+b") as f:                                 # overwrite: no default now
        f.write(b"N")
    assert sse(new) is None and get(new) == b"N" + b"n" * 999
    mount.restart()
    assert sse(old) == "AES256" and sse(new) is None and sse(fresh) is None
    assert get(old) == b"o" * (2 * CHUNK + 3) + b"tail"


# -- the override xattr -----------------------------------------------------------------
def test_override_reencrypts_in_place(mount):
    marker = make_marker()
    data = marker_data(marker)
    p = os.path.join(mount.plain, "obj")
    put(p, data)
    assert sse(p) is None
    assert SSE not in os.listxattr(p)
    etag = os.getxattr(p, "user.cos.etag")
    mtime = os.stat(p).st_mtime_ns
    os.setxattr(p, SSE, b"AES256")
    assert sse(p) == "AES256" and SSE in os.listxattr(p)
    assert get(p) == data
    assert os.getxattr(p, "user.cos.etag") == etag             # the ETag is of the plaintext
    assert os.stat(p).st_mtime_ns == mtime                     # the content did not change
    ino = os.stat(p).st_ino
    mount.stop()
    assert leaks(mount, marker) == []
    mount.start()
    assert get(p) == data and os.stat(p).st_ino == ino
    os.removexattr(p, SSE)                                      # plain bucket: plain again
    assert sse(p) is None and get(p) == data
    mount.stop()
    assert any(f.startswith("blobs") for f in leaks(mount, marker))
    mount.start()
    assert get(p) == data
    os.setxattr(p, SSE, b"AES256\n")                            # setfattr-style trailing junk
    assert sse(p) == "AES256"


def test_override_in_an_encrypted_bucket(mount):
    p = os.path.join(mount.enc, "obj")
    data = os.urandom(3 * CHUNK + 1)
    put(p, data)
    assert sse(p) == "AES256"
    assert oserr(os.removexattr, os.path.join(mount.enc, "nothing-here"), SSE) == errno.ENOENT
    os.removexattr(p, SSE)                                       # no request: default again
    assert sse(p) == "AES256" and get(p) == data
    try:
        os.setxattr(p, SSE, b"SM4")
    except OSError as exc:                                      # SM4 is optional
        assert exc.errno in (errno.EINVAL, errno.ENOTSUP)
    else:
        assert sse(p) == "SM4" and get(p) == data
        mount.restart()
        assert sse(p) == "SM4" and get(p) == data
        os.removexattr(p, SSE)
        assert sse(p) == "AES256" and get(p) == data


def test_invalid_override_values(mount):
    p = os.path.join(mount.plain, "obj")
    q = os.path.join(mount.enc, "obj")
    put(p, b"plain")
    put(q, b"secret")
    for bad in (b"aes256", b"AES128", b"", b"KMS", b"AES256 AES256", b"\xff\xfe", b"none",
                b"AES256\x00junk"):
        assert oserr(os.setxattr, p, SSE, bad) == errno.EINVAL, bad
        assert oserr(os.setxattr, q, SSE, bad) == errno.EINVAL, bad
    assert sse(p) is None and sse(q) == "AES256"
    assert get(p) == b"plain" and get(q) == b"secret"
    d = os.path.join(mount.plain, "dir")
    os.mkdir(d)
    assert oserr(os.setxattr, d, SSE, b"AES256") == errno.EINVAL
    assert oserr(os.getxattr, d, SSE) == errno.ENODATA


def test_metadata_changes_never_change_encryption(mount):
    marker = make_marker()
    e = os.path.join(mount.enc, "e")
    put(e, marker_data(marker))
    pl = os.path.join(mount.plain, "p")
    put(pl, b"plain content")
    # flip the bucket defaults: a re-resolution would now give the opposite state
    os.removexattr(mount.enc, BENC)
    os.setxattr(mount.plain, BENC, b"AES256")
    for path in (e, pl):
        before = sse(path)
        os.chmod(path, 0o600)
        os.chown(path, 123, 456)
        os.utime(path, ns=(1, 2))
        os.setxattr(path, "user.note", b"n")
        os.removexattr(path, "user.note")
        os.link(path, path + ".lnk")
        os.unlink(path + ".lnk")
        os.rename(path, path + ".tmp")
        os.mkdir(os.path.join(os.path.dirname(path), "sub-" + os.path.basename(path)))
        os.rename(path + ".tmp", os.path.join(os.path.dirname(path),
                                              "sub-" + os.path.basename(path), "moved"))
        os.rename(os.path.join(os.path.dirname(path), "sub-" + os.path.basename(path), "moved"),
                  path)
        with open(path, "rb") as f:                              # open/read/close
            f.read()
        fd = os.open(path, os.O_RDWR)                            # open for writing, no write
        os.fsync(fd)
        os.close(fd)
        assert sse(path) == before, path
    assert sse(e) == "AES256" and sse(pl) is None
    mount.stop()
    assert leaks(mount, marker) == []
    mount.start()
    assert sse(e) == "AES256" and get(e) == marker_data(marker)
    assert sse(pl) is None and get(pl) == b"plain content"


# -- copies -------------------------------------------------------------------------------
def test_mv_encrypted_object_to_plain_bucket_stays_encrypted(mount):
    marker = make_marker()
    src = os.path.join(mount.enc, "secret")
    put(src, marker_data(marker))
    os.makedirs(os.path.join(mount.enc, "tree/sub"))
    put(os.path.join(mount.enc, "tree/sub/inner"), marker_data(marker, 1000))
    subprocess.run(["mv", src, os.path.join(mount.plain, "secret")], check=True)
    subprocess.run(["mv", os.path.join(mount.enc, "tree"), os.path.join(mount.plain, "tree")],
                   check=True)
    dst = os.path.join(mount.plain, "secret")
    assert not os.path.exists(src)
    assert sse(dst) == "AES256" and get(dst) == marker_data(marker)
    assert sse(os.path.join(mount.plain, "tree/sub/inner")) == "AES256"
    mount.stop()
    assert leaks(mount, marker) == []
    mount.start()
    assert get(dst) == marker_data(marker)


def test_what_copies_carry(mount, tmp_path):
    src = os.path.join(mount.enc, "src")
    put(src, os.urandom(2 * CHUNK + 9))
    plain_src = os.path.join(mount.plain, "psrc")
    put(plain_src, b"plain source")
    subprocess.run(["cp", src, os.path.join(mount.plain, "cp")], check=True)
    subprocess.run(["cp", "-a", src, os.path.join(mount.plain, "cp-a")], check=True)
    subprocess.run(["cp", "--preserve=xattr", src, os.path.join(mount.plain, "cp-x")],
                   check=True)
    subprocess.run(["cp", plain_src, os.path.join(mount.enc, "pcp")], check=True)
    subprocess.run(["cp", "-a", plain_src, os.path.join(mount.enc, "pcp-a")], check=True)
    assert sse(os.path.join(mount.plain, "cp")) is None             # destination default
    assert sse(os.path.join(mount.plain, "cp-a")) == "AES256"       # carried
    assert sse(os.path.join(mount.plain, "cp-x")) == "AES256"
    assert sse(os.path.join(mount.enc, "pcp")) == "AES256"
    assert sse(os.path.join(mount.enc, "pcp-a")) == "AES256"
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-aX", src, os.path.join(mount.plain, "rs-x")], check=True)
        subprocess.run(["rsync", "-a", src, os.path.join(mount.plain, "rs")], check=True)
        assert sse(os.path.join(mount.plain, "rs-x")) == "AES256"
        assert sse(os.path.join(mount.plain, "rs")) is None
    for name in ("cp", "cp-a", "cp-x"):
        assert get(os.path.join(mount.plain, name)) == get(src)
    # an explicit request is carried into a bucket with another default, and wins there
    sm4 = os.path.join(mount.plain, "sm4")
    put(sm4, os.urandom(CHUNK + 3))
    os.setxattr(sm4, SSE, b"SM4")
    subprocess.run(["cp", "-a", sm4, os.path.join(mount.enc, "sm4-a")], check=True)
    subprocess.run(["mv", sm4, os.path.join(mount.enc, "sm4-mv")], check=True)
    subprocess.run(["cp", os.path.join(mount.enc, "sm4-mv"), os.path.join(mount.enc, "sm4-cp")],
                   check=True)
    assert sse(os.path.join(mount.enc, "sm4-a")) == "SM4"
    assert sse(os.path.join(mount.enc, "sm4-mv")) == "SM4"
    assert sse(os.path.join(mount.enc, "sm4-cp")) == "AES256"
    assert get(os.path.join(mount.enc, "sm4-a")) == get(os.path.join(mount.enc, "sm4-mv"))
    # a copy out of the mount gets the request as a plain user xattr, and back in again
    local = str(tmp_path / "local")
    subprocess.run(["cp", "-a", src, local], check=True)
    try:
        assert os.getxattr(local, SSE) == b"AES256"
    except OSError:
        pytest.skip("the local file system has no user xattrs")
    subprocess.run(["cp", "-a", local, os.path.join(mount.plain, "back")], check=True)
    assert sse(os.path.join(mount.plain, "back")) == "AES256"
    mount.restart()
    assert sse(os.path.join(mount.plain, "cp-a")) == "AES256"
    assert sse(os.path.join(mount.plain, "cp")) is None


def test_cp_a_into_plain_bucket_leaves_no_plaintext(mount):
    marker = make_marker()
    src = os.path.join(mount.enc, "src")
    put(src, marker_data(marker))
    subprocess.run(["cp", "-a", src, os.path.join(mount.plain, "copy")], check=True)
    assert sse(os.path.join(mount.plain, "copy")) == "AES256"
    mount.stop()
    # cp writes the data first and sets the xattr last; the plaintext blobs of that
    # moment are garbage once the object is re-encrypted and must be gone after unmount
    assert leaks(mount, marker) == []


# -- status xattrs ----------------------------------------------------------------------
def test_status_xattrs(mount):
    for bucket in (mount.plain, mount.enc):
        p = os.path.join(bucket, "obj")
        data = os.urandom(3 * CHUNK + 17)
        put(p, data)
        etag = os.getxattr(p, "user.cos.etag").decode()
        assert etag == hashlib.md5(data).hexdigest()
        assert os.getxattr(p, "user.cos.version-id") == b"null"
        listed = os.listxattr(p)
        assert "user.cos.etag" not in listed and "user.cos.version-id" not in listed
        for name in ("user.cos.etag", "user.cos.version-id", "user.cos.replication-status"):
            assert oserr(os.setxattr, p, name, b"x") == errno.EPERM
            assert oserr(os.removexattr, p, name) == errno.EPERM
        with open(p, "r+b") as f:
            f.seek(CHUNK)
            f.write(b"changed")
        data = data[:CHUNK] + b"changed" + data[CHUNK + 7:]
        assert os.getxattr(p, "user.cos.etag").decode() == hashlib.md5(data).hexdigest()
        empty = os.path.join(bucket, "empty")
        put(empty, b"")
        assert os.getxattr(empty, "user.cos.etag") == hashlib.md5(b"").hexdigest().encode()
    mount.restart()
    p = os.path.join(mount.enc, "obj")
    assert os.getxattr(p, "user.cos.etag").decode() == hashlib.md5(get(p)).hexdigest()


# -- the marker test -------------------------------------------------------------------------
def test_marker_never_reaches_the_store_in_plaintext(mount):
    marker = make_marker()
    enc_obj = os.path.join(mount.enc, "marked")
    data = bytearray(marker_data(marker, 6 * CHUNK + 5))
    put(enc_obj, data)
    # partial rewrites, appends, holes and truncation also go through sealing
    fd = os.open(enc_obj, os.O_RDWR)
    os.pwrite(fd, marker * 3, CHUNK - 50)
    os.pwrite(fd, marker, 9 * CHUNK)
    os.ftruncate(fd, 8 * CHUNK + 13)
    os.write(fd, marker * 2)
    os.fsync(fd)
    os.close(fd)
    with open(enc_obj, "ab") as f:
        for _ in range(50):
            f.write(marker)
    os.setxattr(enc_obj, "user.other", b"metadata is not encrypted")
    small = os.path.join(mount.enc, "small")
    put(small, marker)
    others = []
    for alg in ("SM4", "KMS"):                                  # the other bucket defaults
        bucket = os.path.join(mount.mnt, "%s-%s" % (alg.lower(), APPID))
        os.mkdir(bucket)
        os.setxattr(bucket, BENC, alg.encode())
        others.append(os.path.join(bucket, "marked"))
        put(others[-1], marker_data(marker, 3 * CHUNK + 7))
        assert sse(others[-1]) == {"SM4": "SM4", "KMS": "cos/kms"}[alg]
    over = os.path.join(mount.plain, "override")                # an override in a plain bucket
    put(over, b"")
    os.setxattr(over, SSE, b"SM4")
    with open(over, "ab") as f:
        f.write(marker_data(marker, 2 * CHUNK))
    plain_obj = os.path.join(mount.plain, "visible")
    put(plain_obj, marker_data(marker, 1000))
    expected = get(enc_obj)
    mount.stop()
    found = leaks(mount, marker)
    # the plain bucket's object, small enough to be packed into its catalog row
    assert found == ["catalog.db"]
    mount.start()
    os.unlink(plain_obj)
    mount.stop()
    assert leaks(mount, marker) == []
    mount.start()
    assert get(enc_obj) == expected and get(small) == marker
    for path in others:
        assert get(path) == marker_data(marker, 3 * CHUNK + 7)
    assert sse(over) == "SM4" and get(over) == marker_data(marker, 2 * CHUNK)
