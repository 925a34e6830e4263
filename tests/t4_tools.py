"""Real programs on a real cosfs mount: cp, rsync, tar, git, sqlite, dd, attr tools, ln, mv.

A source tree with files of several sizes (empty, small, multi-chunk),
symlinks, empty directories, modes, nanosecond times and user xattrs is
built in a local directory; the tools copy it into the buckets and the
result is compared entry by entry, including metadata.
"""

import hashlib
import os
import random
import shutil
import sqlite3
import stat
import subprocess

import pytest

from conftest import write_config

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024


@pytest.fixture
def config_path(tmp_path):
    return write_config(str(tmp_path / "fs"), chunk_size="64KiB", write_buffer="256KiB")


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip("missing tools: %s" % ", ".join(missing))


def run(*cmd, cwd=None, env=None):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, errors="replace",
                         timeout=100)
    assert res.returncode == 0, "%s failed (%d):\n%s\n%s" % (" ".join(cmd), res.returncode,
                                                            res.stdout[-2000:], res.stderr[-2000:])
    return res.stdout


def make_tree(root, seed=1):
    """A varied tree in a local directory (with user xattrs if the local fs has them)."""
    rnd = random.Random(seed)
    os.makedirs(root)
    sizes = [0, 1, 100, 4095, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 77, 300_000]
    for d in ("", "a", "a/b", "a/b/c", "docs", "empty/inner"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i, size in enumerate(sizes):
        p = os.path.join(root, rnd.choice(["", "a", "a/b", "a/b/c", "docs"]), "file%d.bin" % i)
        with open(p, "wb") as f:
            f.write(rnd.randbytes(size))
        os.chmod(p, rnd.choice([0o644, 0o600, 0o755, 0o640]))
        os.utime(p, ns=(1_500_000_000_123_456_789 + i, 1_600_000_000_987_654_321 + i))
    with open(os.path.join(root, "docs", "readme.txt"), "w") as f:
        f.write("hello\n" * 100)
    os.symlink("docs/readme.txt", os.path.join(root, "link"))
    os.symlink("../../docs", os.path.join(root, "a/b/updocs"))
    os.symlink("/does/not/exist", os.path.join(root, "dangling"))
    os.chmod(os.path.join(root, "a/b"), 0o750)
    try:
        os.setxattr(os.path.join(root, "docs", "readme.txt"), "user.origin", b"tools test")
        os.setxattr(os.path.join(root, "a"), "user.dirattr", b"on a dir")
    except OSError:
        pass
    return root


def snapshot(root, *, times=True, owner=True, xattrs=True):
    """{relative path: description} of every entry below ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            desc = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)]
            if owner:
                desc += [st.st_uid, st.st_gid]
            if stat.S_ISLNK(st.st_mode):
                desc.append(os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    desc += [st.st_size, hashlib.sha256(f.read()).hexdigest()]
                if times:
                    desc.append(st.st_mtime_ns)
            if xattrs and not stat.S_ISLNK(st.st_mode):
                names = sorted(n for n in os.listxattr(p) if not n.startswith("user.cos."))
                desc.append({n: os.getxattr(p, n) for n in names})
            out[rel] = desc
    return out


@pytest.fixture
def tree(tmp_path):
    return make_tree(str(tmp_path / "src"))


def test_cp_a_tree(mount, tree):
    need("cp", "diff")
    for bucket in (mount.plain, mount.enc):
        run("cp", "-a", tree, os.path.join(bucket, "copy"))
        run("diff", "-r", "--no-dereference", tree, os.path.join(bucket, "copy"))
        assert snapshot(os.path.join(bucket, "copy")) == snapshot(tree)
    mount.restart()
    for bucket in (mount.plain, mount.enc):
        assert snapshot(os.path.join(bucket, "copy")) == snapshot(tree)


def rsync_items(out):
    """The --itemize-changes lines of an rsync run (one per changed entry)."""
    return [line for line in out.splitlines()
            if len(line) > 12 and line[0] in "<>ch.*" and line[1] in "fdLDS" and line[11] == " "]


@pytest.mark.parametrize("bucket", ["plain", "enc"])
def test_rsync_twice_transfers_nothing(mount, tree, bucket):
    need("rsync")
    dst = os.path.join(getattr(mount, bucket), "mirror")
    run("rsync", "-aHX", tree + "/", dst + "/")
    assert snapshot(dst) == snapshot(tree)
    for _ in range(2):
        out = run("rsync", "-aHX", "--itemize-changes", "--stats", tree + "/", dst + "/")
        assert "Number of regular files transferred: 0" in out, out
        items = rsync_items(out)
        if bucket == "plain":
            assert items == [], out
        else:
            # the destination lists user.cos.server-side-encryption (so copies out of the
            # bucket carry it); rsync -X sees that as an xattr difference but sends no data
            assert all(i.startswith(".f") and i[2:11] == "........x" for i in items), out
        mount.restart()
    if bucket == "enc":
        for d, _, files in os.walk(dst):
            for p in [os.path.join(d, f) for f in files]:
                if not os.path.islink(p):
                    assert os.getxattr(p, "user.cos.server-side-encryption") == b"AES256"
    # a change in the source is the only thing a later run transfers
    with open(os.path.join(tree, "docs", "readme.txt"), "a") as f:
        f.write("changed\n")
    out = run("rsync", "-aHX", "--stats", tree + "/", dst + "/")
    assert "Number of regular files transferred: 1" in out, out
    assert snapshot(dst) == snapshot(tree)


def test_tar_extract_checksums(mount, tree, tmp_path):
    need("tar")
    tarball = str(tmp_path / "tree.tar")
    run("tar", "cf", tarball, "--format=posix", "--xattrs", "-C", tree, ".")
    dst = os.path.join(mount.plain, "untarred")
    os.mkdir(dst)
    run("tar", "xf", tarball, "--xattrs", "--xattrs-include=user.*", "-C", dst)
    assert snapshot(dst) == snapshot(tree)
    # and back out of the mount: an archive made on the mount extracts to the same tree
    tar2 = str(tmp_path / "again.tar")
    run("tar", "cf", tar2, "--format=posix", "-C", dst, ".")
    out = str(tmp_path / "out")
    os.mkdir(out)
    run("tar", "xf", tar2, "-C", out)
    assert snapshot(out, xattrs=False) == snapshot(tree, xattrs=False)


def test_git_on_the_mount(mount, tmp_path):
    need("git")
    env = dict(os.environ, GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="T", GIT_COMMITTER_EMAIL="t@example.invalid",
               HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1")
    repo = os.path.join(mount.enc, "repo")
    run("git", "init", "-q", "-b", "main", repo, env=env)
    rnd = random.Random(5)
    for i in range(3):
        for j in range(15):
            d = os.path.join(repo, "src", "m%d" % (j % 4))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "f%d.txt" % j), "w") as f:
                f.write("commit %d file %d\n" % (i, j) + "x" * rnd.randrange(0, 20000))
        with open(os.path.join(repo, "big.bin"), "wb") as f:
            f.write(rnd.randbytes(200_000))
        run("git", "add", "-A", cwd=repo, env=env)
        run("git", "commit", "-q", "-m", "commit %d" % i, cwd=repo, env=env)
    run("git", "gc", "-q", cwd=repo, env=env)
    run("git", "fsck", "--full", "--strict", cwd=repo, env=env)
    clone = os.path.join(mount.plain, "clone")
    run("git", "clone", "-q", repo, clone, env=env)
    run("git", "fsck", "--full", cwd=clone, env=env)
    assert run("git", "rev-parse", "HEAD", cwd=clone, env=env) == \
        run("git", "rev-parse", "HEAD", cwd=repo, env=env)
    assert run("git", "status", "--porcelain", cwd=clone, env=env) == ""
    mount.restart()
    run("git", "fsck", "--full", "--strict", cwd=repo, env=env)
    assert run("git", "log", "--oneline", cwd=clone, env=env).count("\n") == 3
    assert run("git", "status", "--porcelain", cwd=repo, env=env) == ""


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_database(mount, journal):
    path = os.path.join(mount.enc, "db", "test.sqlite")
    os.mkdir(os.path.dirname(path))
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=%s" % journal)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)")
    db.execute("CREATE INDEX t_k ON t (k)")
    rnd = random.Random(11)
    total = 0
    for batch in range(10):
        with db:
            for i in range(250):
                db.execute("INSERT INTO t (k, v) VALUES (?, ?)",
                           ("key%d-%d" % (batch, i), rnd.randbytes(rnd.randrange(10, 2000))))
                total += 1
        if batch % 5 == 4:
            with db:
                db.execute("DELETE FROM t WHERE id % 7 = ?", (batch % 7,))
    try:
        with db:
            db.execute("INSERT INTO t (k, v) VALUES ('doomed', x'00')")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    count = db.execute("SELECT count(*) FROM t").fetchone()[0]
    digest = db.execute("SELECT sum(length(v)), group_concat(k) FROM t").fetchone()
    db.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == count
    assert db.execute("SELECT count(*) FROM t WHERE k='doomed'").fetchone()[0] == 0
    db.execute("VACUUM")
    db.close()
    mount.restart()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT sum(length(v)), group_concat(k) FROM t").fetchone() == digest
    db.close()


def test_dd_conv_fsync(mount, tmp_path):
    need("dd")
    src = str(tmp_path / "random.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(5 * CHUNK + 333))
    dst = os.path.join(mount.enc, "dd.bin")
    run("dd", "if=" + src, "of=" + dst, "bs=10000", "conv=fsync", "status=none")
    with open(src, "rb") as a, open(dst, "rb") as b:
        assert a.read() == b.read()
    # overwrite a range in place without truncating, then read a range back
    run("dd", "if=/dev/zero", "of=" + dst, "bs=1000", "seek=70", "count=5", "conv=notrunc,fsync",
        "status=none")
    part = os.path.join(str(tmp_path), "part")
    run("dd", "if=" + dst, "of=" + part, "bs=1000", "skip=69", "count=7", "status=none")
    with open(src, "rb") as a, open(part, "rb") as p:
        orig = a.read()
        assert p.read() == orig[69000:70000] + bytes(5000) + orig[75000:76000]
    mount.kill9()
    mount.start()
    with open(dst, "rb") as b:
        assert b.read() == orig[:70000] + bytes(5000) + orig[75000:]


def test_setfattr_getfattr(mount):
    need("setfattr", "getfattr")
    p = os.path.join(mount.plain, "attrs.txt")
    with open(p, "w") as f:
        f.write("x")
    run("setfattr", "-n", "user.mime", "-v", "text/plain", p)
    run("setfattr", "-n", "user.hex", "-v", "0x00ff10", p)
    out = run("getfattr", "-d", "-e", "text", p)
    assert 'user.mime="text/plain"' in out
    assert os.getxattr(p, "user.hex") == b"\x00\xff\x10"
    assert run("getfattr", "--only-values", "-n", "user.mime", p) == "text/plain"
    run("setfattr", "-x", "user.mime", p)
    res = subprocess.run(["getfattr", "-n", "user.mime", p], capture_output=True, text=True)
    assert res.returncode != 0 and "No such attribute" in res.stderr
    res = subprocess.run(["setfattr", "-n", "trusted.t", "-v", "1", p], capture_output=True,
                         text=True)
    assert res.returncode != 0 and "not supported" in res.stderr.lower()
    # the status xattrs are readable by name although getfattr -d does not list them
    assert "user.cos.etag" not in run("getfattr", "-d", "-m", "-", p)
    etag = run("getfattr", "--only-values", "-n", "user.cos.etag", p)
    assert etag == hashlib.md5(b"x").hexdigest()


def test_ln_and_ln_s(mount):
    need("ln")
    p = os.path.join(mount.plain, "target.txt")
    with open(p, "w") as f:
        f.write("target")
    run("ln", p, os.path.join(mount.plain, "hard"))
    run("ln", "-s", "target.txt", os.path.join(mount.plain, "soft"))
    run("ln", "-sf", "hard", os.path.join(mount.plain, "soft"))          # replace a symlink
    assert os.readlink(os.path.join(mount.plain, "soft")) == "hard"
    with open(os.path.join(mount.plain, "soft")) as f:
        assert f.read() == "target"
    assert os.stat(p).st_nlink == 2
    res = subprocess.run(["ln", p, os.path.join(mount.enc, "x")], capture_output=True, text=True)
    assert res.returncode != 0 and "cross-device" in res.stderr.lower()
    mount.restart()
    assert os.stat(os.path.join(mount.plain, "hard")).st_nlink == 2


def test_mv_across_buckets_keeps_content_and_xattrs(mount, tree):
    need("mv", "cp")
    src = os.path.join(mount.plain, "moving")
    run("cp", "-a", tree, src)
    before = snapshot(src)
    run("mv", src, os.path.join(mount.enc, "moved"))
    assert not os.path.exists(src)
    assert snapshot(os.path.join(mount.enc, "moved")) == before
    f = os.path.join(mount.plain, "single")
    with open(f, "wb") as fh:
        fh.write(os.urandom(2 * CHUNK + 5))
    os.setxattr(f, "user.tag", b"keep me")
    data = open(f, "rb").read()
    run("mv", f, os.path.join(mount.enc, "single"))
    g = os.path.join(mount.enc, "single")
    assert open(g, "rb").read() == data and os.getxattr(g, "user.tag") == b"keep me"
    mount.restart()
    assert snapshot(os.path.join(mount.enc, "moved")) == before
    assert open(g, "rb").read() == data


def test_find_du_and_shell_redirection(mount, tree):
    need("find", "sh", "du")
    run("cp", "-a", tree, os.path.join(mount.plain, "t"))
    found = sorted(run("find", ".", cwd=os.path.join(mount.plain, "t")).split())
    expected = sorted(run("find", ".", cwd=tree).split())
    assert found == expected
    run("sh", "-c", "for i in 1 2 3; do echo line$i >> log.txt; done; cat log.txt > copy.txt",
        cwd=mount.enc)
    with open(os.path.join(mount.enc, "copy.txt")) as f:
        assert f.read() == "line1\nline2\nline3\n"
    assert int(run("du", "-sb", os.path.join(mount.plain, "t")).split()[0]) > 0


# -- names that are not UTF-8 -------------------------------------------------------------
def make_latin1_tree(root):
    """A tree whose names are not all UTF-8, as in an archive made on an older system."""
    broot = os.fsencode(root)
    d = os.path.join(broot, b"d\xe9j\xe0")
    os.makedirs(os.path.join(d, b"sub\xff"))
    files = {b"caf\xe9": b"coffee", b"\xff\xfe": b"bom", b"na\xc3\xafve-\xe9": b"mixed",
             b"plain.txt": b"ascii", "\u65e5\u672c".encode(): b"valid utf-8"}
    for i, (name, data) in enumerate(files.items()):
        for folder in (broot, d):
            p = os.path.join(folder, name)
            with open(p, "wb") as f:
                f.write(data * (i + 1))
            os.utime(p, ns=(1_500_000_000_111_111_111 + i, 1_600_000_000_222_222_222 + i))
    with open(os.path.join(d, b"sub\xff", b"\xe9" * 200), "wb") as f:   # a 600-byte key part
        f.write(b"deep")
    os.symlink(b"caf\xe9", os.path.join(broot, b"ln-\xe9"))
    os.symlink(b"../\xff\xfe", os.path.join(d, b"up-\xff"))
    return root


def byte_snapshot(root, ns=True):
    """{relative path (bytes): description}, names exactly as the file system gives them;
    ``ns=False`` compares times in whole seconds (all that tar's default format keeps)."""
    out = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            desc = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)]
            if stat.S_ISLNK(st.st_mode):
                desc.append(os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    desc += [f.read(), st.st_mtime_ns if ns else st.st_mtime_ns // 10 ** 9]
            out[os.path.relpath(p, broot)] = desc
    return out


@pytest.mark.parametrize("bucket", ["plain", "enc"])
def test_tar_and_rsync_keep_names_that_are_not_utf8(mount, tmp_path, bucket):
    need("tar", "rsync")
    src = make_latin1_tree(str(tmp_path / "latin1"))
    want = byte_snapshot(src)
    assert b"d\xe9j\xe0/sub\xff/" + b"\xe9" * 200 in want
    dst = os.path.join(getattr(mount, bucket), "x")
    os.mkdir(dst)
    # tar: into the mount and back out
    tarball = str(tmp_path / "latin1.tar")
    run("tar", "cf", tarball, "-C", src, ".")
    run("tar", "xf", tarball, "-C", dst)
    assert byte_snapshot(dst, ns=False) == byte_snapshot(src, ns=False)
    tar2 = str(tmp_path / "again.tar")
    run("tar", "cf", tar2, "-C", dst, ".")
    out = tmp_path / "untarred"
    out.mkdir()
    run("tar", "xf", tar2, "-C", str(out))
    assert byte_snapshot(str(out), ns=False) == byte_snapshot(src, ns=False)
    # rsync -a: into the mount, again (nothing to do), and back out
    mirror = os.path.join(getattr(mount, bucket), "mirror")
    run("rsync", "-a", src + "/", mirror + "/")
    assert byte_snapshot(mirror) == want
    mount.restart()
    assert byte_snapshot(mirror) == want
    res = run("rsync", "-a", "--itemize-changes", "--stats", src + "/", mirror + "/")
    assert "Number of regular files transferred: 0" in res, res
    back = str(tmp_path / "back")
    run("rsync", "-a", mirror + "/", back + "/")
    assert byte_snapshot(back) == want
    # and the names are the exact bytes, entry by entry
    assert sorted(os.listdir(os.fsencode(mirror))) == sorted(os.listdir(os.fsencode(src)))
    assert sorted(os.listdir(os.path.join(os.fsencode(mirror), b"d\xe9j\xe0"))) == \
        sorted(os.listdir(os.path.join(os.fsencode(src), b"d\xe9j\xe0")))
