"""Tier 4: the COS XML API of a real daemon, driven by real clients.

One daemon per module (``cosfs mount`` with ``api.enabled`` on a free port of
127.0.0.1) is driven by cos-python-sdk-v5 (virtual-hosted: ``IP``/``Port`` in
its ``CosConfig``, the bucket in ``Host``), boto3 (path-style, SigV4 with its
default checksum settings, aws-chunked uploads included), plain HTTP for
pre-signed URLs and raw sockets for abuse. Both doors are checked: what one
writes, the other reads.
"""

import base64
import collections
import hashlib
import http.client
import os
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import (APPID, ENC, PLAIN, Mount, cosfs_cmd, fuse_available, get, put,
                      write_config)

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

boto3 = pytest.importorskip("boto3")
qcloud_cos = pytest.importorskip("qcloud_cos")
from botocore.config import Config as BotoConfig  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

REGION = "ap-guangzhou"
API_SECTION = """\
api:
  enabled: true
  listen: 127.0.0.1:{port}
  idle_timeout: 3
  max_header_bytes: 8KiB
"""
Cred = collections.namedtuple("Cred", "secret_id secret_key")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the daemon exited before the API answered")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the API did not listen on %d within %ss" % (port, timeout))


def add_credential(config, access="full", buckets=None):
    """A new credential in the credentials file of ``config`` (the store's default)."""
    from cosfs import credentials
    path = os.path.join(os.path.dirname(config), "data", "credentials")
    c = credentials.add(path, access, buckets)
    return Cred(c.secret_id, c.secret_key)


class Api:
    def __init__(self, mount, port, full, readonly, limited):
        self.mount = mount
        self.port = port
        self.full, self.readonly, self.limited = full, readonly, limited
        self.url = "http://127.0.0.1:%d" % port

    def cos(self, cred=None):
        from qcloud_cos import CosConfig, CosS3Client
        cred = cred or self.full
        # ServiceDomain: GET Service goes to service.cos.myqcloud.com whatever IP/Port say
        cfg = CosConfig(Region=REGION, SecretId=cred.secret_id, SecretKey=cred.secret_key,
                        IP="127.0.0.1", Port=self.port, Scheme="http",
                        ServiceDomain="127.0.0.1:%d" % self.port)
        return CosS3Client(cfg, retry=1)

    def s3(self, cred=None, **config):
        cred = cred or self.full
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=cred.secret_id,
                            aws_secret_access_key=cred.secret_key,
                            config=BotoConfig(s3={"addressing_style": "path"},
                                              signature_version="s3v4",
                                              retries={"max_attempts": 1}, **config))


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("api") / "fs")
    port = free_port()
    config = write_config(folder, extra=API_SECTION.format(port=port))
    os.makedirs(os.path.join(folder, "data"), mode=0o700, exist_ok=True)
    full = add_credential(config)
    readonly = add_credential(config, "read-only")
    limited = add_credential(config, buckets=[PLAIN])
    m = Mount(config).start()
    try:
        wait_port(port, m.proc)
        yield Api(m, port, full, readonly, limited)
    finally:
        m.stop()
    m.expect_log(r"the client went away|failed after the answer started")
    bad = m.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])
    # every chunk of every object the API wrote opens under its object's identity,
    # those of completed multipart uploads (linked from their parts) included
    res = m.cli("fsck", "--config", config, "--verify", "--dry-run")
    assert "DAMAGED" not in res.stdout + res.stderr, res.stdout + res.stderr


def s3_code(exc_info):
    return exc_info.value.response["Error"]["Code"]


def cos_code(exc_info):
    return exc_info.value.get_error_code()


def store_files(api):
    for root, _dirs, files in os.walk(api.mount.store):
        for name in files:
            yield os.path.join(root, name)


def store_contains(api, needle):
    for path in store_files(api):
        with open(path, "rb") as f:
            if needle in f.read():
                return True
    return False


# -- bucket encryption ------------------------------------------------------------------
def test_bucket_encryption_through_sdk_and_xattr(api):
    cos = api.cos()
    bucket = "sdkenc-" + APPID
    cos.create_bucket(Bucket=bucket)
    with pytest.raises(qcloud_cos.CosServiceError) as info:
        cos.get_bucket_encryption(Bucket=bucket)
    assert cos_code(info) == "NoSuchEncryptionConfiguration"
    assert info.value.get_status_code() == 404
    cos.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rule": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    got = cos.get_bucket_encryption(Bucket=bucket)
    assert "AES256" in str(got)
    path = os.path.join(api.mount.mnt, bucket)
    assert b"<SSEAlgorithm>AES256</SSEAlgorithm>" in os.getxattr(path, "user.cos.bucket-encryption")
    out = subprocess.run(["getfattr", "-n", "user.cos.bucket-encryption", "--only-values", path],
                         capture_output=True)
    if out.returncode == 0:
        assert b"AES256" in out.stdout
    # an object written without a request gets the default
    cos.put_object(Bucket=bucket, Key="d.txt", Body=b"default encrypted")
    head = cos.head_object(Bucket=bucket, Key="d.txt")
    assert head["x-cos-server-side-encryption"] == "AES256"
    cos.delete_bucket_encryption(Bucket=bucket)
    cos.delete_bucket_encryption(Bucket=bucket)  # no error when there is none
    with pytest.raises(OSError):
        os.getxattr(path, "user.cos.bucket-encryption")
    with pytest.raises(qcloud_cos.CosServiceError) as info:
        cos.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rule": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "DES"}}]})
    assert cos_code(info) == "MalformedXML"


def test_bucket_encryption_through_boto3(api):
    s3 = api.s3()
    bucket = "s3enc-" + APPID
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    got = s3.get_bucket_encryption(Bucket=bucket)
    rules = got["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    s3.delete_bucket_encryption(Bucket=bucket)
    with pytest.raises(ClientError) as info:
        s3.get_bucket_encryption(Bucket=bucket)
    assert s3_code(info) == "NoSuchEncryptionConfiguration"


# -- objects and SSE ---------------------------------------------------------------------
def test_put_object_sse_states_agree_with_xattr(api):
    cos, s3 = api.cos(), api.s3()
    secret = b"API-PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    cos.put_object(Bucket=PLAIN, Key="sse/cos.bin", Body=secret + b"-cos",
                   ServerSideEncryption="AES256")
    s3.put_object(Bucket=PLAIN, Key="sse/s3.bin", Body=secret + b"-s3",
                  ServerSideEncryption="AES256")
    cos.put_object(Bucket=PLAIN, Key="sse/plain.bin", Body=b"plain text")
    assert cos.head_object(Bucket=PLAIN, Key="sse/cos.bin")["x-cos-server-side-encryption"] \
        == "AES256"
    assert s3.head_object(Bucket=PLAIN, Key="sse/s3.bin")["ServerSideEncryption"] == "AES256"
    assert "x-cos-server-side-encryption" not in cos.head_object(Bucket=PLAIN,
                                                                 Key="sse/plain.bin")
    base = os.path.join(api.mount.plain, "sse")
    assert os.getxattr(os.path.join(base, "cos.bin"), "user.cos.server-side-encryption") \
        == b"AES256"
    assert os.getxattr(os.path.join(base, "s3.bin"), "user.cos.server-side-encryption") \
        == b"AES256"
    with pytest.raises(OSError):
        os.getxattr(os.path.join(base, "plain.bin"), "user.cos.server-side-encryption")
    assert get(os.path.join(base, "cos.bin")) == secret + b"-cos"
    # the store holds no plaintext of what the API wrote encrypted
    assert not store_contains(api, secret)


def test_invalid_sse_value_stores_nothing(api):
    cos = api.cos()
    with pytest.raises(qcloud_cos.CosServiceError) as info:
        cos.put_object(Bucket=PLAIN, Key="sse/bad.bin", Body=b"x",
                       ServerSideEncryption="ROT13")
    assert cos_code(info) == "InvalidArgument"
    assert info.value.get_status_code() == 400
    assert not os.path.exists(os.path.join(api.mount.plain, "sse", "bad.bin"))


def test_metadata_headers_and_overrides(api):
    s3 = api.s3()
    s3.put_object(Bucket=PLAIN, Key="meta/a.txt", Body=b"hello", ContentType="text/plain",
                  CacheControl="max-age=60", ContentDisposition="attachment",
                  Metadata={"color": "blue"})
    head = s3.head_object(Bucket=PLAIN, Key="meta/a.txt")
    assert head["ContentType"] == "text/plain"
    assert head["CacheControl"] == "max-age=60"
    assert head["Metadata"] == {"color": "blue"}
    assert head["ETag"] == '"%s"' % hashlib.md5(b"hello").hexdigest()
    got = s3.get_object(Bucket=PLAIN, Key="meta/a.txt", ResponseContentType="x/y")
    assert got["ContentType"] == "x/y"
    assert got["Body"].read() == b"hello"
    assert os.getxattr(os.path.join(api.mount.plain, "meta", "a.txt"), "user.cos.etag") \
        .decode().strip('"') == hashlib.md5(b"hello").hexdigest()


def test_content_md5(api):
    cos = api.cos()
    body = b"digest me"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    cos.put_object(Bucket=PLAIN, Key="md5/ok", Body=body, ContentMD5=good)
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(qcloud_cos.CosServiceError) as info:
        cos.put_object(Bucket=PLAIN, Key="md5/bad", Body=body, ContentMD5=wrong)
    assert cos_code(info) == "BadDigest"
    with pytest.raises(qcloud_cos.CosServiceError) as info:
        cos.put_object(Bucket=PLAIN, Key="md5/bad", Body=body, ContentMD5="not-base64!")
    assert cos_code(info) == "InvalidDigest"
    assert not os.path.exists(os.path.join(api.mount.plain, "md5", "bad"))


def test_copy_object(api):
    cos, s3 = api.cos(), api.s3()
    cos.put_object(Bucket=PLAIN, Key="copy/src", Body=b"copy me", Metadata={"x-cos-meta-a": "1"})
    cos.copy_object(Bucket=ENC, Key="copy/dst",
                    CopySource={"Bucket": PLAIN, "Key": "copy/src", "Region": REGION})
    head = cos.head_object(Bucket=ENC, Key="copy/dst")
    assert head["x-cos-server-side-encryption"] == "AES256"  # destination default
    assert head.get("x-cos-meta-a") == "1"
    assert get(os.path.join(api.mount.enc, "copy", "dst")) == b"copy me"
    s3.copy_object(Bucket=PLAIN, Key="copy/s3dst", CopySource={"Bucket": PLAIN, "Key": "copy/src"},
                   MetadataDirective="REPLACE", Metadata={"b": "2"},
                   ServerSideEncryption="AES256")
    head = s3.head_object(Bucket=PLAIN, Key="copy/s3dst")
    assert head["Metadata"] == {"b": "2"}
    assert head["ServerSideEncryption"] == "AES256"
    # a copy onto itself with new SSE headers re-encrypts
    cos.copy_object(Bucket=PLAIN, Key="copy/src", ServerSideEncryption="AES256",
                    CopySource={"Bucket": PLAIN, "Key": "copy/src", "Region": REGION},
                    CopyStatus="Replaced")
    assert os.getxattr(os.path.join(api.mount.plain, "copy", "src"),
                       "user.cos.server-side-encryption") == b"AES256"
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=PLAIN, Key="copy/never", CopySource={"Bucket": PLAIN,
                                                                   "Key": "copy/src"},
                       CopySourceIfMatch='"0123"')
    assert s3_code(info) == "PreconditionFailed"


# -- listings -------------------------------------------------------------------------------
def test_list_objects_v1_v2(api):
    cos, s3 = api.cos(), api.s3()
    bucket = "lists-" + APPID
    s3.create_bucket(Bucket=bucket)
    keys = ["a.txt", "b/1.txt", "b/2.txt", "b/c/3.txt", "d.txt", "e f.txt", "\u00e9t\u00e9.txt"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    got = s3.list_objects_v2(Bucket=bucket)
    assert [c["Key"] for c in got["Contents"]] == sorted(keys, key=lambda k: k.encode())
    got = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in got["CommonPrefixes"]] == ["b/"]
    assert "b/1.txt" not in [c["Key"] for c in got["Contents"]]
    got = s3.list_objects_v2(Bucket=bucket, Prefix="b/", Delimiter="/")
    assert [c["Key"] for c in got["Contents"]] == ["b/1.txt", "b/2.txt"]
    assert [p["Prefix"] for p in got["CommonPrefixes"]] == ["b/c/"]
    # pagination, v2 and v1
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=2, **kw)
        seen += [c["Key"] for c in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(keys, key=lambda k: k.encode())
    paginator = s3.get_paginator("list_objects")
    seen = [c["Key"] for page in paginator.paginate(Bucket=bucket, PaginationConfig={
        "PageSize": 3}) for c in page.get("Contents", [])]
    assert seen == sorted(keys, key=lambda k: k.encode())
    got = s3.list_objects_v2(Bucket=bucket, StartAfter="b/2.txt")
    assert [c["Key"] for c in got["Contents"]][0] == "b/c/3.txt"
    # the COS SDK, v1 with a marker and url encoding
    got = cos.list_objects(Bucket=bucket, Prefix="", Delimiter="/", MaxKeys=100,
                           EncodingType="url")
    assert "b/" in [p["Prefix"] for p in got.get("CommonPrefixes", [])]
    got = cos.list_objects(Bucket=bucket, Marker="b/c/3.txt")
    assert [c["Key"] for c in got["Contents"]][0] == "d.txt"


def test_list_buckets(api):
    names = [b["Name"] for b in api.s3().list_buckets()["Buckets"]]
    assert PLAIN in names and ENC in names
    got = api.cos().list_buckets()
    assert PLAIN in str(got)


# -- ranges and conditions ------------------------------------------------------------------
def test_ranges_and_conditions(api):
    s3 = api.s3()
    data = bytes(range(256)) * 100
    put_resp = s3.put_object(Bucket=PLAIN, Key="range/r.bin", Body=data)
    etag = put_resp["ETag"]
    got = s3.get_object(Bucket=PLAIN, Key="range/r.bin", Range="bytes=100-199")
    assert got["ContentRange"] == "bytes 100-199/%d" % len(data)
    assert got["Body"].read() == data[100:200]
    got = s3.get_object(Bucket=PLAIN, Key="range/r.bin", Range="bytes=-10")
    assert got["Body"].read() == data[-10:]
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=PLAIN, Key="range/r.bin", Range="bytes=%d-" % len(data))
    assert s3_code(info) == "InvalidRange"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=PLAIN, Key="range/r.bin", IfNoneMatch=etag)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=PLAIN, Key="range/r.bin", IfMatch='"nope"')
    assert s3_code(info) == "PreconditionFailed"
    assert s3.get_object(Bucket=PLAIN, Key="range/r.bin", IfMatch=etag)["Body"].read() == data
    last = s3.head_object(Bucket=PLAIN, Key="range/r.bin")["LastModified"]
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=PLAIN, Key="range/r.bin", IfModifiedSince=last)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=PLAIN, Key="range/r.bin",
                      IfUnmodifiedSince=last.replace(year=2000))
    assert s3_code(info) == "PreconditionFailed"


# -- deletes ------------------------------------------------------------------------------------
def test_delete_and_multi_delete(api):
    s3, cos = api.s3(), api.cos()
    for i in range(5):
        s3.put_object(Bucket=PLAIN, Key="del/%d" % i, Body=b"x")
    s3.delete_object(Bucket=PLAIN, Key="del/0")
    s3.delete_object(Bucket=PLAIN, Key="del/0")  # again: still 204
    got = s3.delete_objects(Bucket=PLAIN, Delete={"Objects": [{"Key": "del/1"},
                                                             {"Key": "del/2"}]})
    assert sorted(d["Key"] for d in got["Deleted"]) == ["del/1", "del/2"]
    got = cos.delete_objects(Bucket=PLAIN, Delete={"Quiet": "true", "Object": [
        {"Key": "del/3"}, {"Key": "del/4"}]})
    assert not got.get("Deleted")
    assert os.listdir(os.path.join(api.mount.plain)).count("del") == 0 or \
        os.listdir(os.path.join(api.mount.plain, "del")) == []


def test_delete_bucket_not_empty(api):
    s3 = api.s3()
    s3.create_bucket(Bucket="full-" + APPID)
    s3.put_object(Bucket="full-" + APPID, Key="k", Body=b"x")
    with pytest.raises(ClientError) as info:
        s3.delete_bucket(Bucket="full-" + APPID)
    assert s3_code(info) == "BucketNotEmpty"
    s3.delete_object(Bucket="full-" + APPID, Key="k")
    s3.delete_bucket(Bucket="full-" + APPID)
    assert not os.path.exists(os.path.join(api.mount.mnt, "full-" + APPID))


# -- both doors -----------------------------------------------------------------------------------
def test_tree_on_mount_read_through_api(api, tmp_path):
    src = tmp_path / "tree"
    (src / "x" / "y").mkdir(parents=True)
    files = {"top.txt": b"top", "x/one.txt": b"one" * 1000, "x/y/two.bin": os.urandom(300000)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    subprocess.run(["cp", "-r", str(src), os.path.join(api.mount.enc, "tree")], check=True)
    s3 = api.s3()
    listed = [c["Key"] for c in s3.list_objects_v2(Bucket=ENC, Prefix="tree/")["Contents"]]
    assert sorted(listed) == sorted("tree/" + k for k in files)
    for rel, data in files.items():
        got = s3.get_object(Bucket=ENC, Key="tree/" + rel)
        assert got["Body"].read() == data
        assert got["ServerSideEncryption"] == "AES256"


def test_api_put_read_on_mount(api):
    cos = api.cos()
    cos.put_object(Bucket=PLAIN, Key="doors/in/a.txt", Body=b"through the API")
    path = os.path.join(api.mount.plain, "doors", "in", "a.txt")
    assert subprocess.run(["cat", path], capture_output=True, check=True).stdout \
        == b"through the API"
    put(path, b"changed on the mount")
    assert cos.get_object(Bucket=PLAIN, Key="doors/in/a.txt")["Body"].get_raw_stream().read() \
        == b"changed on the mount"


def test_api_changes_show_on_the_mount_at_once(api):
    """The kernel caches entries (also "no such name"): every API change invalidates them
    before its answer, so the mount shows it at once, without waiting for a timeout."""
    s3 = api.s3()
    folder = os.path.join(api.mount.plain, "fresh")
    path = os.path.join(folder, "caf\u00e9.txt")
    for probe in (folder, path):  # the kernel now holds negative entries for both
        assert not os.path.exists(probe)
    s3.put_object(Bucket=PLAIN, Key="fresh/caf\u00e9.txt", Body=b"one")
    assert os.stat(path).st_size == 3
    assert os.listdir(folder) == ["caf\u00e9.txt"]
    assert subprocess.run(["cat", path], capture_output=True, check=True).stdout == b"one"
    before = os.stat(path).st_ino
    s3.put_object(Bucket=PLAIN, Key="fresh/caf\u00e9.txt", Body=b"replaced")
    st = os.stat(path)
    assert st.st_ino != before and st.st_size == 8
    assert subprocess.run(["cat", path], capture_output=True, check=True).stdout == b"replaced"
    with open(path, "rb") as f:  # an open file keeps the old version's name resolved
        api.cos().put_object(Bucket=PLAIN, Key="fresh/caf\u00e9.txt", Body=b"third")
        assert f.read() == b"replaced"
    assert get(path) == b"third"
    os.listdir(folder)  # the kernel caches the folder's entry
    s3.delete_object(Bucket=PLAIN, Key="fresh/caf\u00e9.txt")
    assert not os.path.exists(path)
    # "fresh" existed only for the key below it: it went with it, on the mount at once
    assert not os.path.exists(folder)
    os.mkdir(folder)  # a directory made on the mount stays when the API empties it
    s3.put_object(Bucket=PLAIN, Key="fresh/x", Body=b"x")
    s3.delete_object(Bucket=PLAIN, Key="fresh/x")
    assert os.listdir(folder) == []
    s3.delete_object(Bucket=PLAIN, Key="fresh/")
    assert not os.path.exists(folder)


# -- multipart -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.bin"
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(100):
            f.write(block[:-8] + i.to_bytes(8, "big"))
    return str(path)


def _md5_file(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_upload_file_multipart_boto3(api, big_file, tmp_path):
    from boto3.s3.transfer import TransferConfig
    s3 = api.s3()
    s3.upload_file(big_file, ENC, "big/boto3.bin",
                   Config=TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20))
    head = s3.head_object(Bucket=ENC, Key="big/boto3.bin")
    assert head["ContentLength"] == 100 << 20
    assert head["ETag"].strip('"').endswith("-13")
    assert head["ServerSideEncryption"] == "AES256"
    out = tmp_path / "down.bin"
    s3.download_file(ENC, "big/boto3.bin", str(out))
    assert _md5_file(out) == _md5_file(big_file)
    assert _md5_file(os.path.join(api.mount.enc, "big", "boto3.bin")) == _md5_file(big_file)


def test_upload_file_multipart_cos_sdk(api, big_file):
    cos = api.cos()
    cos.upload_file(Bucket=PLAIN, Key="big/cos.bin", LocalFilePath=big_file, PartSize=10,
                    MAXThread=4, ServerSideEncryption="AES256")
    head = cos.head_object(Bucket=PLAIN, Key="big/cos.bin")
    assert int(head["Content-Length"]) == 100 << 20
    assert head["x-cos-server-side-encryption"] == "AES256"
    assert _md5_file(os.path.join(api.mount.plain, "big", "cos.bin")) == _md5_file(big_file)
    with open(big_file, "rb") as f:
        marker = f.read(64)
    assert not store_contains(api, marker)


def test_multipart_list_abort_and_part_copy(api):
    s3 = api.s3()
    s3.put_object(Bucket=PLAIN, Key="mp/src", Body=b"s" * (6 << 20))
    up = s3.create_multipart_upload(Bucket=PLAIN, Key="mp/obj", ServerSideEncryption="AES256")
    uid = up["UploadId"]
    uploads = s3.list_multipart_uploads(Bucket=PLAIN)
    assert uid in [u["UploadId"] for u in uploads.get("Uploads", [])]
    p1 = s3.upload_part(Bucket=PLAIN, Key="mp/obj", UploadId=uid, PartNumber=1,
                        Body=b"a" * (5 << 20))
    p2 = s3.upload_part_copy(Bucket=PLAIN, Key="mp/obj", UploadId=uid, PartNumber=2,
                             CopySource={"Bucket": PLAIN, "Key": "mp/src"},
                             CopySourceRange="bytes=0-1023")
    parts = s3.list_parts(Bucket=PLAIN, Key="mp/obj", UploadId=uid)["Parts"]
    assert [p["PartNumber"] for p in parts] == [1, 2]
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket=PLAIN, Key="mp/obj", UploadId=uid,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 1, "ETag": '"0000"'}]})
    assert s3_code(info) == "InvalidPart"
    s3.complete_multipart_upload(Bucket=PLAIN, Key="mp/obj", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": p1["ETag"]},
                  {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]})
    assert get(os.path.join(api.mount.plain, "mp", "obj")) == b"a" * (5 << 20) + b"s" * 1024
    up = s3.create_multipart_upload(Bucket=PLAIN, Key="mp/aborted")
    s3.upload_part(Bucket=PLAIN, Key="mp/aborted", UploadId=up["UploadId"], PartNumber=1,
                   Body=b"z")
    s3.abort_multipart_upload(Bucket=PLAIN, Key="mp/aborted", UploadId=up["UploadId"])
    with pytest.raises(ClientError) as info:
        s3.list_parts(Bucket=PLAIN, Key="mp/aborted", UploadId=up["UploadId"])
    assert s3_code(info) == "NoSuchUpload"
    assert not os.path.exists(os.path.join(api.mount.plain, "mp", "aborted"))


# -- pre-signed URLs -------------------------------------------------------------------------------
def test_presigned_urls(api):
    import requests
    s3, cos = api.s3(), api.cos()
    url = s3.generate_presigned_url("put_object", Params={"Bucket": PLAIN, "Key": "pre/s3"},
                                    ExpiresIn=60)
    assert requests.put(url, data=b"presigned put").status_code == 200
    url = s3.generate_presigned_url("get_object", Params={"Bucket": PLAIN, "Key": "pre/s3"},
                                    ExpiresIn=60)
    with urllib.request.urlopen(url) as r:
        assert r.read() == b"presigned put"
    host = "%s.cos.%s.myqcloud.com" % (PLAIN, REGION)
    # the daemon is reached by IP: the bucket travels in the (signed) Host header
    url = cos.get_presigned_url(Bucket=PLAIN, Key="pre/cos", Method="PUT", Expired=60,
                                Headers={"Host": host})
    r = requests.put(url, data=b"cos presigned", headers={"Host": host})
    assert r.status_code == 200, r.text
    url = cos.get_presigned_download_url(Bucket=PLAIN, Key="pre/cos", Expired=60,
                                         Headers={"Host": host})
    r = requests.get(url, headers={"Host": host})
    assert r.content == b"cos presigned"
    r = requests.get(url.replace("q-signature=", "q-signature=0"), headers={"Host": host})
    assert r.status_code == 403


# -- refusals --------------------------------------------------------------------------------------
def _raw(api, method, path, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_anonymous_and_wrong_signatures(api):
    status, body = _raw(api, "GET", "/%s/sse/plain.bin" % PLAIN)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    assert b"<RequestId>" in body
    status, body = _raw(api, "PUT", "/%s/anon" % PLAIN, body=b"x")
    assert status == 403
    wrong = Cred(api.full.secret_id, "x" * 40)
    with pytest.raises(ClientError) as info:
        api.s3(wrong).put_object(Bucket=PLAIN, Key="sig/wrong", Body=b"x")
    assert s3_code(info) == "SignatureDoesNotMatch"
    with pytest.raises(qcloud_cos.CosServiceError) as info:
        api.cos(wrong).put_object(Bucket=PLAIN, Key="sig/wrong", Body=b"x")
    assert cos_code(info) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as info:
        api.s3(Cred("AKIDnobody", "x" * 40)).list_buckets()
    assert s3_code(info) == "InvalidAccessKeyId"
    assert not os.path.exists(os.path.join(api.mount.plain, "sig"))


def test_expired_presigned_url(api):
    import requests
    cos = api.cos()
    cos.put_object(Bucket=PLAIN, Key="pre/old", Body=b"x")
    host = "%s.cos.%s.myqcloud.com" % (PLAIN, REGION)
    url = cos.get_presigned_download_url(Bucket=PLAIN, Key="pre/old", Expired=1,
                                         Headers={"Host": host})
    time.sleep(2.5)
    r = requests.get(url, headers={"Host": host})
    assert r.status_code == 403 and b"AccessDenied" in r.content


def test_read_only_and_bucket_limited_credentials(api):
    ro = api.s3(api.readonly)
    api.s3().put_object(Bucket=PLAIN, Key="ro/a", Body=b"read me")
    assert ro.get_object(Bucket=PLAIN, Key="ro/a")["Body"].read() == b"read me"
    with pytest.raises(ClientError) as info:
        ro.put_object(Bucket=PLAIN, Key="ro/b", Body=b"x")
    assert s3_code(info) == "AccessDenied"
    with pytest.raises(ClientError) as info:
        ro.delete_object(Bucket=PLAIN, Key="ro/a")
    assert s3_code(info) == "AccessDenied"
    limited = api.s3(api.limited)
    limited.put_object(Bucket=PLAIN, Key="ro/c", Body=b"x")
    with pytest.raises(ClientError) as info:
        limited.put_object(Bucket=ENC, Key="ro/c", Body=b"x")
    assert s3_code(info) == "AccessDenied"
    with pytest.raises(ClientError) as info:
        limited.get_object(Bucket=ENC, Key="tree/top.txt")
    assert s3_code(info) == "AccessDenied"
    assert [b["Name"] for b in limited.list_buckets()["Buckets"]] == [PLAIN]
    assert not os.path.exists(os.path.join(api.mount.plain, "ro", "b"))
    assert not os.path.exists(os.path.join(api.mount.enc, "ro"))


def test_malformed_xml(api):
    s3 = api.s3()
    for body in (b"<ServerSideEncryptionConfiguration><Rule>", b"<!DOCTYPE x [<!ENTITY a 'b'>]>"
                 b"<ServerSideEncryptionConfiguration/>"):
        with pytest.raises(ClientError) as info:
            _send_raw_body(s3, "put_bucket_encryption", body, Bucket=PLAIN,
                           ServerSideEncryptionConfiguration={"Rules": []})
        assert s3_code(info) == "MalformedXML"
    with pytest.raises(ClientError) as info:
        _send_raw_body(s3, "delete_objects", b"<Delete><Object><Key>a</Key>", Bucket=PLAIN,
                       Delete={"Objects": [{"Key": "a"}]})
    assert s3_code(info) == "MalformedXML"


def _send_raw_body(client, operation, body, **params):
    """Call ``operation`` with its request body replaced by ``body`` (signed as sent)."""
    def replace(request, **_kw):
        request.data = body
        if "Content-MD5" in request.headers:
            del request.headers["Content-MD5"]
        for name in list(request.headers.keys()):
            if name.lower().startswith("x-amz-checksum") or \
                    name.lower() == "x-amz-sdk-checksum-algorithm":
                del request.headers[name]
        request.headers["Content-Length"] = str(len(body))
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
    event = "before-sign.s3.%s" % client.meta.method_to_api_mapping[operation]
    client.meta.events.register(event, replace)
    try:
        return getattr(client, operation)(**params)
    finally:
        client.meta.events.unregister(event, replace)


def test_oversize_header(api):
    status, _ = _raw(api, "GET", "/", headers={"X-Big": "a" * (16 << 10)})
    assert status in (400, 431)
    # the daemon still answers
    assert api.s3().list_buckets()["Buckets"]


def test_stalled_client_mid_body(api):
    s = socket.create_connection(("127.0.0.1", api.port))
    try:
        s.sendall(b"PUT /%s/stall/obj HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                  b"Authorization: AWS4-HMAC-SHA256 Credential=x/20250101/ap-guangzhou/s3/aws4_"
                  b"request, SignedHeaders=host, Signature=00\r\n\r\n" % PLAIN.encode()
                  + b"x" * 1000)
        # others are served meanwhile
        started = time.monotonic()
        api.s3().put_object(Bucket=PLAIN, Key="stall/other", Body=b"fine")
        assert time.monotonic() - started < 2
        s.settimeout(15)
        try:
            s.recv(65536)  # the daemon answers or closes the connection after idle_timeout
        except OSError:
            pass
    finally:
        s.close()
    assert not os.path.exists(os.path.join(api.mount.plain, "stall", "obj"))
    # a client that stalls mid-body after a valid signature stores nothing either
    s3 = api.s3()
    url = s3.generate_presigned_url("put_object", Params={"Bucket": PLAIN, "Key": "stall/pre"},
                                    ExpiresIn=60)
    path = url.split(str(api.port), 1)[1]
    s = socket.create_connection(("127.0.0.1", api.port))
    try:
        s.sendall(b"PUT %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 100000\r\n\r\n"
                  % (path.encode(), api.port) + b"y" * 5000)
        s.settimeout(15)
        try:
            s.recv(65536)
        except OSError:
            pass
    finally:
        s.close()
    assert not os.path.exists(os.path.join(api.mount.plain, "stall", "pre"))


def test_invalid_names(api):
    s3, cos = api.s3(), api.cos()
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket="Bad_Name-" + APPID)
    assert s3_code(info) == "InvalidBucketName"
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket="noappid")
    assert s3_code(info) == "InvalidBucketName"
    s3.put_object(Bucket=PLAIN, Key="names/file", Body=b"x")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=PLAIN, Key="names/file/below", Body=b"x")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 409)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=PLAIN, Key="names/" + "k" * 900, Body=b"x")
    assert s3_code(info) == "KeyTooLong"
    with pytest.raises(ClientError):
        s3.put_object(Bucket=PLAIN, Key="names/a//b", Body=b"x")
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket="nosuch-" + APPID, Key="x")
    assert s3_code(info) == "NoSuchBucket"
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=PLAIN, Key="names/missing")
    assert s3_code(info) == "NoSuchKey"
    assert sorted(os.listdir(os.path.join(api.mount.plain, "names"))) == ["file"]


def test_sigv4_body_hash_mismatch_stores_nothing(api):
    s3 = api.s3()

    def corrupt(request, **_kw):
        request.data = b"not what was signed"

    s3.meta.events.register("request-created.s3.PutObject", corrupt)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=PLAIN, Key="hash/bad", Body=b"signed body")
    assert s3_code(info) in ("XAmzContentSHA256Mismatch", "BadDigest", "SignatureDoesNotMatch",
                             "InvalidRequest")
    assert not os.path.exists(os.path.join(api.mount.plain, "hash", "bad"))


# -- cosfs serve: the API without FUSE -------------------------------------------------------------
class Served:
    """``cosfs serve CONFIG`` in a subprocess, with pyfuse3 made unimportable (no FUSE)."""

    READY_TIMEOUT = 30

    def __init__(self, folder, config, port):
        self.folder, self.config, self.port = folder, config, port
        self.log = os.path.join(folder, "serve.log")
        self.proc = None

    def start(self):
        blocker = os.path.join(self.folder, "nofuse")
        os.makedirs(blocker, exist_ok=True)
        with open(os.path.join(blocker, "pyfuse3.py"), "w") as f:
            f.write("raise ImportError('no FUSE on this host')\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [blocker, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]))
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cosfs_cmd("serve", self.config, "-v"), stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env)
        try:
            wait_port(self.port, self.proc, self.READY_TIMEOUT)
        except RuntimeError:
            self.kill()
            raise RuntimeError("cosfs serve did not start:\n" + self.log_text())
        return self

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _s3_for(port, cred):
    return boto3.client("s3", endpoint_url="http://127.0.0.1:%d" % port, region_name=REGION,
                        aws_access_key_id=cred.secret_id, aws_secret_access_key=cred.secret_key,
                        config=BotoConfig(s3={"addressing_style": "path"},
                                          signature_version="s3v4",
                                          retries={"max_attempts": 1}))


def _serve_new_store(tmp_path):
    """``cosfs serve`` (no FUSE) on a new store: (folder, config, port, credential, Served)."""
    folder = str(tmp_path / "served")
    port = free_port()
    config = write_config(folder, extra=API_SECTION.format(port=port))
    os.makedirs(os.path.join(folder, "data"), mode=0o700, exist_ok=True)
    cred = add_credential(config)
    return folder, config, port, cred, Served(folder, config, port).start()


def test_serve_without_fuse_finishes_requests_on_sigterm(tmp_path):
    import signal
    folder, config, port, cred, served = _serve_new_store(tmp_path)
    try:
        s3 = _s3_for(port, cred)
        s3.put_object(Bucket=PLAIN, Key="served/small", Body=b"no fuse needed")
        assert s3.get_object(Bucket=PLAIN, Key="served/small")["Body"].read() == \
            b"no fuse needed"
        # a PUT in flight when SIGTERM arrives is finished and committed before the exit
        url = s3.generate_presigned_url("put_object", ExpiresIn=60,
                                        Params={"Bucket": PLAIN, "Key": "served/inflight"})
        target = url.split(str(port), 1)[1]
        data = os.urandom(300000)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.putrequest("PUT", target)
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        conn.send(data[:100000])
        time.sleep(0.3)
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert served.proc.poll() is None  # still finishing the request
        conn.send(data[100000:])
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert resp.getheader("ETag").strip('"') == hashlib.md5(data).hexdigest()
        conn.close()
        assert served.proc.wait(60) == 0
        assert "stopped serving" in served.log_text()
        # a new connection after the stop finds nobody
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        served = Served(folder, config, port).start()
        got = _s3_for(port, cred).get_object(Bucket=PLAIN, Key="served/inflight")
        assert got["Body"].read() == data
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(60) == 0
        bad = [line for line in served.log_text().splitlines()
               if " ERROR " in line or "Traceback" in line]
        assert not bad, "\n".join(bad)
    finally:
        served.kill()


def test_kill_during_complete_leaves_the_upload_or_the_whole_object(tmp_path):
    """Complete links the parts and names the object in one transaction: a kill -9 at
    any moment of it leaves either the upload with every part (Complete works again)
    or the whole object, and every chunk opens under the object's identity."""
    import threading
    folder, config, port, cred, served = _serve_new_store(tmp_path)
    parts = [os.urandom(1 << 20) for _ in range(6)] + [b"and the short last part"]
    whole = b"".join(parts)
    outcomes = set()
    try:
        for round_, delay in enumerate((0.0, 0.005, 0.01, 0.02, 0.05, 0.2)):
            s3 = _s3_for(port, cred)
            key = "killed/%d" % round_
            uid = s3.create_multipart_upload(Bucket=ENC, Key=key)["UploadId"]
            listed = [{"PartNumber": n, "ETag": s3.upload_part(
                Bucket=ENC, Key=key, UploadId=uid, PartNumber=n, Body=p)["ETag"]}
                for n, p in enumerate(parts, 1)]
            done = threading.Thread(target=lambda: _quietly(
                s3.complete_multipart_upload, Bucket=ENC, Key=key, UploadId=uid,
                MultipartUpload={"Parts": listed}))
            done.start()
            time.sleep(delay)
            served.kill()
            done.join(30)
            served = Served(folder, config, port).start()
            s3 = _s3_for(port, cred)
            try:
                got = s3.get_object(Bucket=ENC, Key=key)["Body"].read()
            except ClientError as exc:
                assert s3_code_of(exc) == "NoSuchKey"
                left = s3.list_parts(Bucket=ENC, Key=key, UploadId=uid)["Parts"]
                assert [p["Size"] for p in left] == [len(p) for p in parts]
                outcomes.add("upload")
                s3.complete_multipart_upload(Bucket=ENC, Key=key, UploadId=uid,
                                             MultipartUpload={"Parts": listed})
                got = s3.get_object(Bucket=ENC, Key=key)["Body"].read()
            else:
                outcomes.add("object")
                with pytest.raises(ClientError):
                    s3.list_parts(Bucket=ENC, Key=key, UploadId=uid)
            assert got == whole, "round %d: the object is not what was uploaded" % round_
    finally:
        served.kill()
    res = subprocess.run(cosfs_cmd("fsck", "--config", config, "--verify", "--dry-run"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "DAMAGED" not in res.stdout + res.stderr, \
        res.stdout + res.stderr
    print("outcomes seen:", sorted(outcomes))


def _quietly(fn, **kw):
    try:
        fn(**kw)
    except Exception:  # the daemon was killed under it
        pass


def s3_code_of(exc):
    return exc.response["Error"]["Code"]


# -- versioning and replication ---------------------------------------------------------
def test_versions_through_boto3(api):
    s3 = api.s3()
    bucket = "versioned-" + APPID
    s3.create_bucket(Bucket=bucket)
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="k", Body=b"two")["VersionId"]
    assert v1 != v2
    listed = s3.list_object_versions(Bucket=bucket)
    assert [(v["VersionId"], v["IsLatest"]) for v in listed["Versions"]] == [(v2, True),
                                                                           (v1, False)]
    assert s3.get_object(Bucket=bucket, Key="k", VersionId=v1)["Body"].read() == b"one"
    assert s3.head_object(Bucket=bucket, Key="k")["VersionId"] == v2
    gone = s3.delete_object(Bucket=bucket, Key="k")
    assert gone["DeleteMarker"] is True
    assert not os.path.exists(os.path.join(api.mount.mnt, bucket, "k"))
    markers = s3.list_object_versions(Bucket=bucket)["DeleteMarkers"]
    assert markers[0]["VersionId"] == gone["VersionId"] and markers[0]["IsLatest"]
    # removing the marker brings the newest version back, on the mount too
    s3.delete_object(Bucket=bucket, Key="k", VersionId=gone["VersionId"])
    assert get(os.path.join(api.mount.mnt, bucket, "k")) == b"two"
    # restore the first version by copying it onto its key
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k",
                                                       "VersionId": v1})
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="k", VersionId="nope")
    assert s3_code(ei) == "NoSuchVersion"
    # multi-delete of specific versions
    res = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k", "VersionId": v2}]})
    assert res["Deleted"][0]["VersionId"] == v2


def test_replication_through_the_cos_sdk(api):
    cos = api.cos()
    src, dest = "replsrc-" + APPID, "repldst-" + APPID
    cos.create_bucket(Bucket=src)
    api.s3().create_bucket(Bucket=dest,
                           CreateBucketConfiguration={"LocationConstraint": "ap-shanghai"})
    rule = {"Role": "qcs::cam::uin/100000000001:uin/100000000001",
            "Rule": [{"ID": "r1", "Status": "Enabled", "Prefix": "",
                      "Destination": {"Bucket": "qcs::cos:ap-shanghai::" + dest,
                                      "StorageClass": "STANDARD"}}]}
    with pytest.raises(qcloud_cos.CosServiceError) as ei:
        cos.put_bucket_replication(Bucket=src, ReplicationConfiguration=rule)
    assert cos_code(ei) == "BucketVersionNotOpen"
    for b in (src, dest):
        cos.put_bucket_versioning(Bucket=b, Status="Enabled")
    cos.put_bucket_replication(Bucket=src, ReplicationConfiguration=rule)
    got = cos.get_bucket_replication(Bucket=src)
    assert got["Rule"][0]["Destination"]["Bucket"].endswith(dest)
    res = cos.put_object(Bucket=src, Key="doc.txt", Body=b"replicate me",
                         ServerSideEncryption="AES256")
    vid = res["x-cos-version-id"]
    deadline = time.monotonic() + 30
    while cos.head_object(Bucket=src, Key="doc.txt").get("x-cos-replication-status") \
            != "COMPLETED":
        assert time.monotonic() < deadline, "replication did not complete"
        time.sleep(0.05)
    head = cos.head_object(Bucket=dest, Key="doc.txt")
    assert head["x-cos-replication-status"] == "REPLICA"
    assert head["x-cos-version-id"] == vid
    assert head["x-cos-server-side-encryption"] == "AES256"
    cos.delete_bucket_replication(Bucket=src)
    with pytest.raises(qcloud_cos.CosServiceError) as ei:
        cos.get_bucket_replication(Bucket=src)
    assert cos_code(ei) == "ReplicationConfigurationNotFoundError"
