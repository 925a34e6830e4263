"""Tier 4: the XML API driven by the two S3 programs users reach for, rclone and s3fs-fuse.

One daemon per module (``cosfs mount`` with the ``api:`` section on a free port of
127.0.0.1, a credential made with ``cosfs credentials add``) is driven by:

- **rclone** (Debian's 1.60), configured only through ``RCLONE_CONFIG_COS_*`` environment
  variables: ``type s3``, ``provider Other``, the daemon as ``endpoint``, path-style. It makes
  a bucket, copies a tree (a 0-byte file, names with spaces and non-ASCII letters, and a 12 MiB
  file above ``--s3-upload-cutoff 5M`` so that it goes up as a multipart upload), lists it,
  checks it by MD5 (single-PUT ETags; for the multipart object the ``X-Amz-Meta-Md5chksum`` that
  rclone stores and reads back), syncs deletions and changes, cats, and copies server-side
  (PUT Object - Copy, and Upload Part - Copy with ``--s3-copy-cutoff 5M``). What it wrote is
  compared byte for byte on the FUSE mount; in the bucket with AES256 default encryption the
  ``user.cos.server-side-encryption`` xattr of what it uploaded reads AES256.
- **s3fs-fuse** (Debian's 1.90) mounting a bucket through the API:
  ``-o url=http://127.0.0.1:PORT,use_path_request_style,passwd_file=FILE,endpoint=REGION``
  (``endpoint`` is the SigV4 region). The copy API works, so ``nocopyapi`` is not used: s3fs
  renames, chmods and touches with PUT Object - Copy. Two options work around s3fs 1.90 bugs
  (the requests s3fs sends are wrong; a real COS or S3 would end the same way):
  ``nomixupload``: without it s3fs rewrites a file changed in place as a multipart upload that
  copies the unchanged ranges, and it may cut a copied range into a part smaller than the
  minimum part size (s3fs-fuse/s3fs-fuse#1809, fixed after 1.90); Complete Multipart Upload
  then answers ``EntityTooSmall`` and ``close`` fails with EIO. With it s3fs uploads the whole
  file again. ``use_cache=DIR``: without a local cache, truncating a file that s3fs has just
  uploaded in parts makes it PUT zeros (the request's ``x-amz-content-sha256`` is that of the
  zero bytes; its temporary file was emptied after the upload, as in s3fs-fuse#1542).
  ``multipart_size=5`` makes files of several MiB go up as multipart uploads. Files written,
  read, renamed, changed and removed through s3fs are compared with the cosfs mount, and
  the other way round.

Both programs are skipped with a reason when they are not installed (``apt-get install rclone
s3fs``).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import (APPID, ENC, PLAIN, Mount, cosfs_cmd, fuse_available, get, is_mounted, put,
                      write_config)
from t4_api import free_port, wait_port

pytestmark = [pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
              pytest.mark.timeout(120)]

needs_rclone = pytest.mark.skipif(shutil.which("rclone") is None,
                                  reason="needs the rclone executable (apt-get install rclone)")
needs_s3fs = pytest.mark.skipif(shutil.which("s3fs") is None,
                                reason="needs the s3fs executable (apt-get install s3fs)")

REGION = "ap-guangzhou"
MiB = 1024 * 1024
API_SECTION = """\
api:
  enabled: true
  listen: 127.0.0.1:{port}
"""


class Api:
    def __init__(self, mount, port, secret_id, secret_key):
        self.mount = mount
        self.port = port
        self.url = "http://127.0.0.1:%d" % port
        self.secret_id, self.secret_key = secret_id, secret_key


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("clients") / "fs")
    port = free_port()
    config = write_config(folder, extra=API_SECTION.format(port=port))
    os.makedirs(os.path.join(folder, "data"), mode=0o700, exist_ok=True)
    out = subprocess.run(cosfs_cmd("credentials", "add", "--config", config), capture_output=True,
                         text=True, timeout=60, check=True, stdin=subprocess.DEVNULL).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    secret_id, secret_key = fields["SecretId"].strip(), fields["SecretKey"].strip()
    m = Mount(config).start()
    try:
        wait_port(port, m.proc)
        yield Api(m, port, secret_id, secret_key)
    finally:
        m.stop()
    bad = m.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


def md5(data):
    return hashlib.md5(data).hexdigest()


def tree(root):
    """{relative path: bytes} of every file under ``root`` (directories as ``path/``: None)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirs:
            out[os.path.normpath(os.path.join(rel, d)) + "/"] = None
        for f in files:
            out[os.path.normpath(os.path.join(rel, f))] = get(os.path.join(dirpath, f))
    return out


def files_only(t):
    return {k: v for k, v in t.items() if not k.endswith("/")}


# -- rclone ------------------------------------------------------------------------------
class Rclone:
    REMOTE = "cos"

    def __init__(self, api, home):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "RCLONE_"))}     # AWS_CA_BUNDLE and friends
        prefix = "RCLONE_CONFIG_%s_" % self.REMOTE.upper()
        env.update({prefix + "TYPE": "s3", prefix + "PROVIDER": "Other",
                    prefix + "ENDPOINT": api.url, prefix + "REGION": REGION,
                    prefix + "ACCESS_KEY_ID": api.secret_id,
                    prefix + "SECRET_ACCESS_KEY": api.secret_key,
                    prefix + "FORCE_PATH_STYLE": "true",
                    "HOME": home, "RCLONE_CONFIG": os.path.join(home, "rclone.conf")})
        self.env = env

    def __call__(self, *args, check=True):
        cmd = ["rclone", "--retries", "1", "--low-level-retries", "2", "--contimeout", "10s",
               "--timeout", "30s", *args]
        res = subprocess.run(cmd, env=self.env, capture_output=True, timeout=90,
                             stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError("%s failed (%d):\n%s" % (" ".join(cmd), res.returncode,
                                                          res.stderr.decode(errors="replace")))
        return res

    def remote(self, path):
        return "%s:%s" % (self.REMOTE, path)


@pytest.fixture
def rclone(api, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return Rclone(api, str(home))


MULTIPART = ("--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M")


def make_tree(root):
    """A local tree: small files, a 0-byte file, a 12 MiB file (multipart above a 5M cutoff),
    names with spaces and non-ASCII letters."""
    files = {
        "a.txt": b"hello rclone\n",
        "empty": b"",
        "with space.txt": b"spaces in the name\n",
        "sub/ünïcødé 文件.txt": "unicode content ü\n".encode(),
        "sub/small.bin": os.urandom(3000),
        "sub/deep/big.bin": os.urandom(12 * MiB),
        "sub/deep/notes.md": b"# notes\n" * 100,
    }
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        put(path, data)
    return files


def lsjson(rclone, path):
    res = rclone("lsjson", "-R", "--files-only", "--hash", rclone.remote(path))
    return {e["Path"]: e for e in json.loads(res.stdout)}


@needs_rclone
def test_rclone_copy_list_check(api, rclone, tmp_path):
    bucket = "rclone-" + APPID
    src = str(tmp_path / "src")
    files = make_tree(src)
    rclone("mkdir", rclone.remote(bucket))
    assert os.path.isdir(os.path.join(api.mount.mnt, bucket))
    rclone("copy", src, rclone.remote(bucket), *MULTIPART, "-v")

    listed = rclone("ls", rclone.remote(bucket)).stdout.decode()
    got = {}
    for line in listed.splitlines():
        size, name = line.strip().split(" ", 1)
        got[name] = int(size)
    assert got == {rel: len(data) for rel, data in files.items()}

    entries = lsjson(rclone, bucket)
    assert set(entries) == set(files)
    for rel, data in files.items():
        assert entries[rel]["Size"] == len(data)
        assert entries[rel]["Hashes"]["md5"] == md5(data), rel
    # the 12 MiB object went up in parts: its ETag is COS's <md5 of part md5s>-<n>
    big = os.path.join(api.mount.mnt, bucket, "sub/deep/big.bin")
    assert os.getxattr(big, "user.cos.etag").decode().strip('"').endswith("-3")

    res = rclone("check", src, rclone.remote(bucket))
    assert b"0 differences found" in res.stderr
    assert b"%d matching files" % len(files) in res.stderr

    # the FUSE door: every byte as rclone sent it
    assert files_only(tree(os.path.join(api.mount.mnt, bucket))) == files


@needs_rclone
def test_rclone_sync_cat_and_server_side_copy(api, rclone, tmp_path):
    bucket = "rclsync-" + APPID
    src = str(tmp_path / "src")
    files = make_tree(src)
    rclone("mkdir", rclone.remote(bucket))
    rclone("copy", src, rclone.remote(bucket), *MULTIPART)

    # local deletions and changes, then sync: deletions propagate
    os.unlink(os.path.join(src, "a.txt"))
    os.unlink(os.path.join(src, "with space.txt"))
    shutil.rmtree(os.path.join(src, "sub", "deep"))
    put(os.path.join(src, "sub", "small.bin"), b"changed and shorter")
    put(os.path.join(src, "new file.txt"), b"new")
    rclone("sync", src, rclone.remote(bucket), *MULTIPART, "-v")
    expected = files_only(tree(src))
    assert set(lsjson(rclone, bucket)) == set(expected)
    res = rclone("check", src, rclone.remote(bucket))
    assert b"0 differences found" in res.stderr
    on_mount = os.path.join(api.mount.mnt, bucket)
    assert files_only(tree(on_mount)) == expected
    assert not os.path.exists(os.path.join(on_mount, "sub", "deep"))

    assert rclone("cat", rclone.remote(bucket + "/sub/ünïcødé 文件.txt")).stdout == \
        files["sub/ünïcødé 文件.txt"]

    # server-side copies: PUT Object - Copy, then Upload Part - Copy above a 5M copy cutoff
    big = os.urandom(11 * MiB)
    put(os.path.join(on_mount, "from mount.bin"), big)
    res = rclone("copyto", rclone.remote(bucket + "/new file.txt"),
                 rclone.remote(bucket + "/copies/new copy.txt"), "-v")
    assert b"server-side copy" in res.stderr
    res = rclone("copyto", rclone.remote(bucket + "/from mount.bin"),
                 rclone.remote(bucket + "/copies/big copy.bin"), "--s3-copy-cutoff", "5M", "-vv")
    assert b"server-side copy" in res.stderr and b"multipart copy" in res.stderr
    assert get(os.path.join(on_mount, "copies", "new copy.txt")) == b"new"
    assert get(os.path.join(on_mount, "copies", "big copy.bin")) == big
    # a file written on the mount has its MD5 as ETag; the part-copied one has COS's -<n> ETag
    # (and no md5chksum metadata: rclone lists no MD5 for it, as on COS)
    assert lsjson(rclone, bucket)["from mount.bin"]["Hashes"]["md5"] == md5(big)
    assert os.getxattr(os.path.join(on_mount, "copies", "big copy.bin"),
                       "user.cos.etag").decode().strip('"').endswith("-3")

    # and the bucket goes away again
    rclone("purge", rclone.remote(bucket))
    assert not os.path.exists(on_mount)


@needs_rclone
def test_rclone_upload_to_encrypted_bucket(api, rclone, tmp_path):
    src = str(tmp_path / "src")
    files = make_tree(src)
    rclone("copy", src, rclone.remote(ENC + "/rclone"), *MULTIPART)
    res = rclone("check", src, rclone.remote(ENC + "/rclone"))
    assert b"0 differences found" in res.stderr
    on_mount = os.path.join(api.mount.mnt, ENC, "rclone")
    assert files_only(tree(on_mount)) == files
    for rel in files:
        assert os.getxattr(os.path.join(on_mount, rel),
                           "user.cos.server-side-encryption") == b"AES256", rel


# -- s3fs-fuse ---------------------------------------------------------------------------
class S3fs:
    READY_TIMEOUT = 20

    def __init__(self, api, folder, bucket, *options):
        self.mnt = os.path.join(folder, "s3fs-mnt")
        self.passwd = os.path.join(folder, "s3fs.passwd")
        self.log = os.path.join(folder, "s3fs.log")
        os.makedirs(self.mnt, exist_ok=True)
        with open(os.open(self.passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write("%s:%s\n" % (api.secret_id, api.secret_key))
        opts = ["url=" + api.url, "use_path_request_style", "passwd_file=" + self.passwd,
                "endpoint=" + REGION, "retries=2", "dbglevel=warn", *options]
        self.cmd = ["s3fs", bucket, self.mnt, "-f", "-o", ",".join(opts)]
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS")}
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + self.READY_TIMEOUT
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None:
                raise RuntimeError("s3fs exited with %s before mounting:\n%s"
                                   % (self.proc.returncode, self.log_text()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("s3fs did not mount within %ss" % self.READY_TIMEOUT)
            time.sleep(0.05)
        return self

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self):
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True, timeout=30)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def s3fs(api, tmp_path_factory):
    if shutil.which("s3fs") is None:
        pytest.skip("needs the s3fs executable of s3fs-fuse (apt-get install s3fs)")
    folder = str(tmp_path_factory.mktemp("s3fs"))
    os.mkdir(os.path.join(folder, "cache"))
    m = S3fs(api, folder, PLAIN, "nomixupload", "use_cache=" + os.path.join(folder, "cache"),
             "multipart_size=5").start()
    try:
        yield m
    finally:
        m.stop()


def listing(root):
    """{relative path: (is directory, size of a file)} under ``root``."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirs:
            out[os.path.normpath(os.path.join(rel, d))] = (True, None)
        for f in files:
            out[os.path.normpath(os.path.join(rel, f))] = (
                False, os.stat(os.path.join(dirpath, f)).st_size)
    return out


@needs_s3fs
def test_s3fs_write_read_and_compare(api, s3fs):
    mine = os.path.join(s3fs.mnt, "written")
    theirs = os.path.join(api.mount.plain, "written")
    os.mkdir(mine)
    data = {"small.txt": b"small file through s3fs\n",
            "empty": b"",
            "name with space ü.txt": "unicode ü\n".encode(),
            "big.bin": os.urandom(7 * MiB + 123),       # two parts of multipart_size=5
            "sub/deeper/file": b"nested\n" * 1000}
    os.makedirs(os.path.join(mine, "sub", "deeper"))
    for rel, content in data.items():
        put(os.path.join(mine, rel), content)
    for rel, content in data.items():
        assert get(os.path.join(mine, rel)) == content, rel
        assert get(os.path.join(theirs, rel)) == content, rel
    assert listing(mine) == listing(theirs)
    big_etag = os.getxattr(os.path.join(theirs, "big.bin"), "user.cos.etag").decode()
    assert big_etag.strip('"').endswith("-2")

    res = subprocess.run(["ls", "-l", mine], capture_output=True, text=True, timeout=30,
                         check=True)
    for name in os.listdir(theirs):
        assert name in res.stdout
    big_line = [line for line in res.stdout.splitlines() if line.endswith(" big.bin")][0]
    assert big_line.startswith("-") and (" %d " % (7 * MiB + 123)) in big_line


@needs_s3fs
def test_s3fs_mkdir_rename_rm(api, s3fs):
    mine = os.path.join(s3fs.mnt, "ops")
    theirs = os.path.join(api.mount.plain, "ops")
    os.mkdir(mine)
    os.mkdir(os.path.join(mine, "d"))
    assert os.path.isdir(os.path.join(theirs, "d"))
    big = os.urandom(6 * MiB)
    put(os.path.join(mine, "d", "big.bin"), big)
    put(os.path.join(mine, "a.txt"), b"a")

    os.rename(os.path.join(mine, "a.txt"), os.path.join(mine, "d", "b.txt"))
    os.rename(os.path.join(mine, "d", "big.bin"), os.path.join(mine, "big moved.bin"))
    assert not os.path.exists(os.path.join(theirs, "a.txt"))
    assert get(os.path.join(theirs, "d", "b.txt")) == b"a"
    assert get(os.path.join(theirs, "big moved.bin")) == big

    os.rename(os.path.join(mine, "d"), os.path.join(mine, "e"))       # a directory
    assert not os.path.exists(os.path.join(theirs, "d"))
    assert get(os.path.join(theirs, "e", "b.txt")) == b"a"
    assert listing(mine) == listing(theirs) == {
        "e": (True, None), "e/b.txt": (False, 1), "big moved.bin": (False, 6 * MiB)}

    # changed in place (the whole file goes up again: nomixupload, see the module docstring)
    with open(os.path.join(mine, "big moved.bin"), "r+b") as f:
        f.seek(5 * MiB + 7)
        f.write(b"PATCH")
    big = big[:5 * MiB + 7] + b"PATCH" + big[5 * MiB + 12:]
    assert get(os.path.join(theirs, "big moved.bin")) == big

    os.unlink(os.path.join(mine, "e", "b.txt"))
    os.rmdir(os.path.join(mine, "e"))
    os.unlink(os.path.join(mine, "big moved.bin"))
    assert os.listdir(theirs) == []
    os.rmdir(mine)
    assert not os.path.exists(theirs)


@needs_s3fs
def test_s3fs_reads_what_the_mount_wrote(api, s3fs):
    theirs = os.path.join(api.mount.plain, "from-cosfs")
    mine = os.path.join(s3fs.mnt, "from-cosfs")
    os.makedirs(os.path.join(theirs, "x", "y"))
    data = {"f.txt": b"written on the cosfs mount\n", "x/y/big.bin": os.urandom(9 * MiB),
            "x/ünï.txt": "ü".encode(), "zero": b""}
    for rel, content in data.items():
        put(os.path.join(theirs, rel), content)
    assert listing(mine) == listing(theirs)
    for rel, content in data.items():
        assert get(os.path.join(mine, rel)) == content, rel
    shutil.rmtree(mine)
    assert not os.path.exists(theirs)


@needs_s3fs
def test_s3fs_chmod_touch_symlink_truncate(api, s3fs):
    """chmod and utimes are PUT Object - Copy of the object onto itself with
    ``x-amz-metadata-directive: REPLACE`` and s3fs's ``x-amz-meta-mode``/``-mtime``: the data
    stays and the metadata arrives as the ``user.*`` xattrs of the mount."""
    mine = os.path.join(s3fs.mnt, "meta")
    theirs = os.path.join(api.mount.plain, "meta")
    os.mkdir(mine)
    data = os.urandom(6 * MiB)
    put(os.path.join(mine, "f.bin"), data)
    os.chmod(os.path.join(mine, "f.bin"), 0o600)
    os.utime(os.path.join(mine, "f.bin"), (1577934245, 1577934245))
    assert get(os.path.join(theirs, "f.bin")) == data
    assert os.getxattr(os.path.join(theirs, "f.bin"), "user.mode") == b"%d" % (0o100600)
    assert os.getxattr(os.path.join(theirs, "f.bin"), "user.mtime") == b"1577934245"
    st = os.stat(os.path.join(mine, "f.bin"))
    assert (st.st_mode & 0o7777, int(st.st_mtime)) == (0o600, 1577934245)

    os.symlink("f.bin", os.path.join(mine, "link"))
    assert os.readlink(os.path.join(mine, "link")) == "f.bin"
    assert get(os.path.join(theirs, "link")) == b"f.bin"     # s3fs keeps the target as data
    os.truncate(os.path.join(mine, "f.bin"), 3)
    assert get(os.path.join(theirs, "f.bin")) == data[:3]
    shutil.rmtree(mine)
    assert not os.path.exists(theirs)
