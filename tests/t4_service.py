"""Running cosfs as a service, on real mounts: the mount(8)/umount(8) helpers (an fstab
line, ``mount -t fuse.cosfs``), systemd's readiness protocol, SIGHUP reopening the log,
retiring a master key, and ``cosfs status``.

mount(8) looks for its helpers in ``/sbin`` only (not in PATH), so the tests that go
through mount(8) link this checkout's ``mount.fuse.cosfs`` and ``umount.fuse.cosfs``
there for the duration of the test (skipped if other helpers of those names exist).
Daemons started by a helper are not children of the test: each is found by its pid
(the ``user.cos.daemon-pid`` xattr) and torn down by pid, after a lazy unmount if needed.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import (ENC, PLAIN, Mount, cosfs_cmd, fuse_available, get, is_mounted, put,
                      write_config)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) helpers need root"),
]

VENV_BIN = os.path.dirname(sys.executable)
HELPERS = ("mount.fuse.cosfs", "umount.fuse.cosfs")
READY_TIMEOUT = 30


@pytest.fixture
def sbin_helpers():
    """This checkout's mount helpers linked into /sbin for the test, removed afterwards."""
    made = []
    try:
        for name in HELPERS:
            src = os.path.join(VENV_BIN, name)
            if not os.path.exists(src):
                pytest.skip("%s is not installed (pip install -e .)" % src)
            dst = os.path.join("/sbin", name)
            if os.path.lexists(dst):
                if os.path.realpath(dst) != os.path.realpath(src):
                    pytest.skip("%s exists and is not this checkout's helper" % dst)
                continue
            os.symlink(src, dst)
            made.append(dst)
        yield
    finally:
        for dst in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)


def running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def daemon_pid(mnt):
    return int(os.getxattr(mnt, "user.cos.daemon-pid"))


def run(cmd, timeout=READY_TIMEOUT + 30, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def log_errors(path):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [l for l in text.splitlines() if " ERROR " in l or "Traceback" in l]


@contextlib.contextmanager
def background_mount(mnt, log_file):
    """Teardown for a daemon a helper started: unmount and wait, else detach and kill."""
    pids = []
    try:
        yield pids
    finally:
        if is_mounted(mnt):
            with contextlib.suppress(OSError, ValueError):
                pids.append(daemon_pid(mnt))
            subprocess.run(["fusermount3", "-u", mnt], capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while any(running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True, timeout=30)
        for p in pids:
            if running(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
    bad = log_errors(log_file)
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


def status(mnt):
    res = run(cosfs_cmd("status", mnt, "--json"))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# -- mount(8) helpers -----------------------------------------------------------------------
def test_mount_type_with_options(tmp_path, sbin_helpers):
    folder = str(tmp_path / "fs")
    cfg = write_config(folder)
    log_file = os.path.join(folder, "helper.log")
    # under a folder everyone may traverse, so that another user can try the status
    shared = tempfile.mkdtemp(prefix="cosfs-mnt-", dir="/tmp")
    os.chmod(shared, 0o755)
    mnt = os.path.join(shared, "mnt")
    os.mkdir(mnt)
    try:
        with background_mount(mnt, log_file) as pids:
            res = run(["mount", "-t", "fuse.cosfs", cfg, mnt, "-o",
                       "allow_other,_netdev,nofail,noexec,fsync_on_close,log_level=info,"
                       "log_file=" + log_file])
            assert res.returncode == 0, res.stderr
            assert res.stdout == "" and res.stderr == ""
            # the helper returns once the mount is ready, with the daemon in the background
            assert is_mounted(mnt)
            pid = daemon_pid(mnt)
            pids.append(pid)
            with open("/proc/mounts") as f:
                line = next(l.split() for l in f if l.split()[1] == os.path.realpath(mnt))
            assert line[0] == os.path.abspath(cfg) and line[2] == "fuse.cosfs"
            opts = line[3].split(",")
            for flag in ("allow_other", "noexec", "nosuid", "nodev"):
                assert flag in opts, line

            st = status(mnt)
            assert st["options"]["allow_other"] and st["options"]["fsync_on_close"]
            assert st["log"] == log_file and st["pid"] == pid

            data = os.urandom(300_000)
            put(os.path.join(mnt, ENC, "a"), data)
            assert get(os.path.join(mnt, ENC, "a")) == data

            if shutil.which("setpriv") and os.path.exists("/usr/bin/python3"):
                probe = ("import os, sys\n"
                         "def try_(n):\n"
                         "    try:\n"
                         "        os.getxattr(sys.argv[1], n); return 'ok'\n"
                         "    except OSError as e:\n"
                         "        return str(e.errno)\n"
                         "print(try_('user.cos.status'), try_('user.cos.daemon-pid'))\n")
                res = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/usr/bin/python3", "-c", probe, mnt])
                assert res.stdout.split() == [str(13), "ok"], (res.stdout, res.stderr)  # EACCES

            # with a userspace option such as _netdev, umount(8) runs umount.fuse.cosfs,
            # which returns only once the daemon committed everything and exited
            res = run(["umount", mnt])
            assert res.returncode == 0, res.stderr
            assert not is_mounted(mnt)
            assert not running(pid)
        with open(log_file) as f:
            text = f.read()
        assert "cosfs mounted" in text and "cosfs unmounted" in text
        assert os.stat(log_file).st_mode & 0o077 == 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_fstab_line(tmp_path, sbin_helpers):
    folder = str(tmp_path / "fs")
    cfg = write_config(folder)
    mnt = os.path.join(folder, "mnt")
    os.makedirs(mnt)
    log_file = os.path.join(folder, "fstab.log")
    fstab = os.path.join(folder, "fstab")
    with open(fstab, "w") as f:
        f.write("# test\n%s %s fuse.cosfs defaults,_netdev,nofail,log_file=%s 0 0\n"
                % (cfg, mnt, log_file))
    with background_mount(mnt, log_file) as pids:
        res = run(["mount", "--fstab", fstab, mnt])
        assert res.returncode == 0, res.stderr
        assert is_mounted(mnt)
        pids.append(daemon_pid(mnt))
        data = os.urandom(70_000)
        put(os.path.join(mnt, PLAIN, "kept"), data)
        # mount -a recognises the line as mounted (the mount table shows the config as source)
        res = run(["mount", "--fstab", fstab, "-a", "-v"])
        assert res.returncode == 0, res.stderr
        assert "already mounted" in res.stdout + res.stderr
        res = run(["umount", mnt])
        assert res.returncode == 0, res.stderr
        assert not is_mounted(mnt) and not running(pids[-1])

        res = run(["mount", "--fstab", fstab, mnt])
        assert res.returncode == 0, res.stderr
        pids.append(daemon_pid(mnt))
        assert get(os.path.join(mnt, PLAIN, "kept")) == data
        assert run(["umount", mnt]).returncode == 0
        assert not running(pids[-1])


def test_bad_options_refused(tmp_path, sbin_helpers):
    folder = str(tmp_path / "fs")
    cfg = write_config(folder)
    mnt = os.path.join(folder, "mnt")
    os.makedirs(mnt)
    helper = os.path.join(VENV_BIN, "mount.fuse.cosfs")
    try:
        res = run(["mount", "-t", "fuse.cosfs", cfg, mnt, "-o", "_netdev,bogus_opt"])
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "bogus_opt" in lines[0], res.stderr
        assert not is_mounted(mnt)

        for opts, word in (("sync", "fsync_on_close"), ("cache_size=1.5MiB", "cache_size"),
                           ("log_level=loud", "log_level"), ("allow_other=maybe", "allow_other")):
            res = run([helper, cfg, mnt, "-o", opts])
            assert res.returncode == 1, (opts, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and word in lines[0], res.stderr
        # a value the configuration rules refuse: a mount failure (32), one line
        res = run([helper, cfg, mnt, "-o", "cache_size=64KiB"])
        assert res.returncode == 32 and "cache_size" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        # -s (sloppy) ignores unknown options; -f checks without mounting
        res = run([helper, cfg, mnt, "-s", "-f", "-o", "rw,bogus_opt,writeback_cache"])
        assert res.returncode == 0, res.stderr
        assert "bogus_opt" in res.stderr
        # the form mount.fuse3 uses when there is no mount.fuse.cosfs: "cosfs SOURCE DIR -o"
        res = run(cosfs_cmd(cfg, mnt, "-o", "dev,suid,bogus_opt"))
        assert res.returncode == 1 and "bogus_opt" in res.stderr
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True, timeout=30)


# -- systemd, logs -------------------------------------------------------------------------
def test_notify_ready_and_stopping(tmp_path):
    """Type=notify: READY=1 once the mount is live, STOPPING=1 on SIGTERM, then a clean exit."""
    name = "cosfs-test-notify-%d-%s" % (os.getpid(), os.urandom(4).hex())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(READY_TIMEOUT)
    m = Mount(write_config(str(tmp_path / "fs")))
    try:
        # standard error is "the journal" (JOURNAL_STREAM names it): lines carry a syslog
        # priority and no timestamp of their own
        os.makedirs(m.folder, exist_ok=True)
        open(m.log, "ab").close()
        st = os.stat(m.log)
        env = dict(os.environ, NOTIFY_SOCKET="@" + name,
                   JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        m.start(env=env)
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg.split("\n"), msg
        assert is_mounted(m.mnt)
        put(os.path.join(m.enc, "x"), b"data" * 1000)
        m.proc.send_signal(signal.SIGTERM)
        msg = sock.recv(4096).decode()
        assert "STOPPING=1" in msg.split("\n"), msg
        assert m.proc.wait(timeout=60) == 0
        assert not is_mounted(m.mnt)
        lines = m.log_text().splitlines()
        assert "<4>WARNING cosfs.mount: cosfs mounted %s at %s (pid %d)" % (
            m.store, m.mnt, m.proc.pid) in lines
        assert not [l for l in lines if l.startswith("<3>") or "Traceback" in l]
        m.start()
        assert get(os.path.join(m.enc, "x")) == b"data" * 1000
    finally:
        m.stop()
        sock.close()
    assert not m.unexpected_log_lines()


def test_sighup_reopens_log(tmp_path):
    folder = str(tmp_path / "fs")
    m = Mount(write_config(folder, extra="log_file: ./rotating.log\n"))
    log_file = os.path.join(folder, "rotating.log")
    try:
        m.start()
        put(os.path.join(m.plain, "a"), b"x")
        assert "cosfs mounted" in open(log_file).read()
        os.rename(log_file, log_file + ".1")
        m.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not os.path.exists(log_file) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(log_file), "no new log file after SIGHUP"
        assert os.stat(log_file).st_mode & 0o777 == 0o600
        os.mkdir(os.path.join(m.mnt, "after-1250000000"))
        assert is_mounted(m.mnt) and m.proc.poll() is None
        m.stop()
        new = open(log_file).read()
        old = open(log_file + ".1").read()
        assert "reopened " + log_file in new
        assert "created bucket after-1250000000" in new and "cosfs unmounted" in new
        assert "created bucket after" not in old and "cosfs unmounted" not in old
        assert not log_errors(log_file) and not log_errors(log_file + ".1")
    finally:
        m.stop()


# -- keys retire -------------------------------------------------------------------------------
def test_retire_after_rewrap(tmp_path):
    m = Mount(write_config(str(tmp_path / "fs"))).start()
    try:
        files = {}
        for i, size in enumerate((1, 70_000, 1 << 20)):
            files[os.path.join(m.enc, "f%d" % i)] = os.urandom(size)
        for path, data in files.items():
            put(path, data)
        sm4 = os.path.join(m.plain, "sm4")
        put(sm4, b"sm4" * 100)
        os.setxattr(sm4, "user.cos.server-side-encryption", b"SM4")
        files[sm4] = b"sm4" * 100
        busy = m.cli("keys", "retire", "v1", "--config", m.config, check=False)
        assert busy.returncode == 1 and "in use" in busy.stderr
        m.stop()

        m.cli("keys", "rotate", "--config", m.config)
        res = m.cli("keys", "retire", "v2", "--config", m.config, check=False)
        assert res.returncode == 1 and "current" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        res = m.cli("keys", "retire", "v1", "--config", m.config, check=False)
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
        assert "4 object(s)" in res.stderr and "cosfs keys rewrap" in res.stderr
        assert os.path.exists(os.path.join(m.keys, "master-v1.key"))
        out = m.cli("keys", "list", "--config", m.config).stdout
        assert "v1 in use by 4 object(s)" in out and "v2 (current) not in use" in out

        m.cli("keys", "rewrap", "--config", m.config)
        out = m.cli("keys", "retire", "v1", "--config", m.config).stdout
        assert "retired master key v1" in out
        assert sorted(os.listdir(m.keys)) == ["master-v2.key"]
        out = m.cli("keys", "list", "--config", m.config).stdout
        assert re.search(r"^v1 retired \d{4}-", out, re.M), out
        assert "v2 (current) in use by 4 object(s)" in out
        assert "already retired" in m.cli("keys", "retire", "v1", "--config", m.config).stdout
        assert m.cli("fsck", "--config", m.config, "--verify").returncode == 0

        m.start()
        for path, data in files.items():
            assert get(path) == data, path
        assert status(m.mnt)["key_store"]["retired"] == ["v1"]
    finally:
        m.stop()
    assert not m.unexpected_log_lines()


# -- status ----------------------------------------------------------------------------------
HOLDER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, os.urandom(100000))  # below a chunk: stays in the daemon's buffers
print("written", flush=True)
sys.stdin.readline()
os.close(fd)
"""


def test_status_reports_activity(mount):
    # The file is held open by a process of its own: every process the test starts gets a
    # copy of the test's descriptors, and closing a copy (at exec) flushes the file.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, os.path.join(mount.enc, "held")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "written"
        st = status(mount.mnt)
        assert st["open_files"] >= 1
        assert st["dirty_bytes"] >= 100_000 and st["uncommitted"]["objects"] >= 1
        assert st["pid"] == mount.proc.pid
        assert st["store"] == mount.store and st["mountpoint"] == mount.mnt
        assert st["key_store"]["current"] == "v1" and st["key_store"]["path"] == mount.keys
        assert {(b["name"], b["encryption"]) for b in st["buckets"]} == {(PLAIN, None),
                                                                         (ENC, "AES256")}
        assert st["cache"]["size_bytes"] == 64 << 20
        assert st["errors"] == {"count": 0, "last": None}
        text = mount.cli("status", mount.mnt).stdout
        assert re.search(r"^open files\s+[1-9]", text, re.M), text
        assert re.search(r"^uncommitted\s+9\d\.\d KiB in 1 object", text, re.M), text
        assert "%s (ap-guangzhou, AES256)" % ENC in text and mount.store in text
        assert re.search(r"^last error\s+none$", text, re.M), text
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    time.sleep(0.2)  # the value is reused for 0.1 s
    st = status(mount.mnt)
    assert st["open_files"] == 0 and st["dirty_bytes"] == 0
    if shutil.which("getfattr"):
        res = run(["getfattr", "--only-values", "--absolute-names", "-n", "user.cos.status",
                   mount.mnt])
        assert res.returncode == 0 and json.loads(res.stdout)["pid"] == mount.proc.pid
    res = mount.cli("status", str(mount.folder), check=False)
    assert res.returncode == 1 and "not a mounted cosfs" in res.stderr
