"""Tier 3: the XML API front-end in-process: the ASGI app without a socket, and its config.

The app is driven with hand-made ASGI messages over a small in-memory stand-in
for the key space (the real one is exercised by ``t4_api.py`` through real
clients), so these tests pin what the front-end itself does: addressing,
access checks, header conventions, streaming, request ids and error documents.
"""

import base64
import collections
import hashlib
import time
from dataclasses import dataclass, field

import pytest
import trio

from cosfs import config, errors
from cosfs.api import xmlout
from cosfs.api.app import ApiApp

APPID = "1250000000"
PLAIN = "plain-" + APPID
Listing = collections.namedtuple("Listing", "contents common_prefixes is_truncated next_marker")
Bucket = collections.namedtuple("Bucket", "name region created_ns")


@dataclass
class Info:
    key: str
    size: int
    mtime_ns: int
    etag: str
    sse: str = None
    kms_key_id: str = None
    headers: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    is_dir_marker: bool = False


class Reader:
    def __init__(self, info, data):
        self.info, self.data, self.closed = info, data, False

    async def read(self, offset, size):
        return self.data[offset:offset + size]

    async def aclose(self):
        self.closed = True


class MemoryKeySpace:
    """Just enough of KeySpace for the front-end: objects in dicts."""

    def __init__(self):
        self.buckets = {PLAIN: {}, "other-" + APPID: {}}
        self.readers = []

    def list_buckets(self):
        return [Bucket(n, "ap-guangzhou", 0) for n in sorted(self.buckets)]

    def bucket(self, name):
        if name not in self.buckets:
            raise errors.NoSuchBucket("no bucket %s" % name)
        return Bucket(name, "ap-guangzhou", 0)

    async def create_bucket(self, name, region):
        self.buckets[name] = {}

    async def put_object(self, bucket, key, body, *, sse, kms_key_id, meta, headers, content_md5):
        self.bucket(bucket)
        if sse not in (None, "AES256", "SM4", "cos/kms"):
            raise errors.InvalidArgument("bad sse")
        parts = [chunk async for chunk in body]
        data = b"".join(parts)
        if content_md5 is not None and hashlib.md5(data).digest() != content_md5:
            raise errors.CosfsError("digest", code="BadDigest")
        info = Info(key, len(data), time.time_ns(), hashlib.md5(data).hexdigest(), sse,
                    kms_key_id, headers, meta)
        self.buckets[bucket][key] = (info, data)
        return info

    async def head_object(self, bucket, key, *, pull=False):
        self.bucket(bucket)
        if key not in self.buckets[bucket]:
            raise errors.CosfsError("no key", code="NoSuchKey")
        return self.buckets[bucket][key][0]

    async def open_object(self, bucket, key, *, pull=False):
        info = await self.head_object(bucket, key)
        reader = Reader(info, self.buckets[bucket][key][1])
        self.readers.append(reader)
        return reader

    async def delete_object(self, bucket, key, version_id=None):
        await self.head_object(bucket, key)
        del self.buckets[bucket][key]
        return None, False

    def list_objects(self, bucket, *, prefix, delimiter, marker, max_keys):
        self.bucket(bucket)
        entries = []
        for key in sorted(self.buckets[bucket]):
            if not key.startswith(prefix) or key <= marker:
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                p = prefix + rest[:rest.index(delimiter) + 1]
                if p > marker and (not entries or entries[-1] != p):
                    entries.append(p)
            else:
                entries.append(self.buckets[bucket][key][0])
        page = entries[:max_keys]
        return Listing([e for e in page if not isinstance(e, str)],
                       [e for e in page if isinstance(e, str)], len(entries) > max_keys, None)


class Cred:
    def __init__(self, secret_id="AKIDtest", read_only=False, buckets=None):
        self.secret_id, self.read_only, self.buckets = secret_id, read_only, buckets

    def allows(self, bucket, write):
        if write and self.read_only:
            return False
        return bucket is None or self.buckets is None or bucket in self.buckets


Response = collections.namedtuple("Response", "status headers body")


def make_app(ks=None, cred=None, **kw):
    ks = ks or MemoryKeySpace()
    cred = Cred() if cred is None else cred

    def authenticate(req):
        if "authorization" not in req.headers and "q-sign-algorithm" not in req.params:
            return None
        return cred

    return ApiApp(ks, authenticate=authenticate, appid=APPID, region="ap-guangzhou",
                  endpoints=["cos.ap-guangzhou.myqcloud.com"], **kw), ks


def call(app, method, path, body=b"", headers=(), query=b"", pieces=None, host="127.0.0.1:1",
         anonymous=False, stall=False):
    """Run one request through ``app``; returns Response(status, headers dict, body)."""
    sent = []
    chunks = list(pieces) if pieces is not None else [body]
    own = any(k == "authorization" for k, _ in headers)
    hs = [("host", host)] + ([] if anonymous or own else [("authorization", "test")]) \
        + list(headers)

    async def receive():
        if chunks:
            piece = chunks.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(chunks) or stall}
        await trio.sleep_forever()

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": query, "headers": [(k.encode(), v.encode()) for k, v in hs]}
    trio.run(app, scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    assert all(m["more_body"] for m in sent[1:-1]) and not sent[-1].get("more_body")
    return Response(start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]},
                    b"".join(m.get("body", b"") for m in sent[1:]))


def code_of(resp):
    return xmlout.xmldoc.text(xmlout.xmldoc.parse(resp.body, "Error"), "Code")


# -- addressing, ids, access ---------------------------------------------------------------
def test_service_and_request_ids():
    app, _ = make_app()
    r1, r2 = call(app, "GET", "/"), call(app, "GET", "/")
    assert r1.status == 200 and b"<Name>%s</Name>" % PLAIN.encode() in r1.body
    assert r1.headers["x-cos-request-id"] != r2.headers["x-cos-request-id"]


def test_virtual_hosted_and_path_style_reach_the_same_object():
    app, ks = make_app()
    assert call(app, "PUT", "/a/b.txt", b"hi",
                host=PLAIN + ".cos.ap-guangzhou.myqcloud.com").status == 200
    assert call(app, "GET", "/%s/a/b.txt" % PLAIN).body == b"hi"
    assert "a/b.txt" in ks.buckets[PLAIN]


def test_anonymous_read_only_and_limited():
    app, _ = make_app()
    r = call(app, "GET", "/%s/x" % PLAIN, anonymous=True)
    assert r.status == 403 and code_of(r) == "AccessDenied"
    assert r.headers["x-cos-request-id"].encode() in r.body
    app, ks = make_app(cred=Cred(read_only=True))
    r = call(app, "PUT", "/%s/x" % PLAIN, b"data")
    assert r.status == 403 and "x" not in ks.buckets[PLAIN]
    app, ks = make_app(cred=Cred(buckets=(PLAIN,)))
    assert call(app, "PUT", "/other-%s/x" % APPID, b"d").status == 403
    assert call(app, "PUT", "/%s/x" % PLAIN, b"d").status == 200
    assert b"other-" not in call(app, "GET", "/").body


def test_unknown_subresource_and_method():
    app, _ = make_app()
    assert code_of(call(app, "GET", "/" + PLAIN, query=b"acl")) == "NotImplemented"
    r = call(app, "POST", "/" + PLAIN)
    assert r.status == 405 and code_of(r) == "MethodNotAllowed"


# -- objects -------------------------------------------------------------------------------
def test_put_streams_pieces_and_reports_sse_and_meta():
    app, ks = make_app()
    r = call(app, "PUT", "/%s/k" % PLAIN, pieces=[b"ab", b"cd", b"ef"],
             headers=[("x-cos-server-side-encryption", "AES256"), ("x-cos-meta-color", "red"),
                      ("content-type", "text/plain"), ("content-encoding", "aws-chunked")])
    assert r.status == 200
    assert r.headers["etag"] == '"%s"' % hashlib.md5(b"abcdef").hexdigest()
    assert r.headers["x-cos-server-side-encryption"] == "AES256"
    info = ks.buckets[PLAIN]["k"][0]
    assert info.meta == {"color": "red"} and info.headers == {"content-type": "text/plain"}
    r = call(app, "HEAD", "/%s/k" % PLAIN)
    assert r.headers["x-cos-meta-color"] == "red" and r.headers["content-length"] == "6"
    assert "x-amz-server-side-encryption" not in r.headers
    r = call(app, "HEAD", "/%s/k" % PLAIN, headers=[("authorization", "AWS4-HMAC-SHA256 x")])
    assert r.headers["x-amz-server-side-encryption"] == "AES256"
    assert r.headers["x-amz-meta-color"] == "red"


def test_amz_sse_names():
    app, ks = make_app()
    call(app, "PUT", "/%s/k" % PLAIN, b"x", headers=[("x-amz-server-side-encryption", "aws:kms")])
    assert ks.buckets[PLAIN]["k"][0].sse == "cos/kms"
    r = call(app, "PUT", "/%s/bad" % PLAIN, b"x", headers=[("x-cos-server-side-encryption", "X")])
    assert r.status == 400 and code_of(r) == "InvalidArgument" and "bad" not in ks.buckets[PLAIN]


def test_content_md5():
    app, ks = make_app()
    good = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    assert call(app, "PUT", "/%s/a" % PLAIN, b"x", headers=[("content-md5", good)]).status == 200
    r = call(app, "PUT", "/%s/b" % PLAIN, b"x", headers=[("content-md5", "zz")])
    assert code_of(r) == "InvalidDigest"
    r = call(app, "PUT", "/%s/b" % PLAIN, b"y", headers=[("content-md5", good)])
    assert code_of(r) == "BadDigest" and "b" not in ks.buckets[PLAIN]


def test_sigv4_payload_hash_mismatch_stores_nothing():
    app, ks = make_app()
    sig = [("authorization", "AWS4-HMAC-SHA256 x")]
    ok = hashlib.sha256(b"body").hexdigest()
    assert call(app, "PUT", "/%s/a" % PLAIN, b"body",
                headers=sig + [("x-amz-content-sha256", ok)]).status == 200
    r = call(app, "PUT", "/%s/b" % PLAIN, b"other", headers=sig + [("x-amz-content-sha256", ok)])
    assert code_of(r) == "XAmzContentSHA256Mismatch" and "b" not in ks.buckets[PLAIN]
    assert call(app, "PUT", "/%s/c" % PLAIN, b"x",
                headers=sig + [("x-amz-content-sha256", "UNSIGNED-PAYLOAD")]).status == 200


def test_get_ranges_streaming_and_overrides():
    app, ks = make_app()
    data = bytes(range(256)) * 10000  # 2.5 MB: sent in several pieces
    call(app, "PUT", "/%s/r" % PLAIN, data)
    r = call(app, "GET", "/%s/r" % PLAIN)
    assert r.body == data and r.headers["content-length"] == str(len(data))
    r = call(app, "GET", "/%s/r" % PLAIN, headers=[("range", "bytes=10-19")],
             query=b"response-content-type=x%2Fy")
    assert r.status == 206 and r.body == data[10:20]
    assert r.headers["content-range"] == "bytes 10-19/%d" % len(data)
    assert r.headers["content-type"] == "x/y"
    assert call(app, "GET", "/%s/r" % PLAIN, headers=[("range", "bytes=-5")]).body == data[-5:]
    r = call(app, "GET", "/%s/r" % PLAIN, headers=[("range", "bytes=%d-" % len(data))])
    assert r.status == 416 and code_of(r) == "InvalidRange"
    assert all(reader.closed for reader in ks.readers)


def test_conditional_get():
    app, _ = make_app()
    etag = call(app, "PUT", "/%s/c" % PLAIN, b"x").headers["etag"]
    assert call(app, "GET", "/%s/c" % PLAIN, headers=[("if-none-match", etag)]).status == 304
    r = call(app, "GET", "/%s/c" % PLAIN, headers=[("if-match", '"other"')])
    assert r.status == 412 and code_of(r) == "PreconditionFailed"
    past = "Sat, 01 Jan 2000 00:00:00 GMT"
    assert call(app, "GET", "/%s/c" % PLAIN, headers=[("if-unmodified-since", past)]).status \
        == 412
    future = "Fri, 01 Jan 2100 00:00:00 GMT"
    assert call(app, "GET", "/%s/c" % PLAIN, headers=[("if-modified-since", future)]).status \
        == 304
    assert call(app, "GET", "/%s/c" % PLAIN, headers=[("if-modified-since", past)]).status \
        == 200


def test_stalled_body_times_out_and_stores_nothing():
    app, ks = make_app(idle_timeout=0.2)
    r = call(app, "PUT", "/%s/s" % PLAIN, pieces=[b"partial"], stall=True)
    assert r.status == 400 and code_of(r) == "RequestTimeout"
    assert "s" not in ks.buckets[PLAIN]


# -- listings, deletes, XML --------------------------------------------------------------------
def test_listings_v1_v2_and_url_encoding():
    app, _ = make_app()
    for k in ("a", "b/1", "b/2", "c d", "e"):
        call(app, "PUT", "/%s/%s" % (PLAIN, k.replace(" ", "%20")), b"x")
    r = call(app, "GET", "/" + PLAIN, query=b"delimiter=/&encoding-type=url")
    assert b"<Prefix>b/</Prefix>" in r.body and b"<Key>c%20d</Key>" in r.body
    keys, token = [], None
    while True:
        q = b"list-type=2&max-keys=2" + (b"&continuation-token=" + token.encode()
                                         if token else b"")
        doc = xmlout.xmldoc.parse(call(app, "GET", "/" + PLAIN, query=q).body, "ListBucketResult")
        keys += [c.find("Key").text for c in doc.findall("Contents")]
        if doc.find("IsTruncated").text != "true":
            break
        token = doc.find("NextContinuationToken").text
    assert keys == ["a", "b/1", "b/2", "c d", "e"]
    doc = xmlout.xmldoc.parse(call(app, "GET", "/" + PLAIN, query=b"max-keys=2").body,
                              "ListBucketResult")
    assert doc.find("NextMarker").text == "b/1"
    assert code_of(call(app, "GET", "/" + PLAIN, query=b"max-keys=x")) == "InvalidArgument"
    assert code_of(call(app, "GET", "/" + PLAIN, query=b"encoding-type=gz")) == "InvalidArgument"


def test_multi_delete_quiet_and_malformed():
    app, ks = make_app()
    for k in ("a", "b"):
        call(app, "PUT", "/%s/%s" % (PLAIN, k), b"x")
    doc = b"<Delete xmlns='http://s3.amazonaws.com/doc/2006-03-01/'><Quiet>true</Quiet>" \
          b"<Object><Key>a</Key></Object><Object><Key>zz</Key></Object></Delete>"
    r = call(app, "POST", "/" + PLAIN, doc, query=b"delete")
    assert r.status == 200 and b"<Deleted>" not in r.body and "a" not in ks.buckets[PLAIN]
    for bad in (b"<Delete><Object>", b"<!DOCTYPE d [<!ENTITY x 'y'>]><Delete/>", b"<Other/>"):
        r = call(app, "POST", "/" + PLAIN, bad, query=b"delete")
        assert r.status == 400 and code_of(r) == "MalformedXML"
    app, _ = make_app(max_xml_bytes=1000)
    r = call(app, "POST", "/" + PLAIN, b"<Delete>" + b" " * 2000 + b"</Delete>", query=b"delete")
    assert code_of(r) == "MalformedXML"


def test_core_errors_keep_their_code_and_unexpected_ones_are_500(caplog):
    class Broken(MemoryKeySpace):
        async def head_object(self, bucket, key, *, pull=False):
            self.bucket(bucket)
            raise RuntimeError("boom")

    app, _ = make_app(Broken())
    assert code_of(call(app, "GET", "/nosuch-%s/k" % APPID)) == "NoSuchBucket"
    r = call(app, "HEAD", "/%s/k" % PLAIN)
    assert r.status == 500 and r.body == b""
    assert "boom" in caplog.text


def test_lifespan():
    app, _ = make_app()
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(m):
        sent.append(m["type"])

    trio.run(app, {"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- the api: section of the configuration -----------------------------------------------------
BASE = {"store": "./data", "keys": "./keys", "appid": APPID,
        "regions": ["ap-guangzhou", "ap-shanghai"]}


def load_api(tmp_path, api):
    return config.from_dict(dict(BASE, api=api), base_dir=tmp_path, source="m.yaml").api


def test_api_defaults(tmp_path):
    cfg = config.from_dict(dict(BASE), base_dir=tmp_path)
    assert not cfg.api.enabled and cfg.api.listen == "127.0.0.1:8360"
    assert cfg.api.endpoints == ("cos.ap-guangzhou.myqcloud.com", "cos.ap-shanghai.myqcloud.com")
    assert cfg.api.credentials == tmp_path / "data" / "credentials"
    api = load_api(tmp_path, {"enabled": True, "listen": "[::1]:0", "idle_timeout": 2,
                              "endpoints": ["Example.COM"], "max_xml_bytes": "1MiB"})
    assert api.enabled and api.host == "::1" and api.port == 0 and api.listen == "[::1]:0"
    assert api.endpoints == ("example.com",) and api.idle_timeout == 2.0
    assert api.max_xml_bytes == 1 << 20


@pytest.mark.parametrize("api, message", [
    ({"listen": "0.0.0.0:8360"}, "api.listen: 0.0.0.0 is not a loopback address"),
    ({"listen": "8360"}, "api.listen: expected host:port"),
    ({"tls_cert": "c.pem"}, "api.tls_key: tls_cert and tls_key go together"),
    ({"idle_timeout": 0}, "api.idle_timeout: expected a number of seconds"),
    ({"max_header_bytes": "1K"}, "api.max_header_bytes: expected a size from 4KiB"),
    ({"endpoints": ["bad host"]}, "api.endpoints[0]: expected a host name"),
    ({"enabled": "yes"}, "api.enabled: expected true or false"),
    ({"listn": "x"}, "api.listn: unknown key (did you mean 'listen'?)"),
    ("on", "api: expected a mapping of API settings"),
])
def test_api_errors(tmp_path, api, message):
    with pytest.raises(errors.ConfigError) as info:
        load_api(tmp_path, api)
    assert message in str(info.value)


def test_api_remote_needs_allow_remote(tmp_path):
    api = load_api(tmp_path, {"listen": "0.0.0.0:8360", "allow_remote": True,
                              "tls_cert": "c.pem", "tls_key": "k.pem"})
    assert api.host == "0.0.0.0" and api.tls_cert == tmp_path / "c.pem"


# -- what the composition root plugs in ------------------------------------------------------
def test_answers_wait_for_before_answer():
    """The mount's entry invalidations finish before the client hears of its change."""
    events = []

    async def before_answer():
        events.append("settled")

    app, ks = make_app(before_answer=before_answer)
    r = call(app, "PUT", "/%s/waited" % PLAIN, body=b"x")
    assert r.status == 200 and events == ["settled"]
    assert call(app, "GET", "/%s/nothing-here" % PLAIN).status == 404
    assert events == ["settled", "settled"]  # errors too


def test_oversize_request_head_is_refused_before_anything():
    app, ks = make_app(max_header_bytes=4096)
    r = call(app, "PUT", "/%s/big-head" % PLAIN, body=b"x", headers=[("x-big", "a" * 5000)])
    assert r.status == 431 and code_of(r) == "RequestHeaderSectionTooLarge"
    assert call(app, "GET", "/%s/big-head" % PLAIN).status == 404
    assert call(app, "GET", "/", headers=[("x-small", "a" * 1000)]).status == 200


def test_standard_headers_go_out_as_cos_spells_them():
    from cosfs.api.app import _wire_name
    assert _wire_name("etag") == b"ETag"
    assert _wire_name("content-length") == b"Content-Length"
    assert _wire_name("last-modified") == b"Last-Modified"
    assert _wire_name("x-cos-server-side-encryption") == b"x-cos-server-side-encryption"


def test_requests_are_counted_by_operation_and_status():
    from cosfs import metrics

    def count(op, status):
        return metrics.value("cosfs_api_requests_total", operation=op, status=str(status))

    app, _ = make_app()
    before = (count("put_object", 200), count("get_object", 404), count("none", 403))
    call(app, "PUT", "/%s/m.txt" % PLAIN, b"x")
    call(app, "GET", "/%s/missing" % PLAIN)
    call(app, "GET", "/%s/x" % PLAIN, anonymous=True)
    assert (count("put_object", 200), count("get_object", 404), count("none", 403)) == \
        tuple(n + 1 for n in before)


def test_hypercorn_reads_large_pieces():
    """The socket read size is set through a hypercorn module value (it has no setting):
    an upgrade of hypercorn that drops it must be noticed here, not in a benchmark."""
    from hypercorn.trio import tcp_server

    from cosfs.api import server
    server._tune_hypercorn()
    assert tcp_server.MAX_RECV == server.RECV_SIZE
