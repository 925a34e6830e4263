"""Tier 4: origin pull through a real mount and the XML API, against a real HTTP origin.

One daemon for the module (mount and API), and one origin: the standard library's
threading HTTP server on 127.0.0.1, serving files of many sizes in pieces, and
misbehaving on request by the name's prefix: ``slow-`` (answers after 3 s),
``drop-`` (closes the connection halfway through the body), ``e500-`` (500),
``redirect-`` (302 to the name without the prefix), ``conc-`` (0.5 s delay).
"""

import collections
import errno
import hashlib
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import APPID, ENC, PLAIN, Mount, cosfs_cmd, errno_of, fuse_available, get, write_config

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

boto3 = pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402
from t4_api import Api, add_credential, free_port, wait_port  # noqa: E402

MiB = 1024 * 1024
ORIGIN_SECTION = """\
api:
  enabled: true
  listen: 127.0.0.1:{port}
origin:
  connect_timeout: 1
  read_timeout: 1
  timeout: 6
  retries: 1
  miss_ttl: 1
"""
SIZES = [0, 1, 4096, 16383, 16385, 200 * 1024, MiB, MiB + 1, 5 * MiB + 12345]


def _data(name, size):
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Origin:
    """An HTTP origin in a thread; ``hits`` counts GETs by path."""

    def __init__(self):
        self.files = {}
        self.hits = collections.Counter()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path
                origin.hits[path] += 1
                name = path.lstrip("/")
                if name.startswith("api-e500-"):
                    name = name[len("api-"):]
                if name.startswith("e500-"):
                    self.send_error(500, "broken on purpose")
                    return
                if name.startswith("redirect-"):
                    self.send_response(302)
                    self.send_header("Location", "/" + name[len("redirect-"):])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name.startswith("slow-"):
                    time.sleep(3)
                if name.startswith("conc-"):
                    time.sleep(0.5)
                if name.endswith("/"):
                    body = b"<html>a listing</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if any(f.startswith(name + "/") for f in list(origin.files)):
                    # a folder: http.server, nginx and Apache redirect to the path with "/"
                    self.send_response(301)
                    self.send_header("Location", "/" + name + "/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name not in origin.files:
                    self.send_error(404)
                    return
                data, headers = origin.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if name.startswith("drop-"):
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                for pos in range(0, len(data), 65536):
                    self.wfile.write(data[pos:pos + 65536])

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that gave up on a slow answer

        self.server = Server(("127.0.0.1", 0), Handler)
        self.host = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name, data, headers=None):
        self.files[name] = (data, headers or {"Content-Type": "application/octet-stream"})
        return data

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def origin():
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, origin):
    folder = str(tmp_path_factory.mktemp("origin") / "fs")
    port = free_port()
    config = write_config(folder, extra=ORIGIN_SECTION.format(port=port))
    os.makedirs(os.path.join(folder, "data"), mode=0o700, exist_ok=True)
    full = add_credential(config)
    m = Mount(config).start()
    try:
        wait_port(port, m.proc)
        res = m.cli("bucket-origin", "--method", "put", m.plain, "--host", origin.host)
        assert res.returncode == 0
        doc = ("<OriginConfiguration><OriginRule><RulePriority>1</RulePriority>"
               "<OriginType>Mirror</OriginType><OriginInfo><HostInfo><HostName>%s</HostName>"
               "</HostInfo></OriginInfo></OriginRule></OriginConfiguration>" % origin.host)
        os.setxattr(m.enc, "user.cos.bucket-origin", doc.encode())
        yield Api(m, port, full, None, None)
    finally:
        m.stop()
    m.expect_log(r"FailedDependency")
    bad = m.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


def test_pull_many_sizes_with_bucket_encryption(daemon, origin):
    m = daemon.mount
    for size in SIZES:
        name = "size-%d" % size
        data = origin.add(name, _data(name, size),
                          {"Content-Type": "text/x-test", "Cache-Control": "max-age=60",
                           "x-cos-meta-origin": "yes"})
        for bucket in (m.plain, m.enc):
            path = os.path.join(bucket, name)
            assert os.stat(path).st_size == size  # a stat pulls it
            assert get(path) == data
            assert os.getxattr(path, "user.mime_type") == b"text/x-test"
            assert os.getxattr(path, "user.http.cache-control") == b"max-age=60"
            assert os.getxattr(path, "user.origin") == b"yes"
        assert os.getxattr(os.path.join(m.enc, name), "user.cos.server-side-encryption") \
            == b"AES256"
        assert errno_of(os.getxattr, os.path.join(m.plain, name),
                        "user.cos.server-side-encryption") == errno.ENODATA
        assert origin.hits["/" + name] == 2  # once per bucket, then it is stored
    # an object pulled into the encrypted bucket reaches the store sealed only
    secret = origin.add("enc-only", _data("enc-only", 2 * MiB))
    assert get(os.path.join(m.enc, "enc-only")) == secret
    needle = secret[MiB + 4096:MiB + 4160]
    for root, _dirs, files in os.walk(m.store):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert needle not in fh.read(), f


def test_configuration_through_xattr_and_cli(daemon, origin):
    m = daemon.mount
    doc = os.getxattr(m.plain, "user.cos.bucket-origin")
    assert b"<HostName>%s</HostName>" % origin.host.encode() in doc
    res = m.cli("bucket-origin", "--method", "get", m.enc)
    assert "<OriginType>Mirror</OriginType>" in res.stdout
    assert errno_of(os.setxattr, m.plain, "user.cos.bucket-origin", b"<OriginConfiguration/>") \
        == errno.EINVAL
    assert os.getxattr(m.plain, "user.cos.bucket-origin") == doc  # unchanged
    res = m.cli("bucket-origin", "--method", "put", m.plain, "--host", "http://x", check=False)
    assert res.returncode == 1 and "MalformedXML" in res.stderr
    # not listed: copying a bucket's tree does not copy its settings
    assert "user.cos.bucket-origin" not in os.listxattr(m.plain)
    os.mkdir(os.path.join(m.plain, "tmpbucket-x"))  # a directory is no bucket
    assert errno_of(os.setxattr, os.path.join(m.plain, "tmpbucket-x"), "user.cos.bucket-origin",
                    doc) == errno.EINVAL


def test_prefix_rule_and_listing(daemon, origin):
    m = daemon.mount
    bucket = os.path.join(m.mnt, "pfx-" + APPID)
    os.mkdir(bucket)
    m.cli("bucket-origin", "--method", "put", bucket, "--host", origin.host, "--prefix", "in-")
    origin.add("in-a", b"inside")
    origin.add("out-a", b"outside")
    assert get(os.path.join(bucket, "in-a")) == b"inside"
    assert errno_of(os.stat, os.path.join(bucket, "out-a")) == errno.ENOENT
    assert origin.hits["/out-a"] == 0
    assert sorted(os.listdir(bucket)) == ["in-a"]  # listings show only stored objects
    # a folder on the origin (redirected to "in-d/") becomes a directory on the way
    origin.add("in-d/e/x", b"deep")
    assert get(os.path.join(bucket, "in-d", "e", "x")) == b"deep"
    assert os.path.isdir(os.path.join(bucket, "in-d", "e"))
    m.cli("bucket-origin", "--method", "delete", bucket)
    res = m.cli("bucket-origin", "--method", "get", bucket, check=False)
    assert res.returncode == 1 and "OriginConfigurationNotFoundError" in res.stderr
    origin.add("in-b", b"later")
    assert errno_of(os.stat, os.path.join(bucket, "in-b")) == errno.ENOENT
    assert origin.hits["/in-b"] == 0


def test_concurrent_lookups_fetch_once(daemon, origin):
    m = daemon.mount
    data = origin.add("conc-1", _data("conc-1", 3 * MiB))
    results = []

    def worker():
        try:
            results.append(get(os.path.join(m.plain, "conc-1")))
        except OSError as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [data] * 8
    assert origin.hits["/conc-1"] == 1


def test_origin_failures(daemon, origin):
    m = daemon.mount
    # 404: ENOENT, and nothing stored
    assert errno_of(os.stat, os.path.join(m.plain, "nothing-here")) == errno.ENOENT
    assert origin.hits["/nothing-here"] == 1
    # a redirect is followed and the answer stored under the requested key
    origin.add("target-1", b"moved here")
    assert get(os.path.join(m.plain, "redirect-target-1")) == b"moved here"
    # 500, a dropped connection, no answer in time: EIO, tried 1 + retries times
    origin.add("drop-1", _data("drop-1", 2 * MiB))
    origin.add("slow-1", b"too late")
    origin.add("e500-1", b"never")
    for name in ("e500-1", "drop-1", "slow-1"):
        started = time.monotonic()
        assert errno_of(os.stat, os.path.join(m.plain, name)) == errno.EIO, name
        assert time.monotonic() - started < 8
        assert origin.hits["/" + name] == 2, name
    listing = os.listdir(m.plain)
    for name in ("nothing-here", "e500-1", "drop-1", "slow-1"):
        assert name not in listing
    log = m.log_text()
    assert "GET http://%s/e500-1 answered 500" % origin.host in log
    assert "http://%s/drop-1 failed: RemoteProtocolError" % origin.host in log


def test_standby_host_and_no_redirects(daemon, origin):
    m = daemon.mount
    bucket = os.path.join(m.mnt, "standby-" + APPID)
    os.mkdir(bucket)
    dead = "127.0.0.1:%d" % free_port()  # nothing listens there
    m.cli("bucket-origin", "--method", "put", bucket, "--host", dead, "--standby-host",
          origin.host, "--no-follow-redirection")
    origin.add("sb-1", b"from the standby host")
    assert get(os.path.join(bucket, "sb-1")) == b"from the standby host"
    assert errno_of(os.stat, os.path.join(bucket, "redirect-sb-1")) == errno.EIO
    assert "redirect to /sb-1 not followed" in m.log_text()


def test_api_subresource_and_pull(daemon, origin):
    s3 = daemon.s3()
    cos = daemon.cos()
    bucket = "api-" + APPID
    s3.create_bucket(Bucket=bucket)
    cos_rule = {"OriginRule": [{
        "RulePriority": 1, "OriginType": "Mirror",
        "OriginCondition": {"HTTPStatusCode": "404", "Prefix": "api-"},
        "OriginParameter": {"Protocol": "HTTP", "FollowRedirection": "true"},
        "OriginInfo": {"HostInfo": {"HostName": origin.host}}}]}
    cos.put_bucket_origin(Bucket=bucket, OriginConfiguration=cos_rule)
    got = cos.get_bucket_origin(Bucket=bucket)
    assert got["OriginRule"][0]["OriginInfo"]["HostInfo"]["HostName"] == origin.host
    data = origin.add("api-1", _data("api-1", MiB + 7), {"Content-Type": "image/png"})
    obj = s3.get_object(Bucket=bucket, Key="api-1")
    assert obj["Body"].read() == data and obj["ContentType"] == "image/png"
    origin.add("api-2", b"head pulls too")
    assert s3.head_object(Bucket=bucket, Key="api-2")["ContentLength"] == 14
    assert get(os.path.join(daemon.mount.mnt, bucket, "api-2")) == b"head pulls too"
    assert origin.hits["/api-1"] == 1 and origin.hits["/api-2"] == 1
    # a 404 is remembered for origin.miss_ttl (1 s), then asked again
    for _ in range(3):
        with pytest.raises(ClientError) as info:
            s3.head_object(Bucket=bucket, Key="api-none")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert origin.hits["/api-none"] == 1
    time.sleep(1.2)
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="api-none")
    assert origin.hits["/api-none"] == 2
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="api-e500-x")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    origin.add("api-dir/f", b"in a folder")
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="api-dir")  # a folder on the origin: no object
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3.get_object(Bucket=bucket, Key="api-dir/f")["Body"].read() == b"in a folder"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="other")  # no rule: no fetch
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    assert origin.hits["/other"] == 0
    cos.delete_bucket_origin(Bucket=bucket)
    with pytest.raises(Exception) as info:
        cos.get_bucket_origin(Bucket=bucket)
    assert "OriginConfigurationNotFoundError" in str(info.value)


def test_persisted_across_remount(daemon, origin):
    m = daemon.mount
    m.restart()
    wait_port(daemon.port, m.proc)
    name = "size-%d" % SIZES[-1]
    assert get(os.path.join(m.enc, name)) == _data(name, SIZES[-1])
    assert os.getxattr(os.path.join(m.enc, name), "user.cos.server-side-encryption") == b"AES256"
    assert os.getxattr(os.path.join(m.enc, name), "user.mime_type") == b"text/x-test"
    assert b"Mirror" in os.getxattr(m.enc, "user.cos.bucket-origin")
    assert origin.hits["/" + name] == 2  # not fetched again


def test_offline_cli(tmp_path, origin):
    config = write_config(str(tmp_path / "fs"))
    m = Mount(config).start()
    m.stop()
    res = subprocess.run(cosfs_cmd("bucket-origin", "--method", "put", PLAIN, "--config", config,
                                   "--host", origin.host, "--prefix", "x/"),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(cosfs_cmd("bucket-origin", "--method", "get", PLAIN, "--config", config),
                         capture_output=True, text=True, timeout=60)
    assert "<Prefix>x/</Prefix>" in res.stdout
    res = subprocess.run(cosfs_cmd("bucket-origin", "--method", "get", ENC, "--config", config),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "OriginConfigurationNotFoundError" in res.stderr
