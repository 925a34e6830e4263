"""Permissions on a real mount shared with other users (``allow_other: true``),
and the modes of the files cosfs keeps its secrets and metadata in.

With ``allow_other`` the daemon mounts with ``default_permissions``, so the
kernel checks every access against the owner and mode that cosfs reports.
The other user here is ``nobody`` (uid/gid 65534), reached with ``setpriv``;
each check runs a small Python program as that user and reports the errno
of every step.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from conftest import ENC, PLAIN, Mount, fuse_available, write_config

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                       reason="needs root and setpriv to act as another user"),
]

NOBODY = 65534

# Runs as the other user: executes ("op", args...) steps, answers one errno (or a value) each.
RUNNER = r"""
import json, os, sys
def run(step):
    op, args = step[0], step[1:]
    try:
        if op == "read":
            with open(args[0], "rb") as f:
                return {"ok": f.read().decode("latin-1")}
        if op == "write":
            with open(args[0], "r+b") as f:
                f.write(args[1].encode())
            return {"ok": None}
        if op == "overwrite":  # open(O_TRUNC) and write
            with open(args[0], "wb") as f:
                f.write(args[1].encode())
            return {"ok": None}
        if op == "fallocate":
            with open(args[0], "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, args[1])
            return {"ok": None}
        if op == "create":
            with open(args[0], "xb") as f:
                f.write(args[1].encode())
            st = os.stat(args[0])
            return {"ok": [st.st_uid, st.st_gid, st.st_mode & 0o7777]}
        if op == "stat":
            st = os.stat(args[0])
            return {"ok": [st.st_uid, st.st_gid, st.st_mode & 0o7777]}
        if op == "listdir":
            return {"ok": sorted(os.listdir(args[0]))}
        fn = {"unlink": os.unlink, "rename": os.rename, "mkdir": os.mkdir, "rmdir": os.rmdir,
              "chmod": lambda p, m: os.chmod(p, int(m, 8)), "chown": os.chown,
              "setxattr": lambda p, n, v: os.setxattr(p, n, v.encode()),
              "getxattr": lambda p, n: os.getxattr(p, n).decode(),
              "truncate": os.truncate, "utime": lambda p: os.utime(p, (1, 1))}[op]
        return {"ok": fn(*args)}
    except OSError as exc:
        return {"errno": exc.errno}
print(json.dumps([run(s) for s in json.loads(sys.stdin.read())]))
"""


def as_nobody(*steps, groups=()):
    """Run ``steps`` as uid/gid 65534 (with supplementary ``groups``); returns one result
    per step: errno name or value."""
    grouping = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    res = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                          *grouping, sys.executable, "-c", RUNNER],
                         input=json.dumps(steps), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = []
    for r in json.loads(res.stdout):
        out.append(os.strerror(r["errno"]) if "errno" in r else r["ok"])
    return out


EACCES = os.strerror(13)
EPERM = os.strerror(1)


@pytest.fixture
def shared(request):
    """A mount with allow_other in a folder other users can traverse (not under the 0700
    pytest temp dir)."""
    folder = tempfile.mkdtemp(prefix="cosfs-perm-")
    os.chmod(folder, 0o755)
    loop = getattr(request, "param", "native")  # the FUSE request loop (fuse_loop)
    m = Mount(write_config(folder, extra="allow_other: true\nfuse_loop: %s\n" % loop))
    m.start()
    try:
        yield m
        m.stop()
        bad = m.unexpected_log_lines()
        assert not bad, "\n".join(bad)
    finally:
        m.kill9()
        shutil.rmtree(folder, ignore_errors=True)


def make(path, data, mode):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def test_other_user_is_checked(shared):
    m = shared
    b = m.plain
    p = lambda *parts: os.path.join(b, *parts)  # noqa: E731
    make(p("secret"), b"root only", 0o600)
    make(p("public"), b"for all", 0o644)
    os.mkdir(p("closed"), 0o755)
    os.mkdir(p("open"))
    os.chmod(p("open"), 0o777)
    os.mkdir(p("sticky"))
    os.chmod(p("sticky"), 0o1777)
    make(p("sticky", "rootfile"), b"mine", 0o666)
    make(p("open", "rootfile"), b"mine", 0o644)
    assert stat.S_IMODE(os.stat(p("sticky")).st_mode) == 0o1777

    r = as_nobody(
        ["read", p("secret")],                       # 0
        ["write", p("public"), "x"],                 # 1
        ["read", p("public")],                       # 2
        ["create", p("closed", "new"), "x"],         # 3
        ["create", p("new-in-bucket"), "x"],         # 4 (bucket dir is 0755 root)
        ["create", p("open", "mine"), "hello"],      # 5
        ["unlink", p("sticky", "rootfile")],         # 6
        ["rename", p("sticky", "rootfile"), p("sticky", "moved")],  # 7
        ["create", p("sticky", "own"), "own"],       # 8
        ["unlink", p("sticky", "own")],              # 9
        ["unlink", p("open", "rootfile")],           # 10 (no sticky bit: allowed)
        ["chmod", p("public"), "666"],               # 11
        ["chown", p("public"), NOBODY, NOBODY],      # 12
        ["truncate", p("public"), 0],                # 13
        ["setxattr", p("public"), "user.x", "v"],    # 14
        ["mkdir", os.path.join(m.mnt, "nobody-bucket-1250000000")],  # 15 (mount root 0755)
        ["listdir", m.mnt],                          # 16
        ["utime", p("public")],                      # 17
        ["stat", p("secret")],                       # 18 (stat needs no read permission)
        ["chmod", p("open", "mine"), "600"],         # 19 (own file)
        ["read", p("open", "mine")],                 # 20
    )
    assert r[0] == EACCES
    assert r[1] == EACCES
    assert r[2] == "for all"
    assert r[3] == EACCES
    assert r[4] == EACCES
    assert r[5] == [NOBODY, NOBODY, 0o644 & ~0o022], r[5]
    assert r[6] == EPERM and r[7] == EPERM, (r[6], r[7])
    assert isinstance(r[8], list) and r[9] is None
    assert r[10] is None
    assert r[11] == EPERM and r[12] == EPERM
    assert r[13] == EACCES
    assert r[14] in (EACCES, EPERM)
    assert r[15] == EACCES
    assert r[16] == sorted([PLAIN, ENC])
    assert r[17] in (EACCES, EPERM)
    assert r[18] == [0, 0, 0o600]
    assert r[19] is None and r[20] == "hello"

    # nothing that was refused happened
    assert open(p("secret"), "rb").read() == b"root only"
    assert open(p("public"), "rb").read() == b"for all"
    assert stat.S_IMODE(os.stat(p("public")).st_mode) == 0o644
    assert os.stat(p("public")).st_uid == 0
    assert sorted(os.listdir(p("sticky"))) == ["rootfile"]
    assert os.listdir(p("closed")) == []
    assert not os.path.exists(p("open", "rootfile"))
    # ownership survives a remount
    m.restart()
    st = os.stat(p("open", "mine"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o600)
    assert stat.S_IMODE(os.stat(p("sticky")).st_mode) == 0o1777
    assert as_nobody(["read", p("open", "mine")]) == ["hello"]


def test_without_allow_other_others_are_locked_out(tmp_path):
    folder = tempfile.mkdtemp(prefix="cosfs-noshare-")
    os.chmod(folder, 0o755)
    m = Mount(write_config(folder))
    try:
        m.start()
        make(os.path.join(m.plain, "public"), b"x", 0o644)
        r = as_nobody(["listdir", m.mnt], ["read", os.path.join(m.plain, "public")])
        assert r == [EACCES, EACCES], r
    finally:
        m.stop()
        shutil.rmtree(folder, ignore_errors=True)


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_secret_and_metadata_file_modes(tmp_path):
    old = os.umask(0)  # the strictest test: cosfs must not rely on the caller's umask
    try:
        m = Mount(write_config(str(tmp_path / "fs")))
        m.start()
        try:
            with open(os.path.join(m.enc, "obj"), "wb") as f:
                f.write(os.urandom(5000))
        finally:
            m.stop()
        with tempfile.TemporaryDirectory() as d:
            cfg = write_config(d)
            res = Mount(cfg).cli("keys", "list", "--config", cfg, check=False)
            assert res.returncode != 0  # no store there yet: nothing is created by a listing
            assert not os.path.exists(os.path.join(d, "keys"))
        res = m.cli("keys", "rotate", "--config", m.config)
        # the daemon form writes its log into the store
        m.cli("mount", m.config)
        try:
            with open(os.path.join(m.plain, "obj2"), "wb") as f:
                f.write(b"x")
        finally:
            m.cli("umount", m.mnt)
    finally:
        os.umask(old)
    assert os.path.exists(os.path.join(m.store, "cosfs.log"))
    assert mode_of(m.keys) == 0o700
    key_files = os.listdir(m.keys)
    assert len(key_files) == 2, key_files
    for name in key_files:
        assert mode_of(os.path.join(m.keys, name)) == 0o600, name
    assert mode_of(m.store) == 0o700
    assert mode_of(os.path.join(m.store, "catalog.db")) == 0o600
    for root, dirs, files in os.walk(m.store):
        for name in dirs:
            assert mode_of(os.path.join(root, name)) == 0o700, os.path.join(root, name)
        for name in files:
            assert mode_of(os.path.join(root, name)) & 0o077 == 0, os.path.join(root, name)


# set-ID bits are cleared by the kernel on pyfuse3's loop, by cosfs on its own
@pytest.mark.parametrize("shared", ["native", "pyfuse3"], indirect=True)
def test_setid_bits(shared):
    """A setgid directory gives its group (and, to subdirectories, its setgid bit) to new
    entries; another user's write clears a file's setuid/setgid bits. As on local disks."""
    m = shared
    d = os.path.join(m.plain, "team")
    os.mkdir(d)
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2777)
    prog = os.path.join(m.plain, "prog")
    make(prog, b"#!/bin/sh\n", 0o6777)
    r = as_nobody(["create", os.path.join(d, "f"), "x"], ["mkdir", os.path.join(d, "sub")],
                  ["stat", os.path.join(d, "sub")], ["write", prog, "#"])
    assert r[0] == [NOBODY, 4242, 0o644], r[0]
    assert r[2] == [NOBODY, 4242, 0o2755], r[2]
    assert r[3] is None
    assert stat.S_IMODE(os.stat(prog).st_mode) == 0o777
    m.restart()
    assert os.stat(os.path.join(d, "f")).st_gid == 4242
    assert stat.S_IMODE(os.stat(os.path.join(d, "sub")).st_mode) == 0o2755


@pytest.mark.parametrize("shared", ["native", "pyfuse3"], indirect=True)
def test_setid_bits_after_truncation_and_change_of_owner(shared):
    """Another user's truncate(2), open(O_TRUNC) and fallocate(2) clear a file's set-ID
    bits; a change of owner clears them even when root makes it (even chown(-1, -1), as on
    ext4); root's own writes keep them. The set-group-ID bit of a file its group may not
    execute is no privilege and stays."""
    m = shared
    p = lambda name: os.path.join(m.plain, name)  # noqa: E731
    for name in ("truncated", "overwritten", "rootwrites", "fallocated"):
        make(p(name), b"#!/bin/sh\n", 0o6777)
    make(p("chowned"), b"#!/bin/sh\n", 0o6755)
    make(p("nogroupexec"), b"data", 0o2666)
    make(p("chownsame"), b"#!/bin/sh\n", 0o4755)
    r = as_nobody(["truncate", p("truncated"), 2], ["overwrite", p("overwritten"), "#"],
                  ["fallocate", p("fallocated"), 8192])
    assert r == [None, None, None]
    with open(p("rootwrites"), "r+b") as f:
        f.write(b"#")
    os.chown(p("chowned"), NOBODY, NOBODY)
    os.chown(p("nogroupexec"), NOBODY, NOBODY)
    os.chown(p("chownsame"), -1, -1)  # names no owner: Linux clears the bits all the same
    want = {"truncated": 0o777, "overwritten": 0o777, "fallocated": 0o777, "rootwrites": 0o6777,
            "chowned": 0o755, "nogroupexec": 0o2666, "chownsame": 0o755}
    assert {n: stat.S_IMODE(os.stat(p(n)).st_mode) for n in want} == want
    assert os.path.getsize(p("truncated")) == 2
    m.restart()
    assert {n: stat.S_IMODE(os.stat(p(n)).st_mode) for n in want} == want


def test_setgid_bit_without_group_execute_and_writers_outside_the_group(shared):
    """A file's set-group-ID bit that its group may not execute is cleared by a write,
    truncate(2), open(O_TRUNC) or fallocate(2) of a user outside the file's group, and
    kept by a member of it (by their own group or a supplementary one), as local file
    systems do from Linux 6.2 on. (On pyfuse3's loop the kernel's FUSE code decides, and
    it keeps the bit.)"""
    m = shared
    p = lambda name: os.path.join(m.plain, name)  # noqa: E731
    for name in ("written", "truncated", "overwritten", "fallocated", "member", "own"):
        make(p(name), b"data", 0o2666)
    os.chown(p("member"), 0, 4242)
    os.chown(p("own"), 0, NOBODY)
    r = as_nobody(["write", p("written"), "x"], ["truncate", p("truncated"), 2],
                  ["overwrite", p("overwritten"), "x"], ["fallocate", p("fallocated"), 8192])
    assert r == [None] * 4
    assert as_nobody(["write", p("member"), "x"], groups=[4242]) == [None]
    assert as_nobody(["write", p("own"), "x"]) == [None]
    want = {"written": 0o666, "truncated": 0o666, "overwritten": 0o666, "fallocated": 0o666,
            "member": 0o2666, "own": 0o2666}
    assert {n: stat.S_IMODE(os.stat(p(n)).st_mode) for n in want} == want
    m.restart()
    assert {n: stat.S_IMODE(os.stat(p(n)).st_mode) for n in want} == want


def mount_flags(mnt):
    return [line.split()[3].split(",") for line in open("/proc/mounts")
            if line.split()[1] == mnt][0]


# Runs as root in a folder made by root_probe_tree: what root may do there.
ROOT_PROBE = r"""
import json, os, subprocess, sys
base = sys.argv[1]
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = os.strerror(exc.errno)
modes = {"F": os.F_OK, "R": os.R_OK, "W": os.W_OK, "X": os.X_OK,
         "RWX": os.R_OK | os.W_OK | os.X_OK}
for rel in ("x", "nx", "none", "ro", "d000", "d555", "d555/f", "sticky/f"):
    p = os.path.join(base, rel)
    out["access " + rel] = [k for k, m in modes.items() if os.access(p, m)]
attempt("run x", lambda: subprocess.run([os.path.join(base, "x")], check=True))
attempt("run nx", lambda: subprocess.run([os.path.join(base, "nx")], check=True))
attempt("read none", lambda: open(os.path.join(base, "none"), "rb").read())
attempt("write ro", lambda: open(os.path.join(base, "ro"), "r+b").write(b"#"))
attempt("chdir d000", lambda: os.chdir(os.path.join(base, "d000")))
os.chdir("/")
attempt("create in d000", lambda: open(os.path.join(base, "d000", "new"), "xb").close())
attempt("list d000", lambda: os.listdir(os.path.join(base, "d000")))
attempt("unlink in d555", lambda: os.unlink(os.path.join(base, "d555", "f")))
attempt("unlink another's in sticky", lambda: os.unlink(os.path.join(base, "sticky", "f")))
attempt("chmod another's", lambda: os.chmod(os.path.join(base, "theirs"), 0o600))
attempt("utime another's", lambda: os.utime(os.path.join(base, "theirs"), (1, 1)))
print(json.dumps(out, sort_keys=True))
"""


def root_probe_tree(base):
    make(os.path.join(base, "x"), b"#!/bin/sh\nexit 0\n", 0o700)
    make(os.path.join(base, "nx"), b"#!/bin/sh\nexit 0\n", 0o666)
    make(os.path.join(base, "none"), b"secret", 0o000)
    make(os.path.join(base, "ro"), b"read only", 0o444)
    make(os.path.join(base, "theirs"), b"not root's", 0o644)
    os.chown(os.path.join(base, "theirs"), NOBODY, NOBODY)
    os.mkdir(os.path.join(base, "d000"), 0o000)
    os.mkdir(os.path.join(base, "d555"))
    make(os.path.join(base, "d555", "f"), b"f", 0o644)
    os.chmod(os.path.join(base, "d555"), 0o555)
    os.mkdir(os.path.join(base, "sticky"))
    os.chmod(os.path.join(base, "sticky"), 0o1777)
    make(os.path.join(base, "sticky", "f"), b"f", 0o644)
    os.chown(os.path.join(base, "sticky", "f"), NOBODY, NOBODY)


def root_probe(base):
    res = subprocess.run([sys.executable, "-c", ROOT_PROBE, base], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# Runs as root with file-system uid 65534 (the kernel's NFS server and ksmbd act for a
# user this way): the errno of reading a 0644 and a 0600 file of root's, or "ok".
AS_FSUID = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.setfsuid(65534)
assert libc.setfsuid(-1) == 65534
out = []
for name in ("public", "secret"):
    try:
        open(os.path.join(sys.argv[1], name), "rb").read()
        out.append("ok")
    except OSError as exc:
        out.append(os.strerror(exc.errno))
print(json.dumps(out))
"""


def fsuid_probe(base):
    make(os.path.join(base, "public"), b"for all", 0o644)
    make(os.path.join(base, "secret"), b"root only", 0o600)
    res = subprocess.run([sys.executable, "-c", AS_FSUID, base], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_root_only_mount_leaves_checks_to_root_rules():
    """Mounted by root without allow_other, the kernel does not check mode bits itself
    (no default_permissions: one GETATTR less per name created or removed); root's
    access(2), exec, chdir, reads and writes come out as on a local disk, and a request
    for another file-system uid is refused rather than left unchecked.
    ``default_permissions: true`` brings the kernel's checks back."""
    # a folder others may search (the pytest temp dir is 0700), for the fsuid probes
    folder = tempfile.mkdtemp(prefix="cosfs-rootonly-")
    os.chmod(folder, 0o755)
    try:
        root_only_mount(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def root_only_mount(folder):
    def reference(name):
        ref = os.path.join(folder, name)
        os.mkdir(ref, 0o755)
        root_probe_tree(ref)
        return root_probe(ref)
    expected = reference("local")
    if expected["run x"] != "ok":
        pytest.skip("cannot run programs from %s (noexec?)" % folder)
    assert expected["run nx"] == EACCES and expected["access nx"] == ["F", "R", "W"]
    assert expected["access d000"] == ["F", "R", "W", "X", "RWX"]
    os.mkdir(os.path.join(folder, "local-fsuid"), 0o755)
    # the kernel's checks, on a local disk
    assert fsuid_probe(os.path.join(folder, "local-fsuid")) == ["ok", EACCES]

    m = Mount(write_config(folder))
    m.start()
    try:
        assert "default_permissions" not in mount_flags(m.mnt)
        root_probe_tree(m.plain)
        assert root_probe(m.plain) == expected
        status = json.loads(os.getxattr(m.mnt, "user.cos.status"))
        assert status["options"]["default_permissions"] is False
        os.mkdir(os.path.join(m.plain, "fsuid"))
        assert fsuid_probe(os.path.join(m.plain, "fsuid")) == [EACCES, EACCES]
        m.stop()
        log = m.log_text()
        assert "request from file-system uid 65534 refused" in log
        assert "default_permissions: true" in log
        bad = m.unexpected_log_lines()
        assert not bad, "\n".join(bad)
    finally:
        m.kill9()
    with open(m.config, "a") as f:
        f.write("default_permissions: true\n")
    m.start()
    try:
        assert "default_permissions" in mount_flags(m.mnt)
        os.mkdir(os.path.join(m.plain, "again"))
        root_probe_tree(os.path.join(m.plain, "again"))
        assert root_probe(os.path.join(m.plain, "again")) == reference("local2")
        os.mkdir(os.path.join(m.plain, "fsuid2"))
        assert fsuid_probe(os.path.join(m.plain, "fsuid2")) == ["ok", EACCES]
        status = json.loads(os.getxattr(m.mnt, "user.cos.status"))
        assert status["options"]["default_permissions"] is True
        m.stop()
    finally:
        m.kill9()


def test_shared_mount_has_kernel_checks(shared):
    assert "default_permissions" in mount_flags(shared.mnt)
