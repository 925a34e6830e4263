"""Tier 0: request authentication of the XML API (cosfs.api.auth).

Every signature here is made by a real SDK: botocore (boto3's signer, through
an S3 client whose requests are captured before they reach the network) and
cos-python-sdk-v5 (through a CosS3Client whose HTTP session answers locally).
The verifier must accept them untouched and refuse every tampering with the
right COS error code.
"""

import time
import urllib.parse

import botocore.session
import pytest
import requests
from botocore.config import Config as BotoConfig
from qcloud_cos import CosConfig, CosS3Client

from cosfs.api import auth
from cosfs.credentials import Credential, Credentials
from cosfs.errors import (AccessDenied, InvalidAccessKeyId, MalformedAuth, RequestTimeTooSkewed,
                          SignatureDoesNotMatch)

FULL = Credential("AKID" + "F" * 32, "fullsecretkey0123456789abcdefghijklmnopq", "full", None,
                  "2025-01-01T00:00:00Z")
RO = Credential("AKID" + "R" * 32, "readonlysecret0123456789abcdefghijklmnop", "read-only",
                ("photos-1250000000",), "2025-01-01T00:00:00Z")
STORE = Credentials([FULL, RO])
BUCKET = "photos-1250000000"
REGION = "ap-guangzhou"
SECRETS = (FULL.secret_key, RO.secret_key)


class Req:
    """A captured request: what the HTTP app would hand to authenticate()."""

    def __init__(self, method, url, headers, body=b""):
        u = urllib.parse.urlsplit(url)
        self.method, self.path, self.query = method, u.path, u.query
        self.headers = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in headers.items()]
        if not any(k.lower() == "host" for k, _ in self.headers):
            self.headers.append(("Host", u.netloc))
        self.body = body

    def auth(self, clock=time.time, method=None, path=None, query=None, headers=None):
        return auth.authenticate(STORE, method or self.method,
                                 self.path if path is None else path,
                                 self.query if query is None else query,
                                 self.headers if headers is None else headers, clock=clock)

    def with_header(self, name, value):
        out = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        return out + [(name, value)]


def refused(exc_type, code, fn, *args, **kw):
    with pytest.raises(exc_type) as info:
        fn(*args, **kw)
    assert info.value.code == code, info.value
    for secret in SECRETS:
        assert secret not in str(info.value)
    return info.value


# -- botocore ---------------------------------------------------------------------------
class _Sent(Exception):
    pass


def s3(cred=FULL, endpoint="http://127.0.0.1:8360", **config):
    client = botocore.session.Session().create_client(
        "s3", region_name=REGION, endpoint_url=endpoint, aws_access_key_id=cred.secret_id,
        aws_secret_access_key=cred.secret_key,
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          **config))
    return client


def capture(client, op, **params):
    """The request ``client.op(**params)`` would send, as a :class:`Req`."""
    seen = []

    def handler(request, **_):
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        seen.append(Req(request.method, request.url, dict(request.headers), body or b""))
        raise _Sent()
    client.meta.events.register("before-send.s3.*", handler)
    try:
        with pytest.raises(_Sent):
            getattr(client, op)(**params)
    finally:
        client.meta.events.unregister("before-send.s3.*", handler)
    return seen[0]


def test_boto3_put_over_http_signs_the_payload():
    req = capture(s3(), "put_object", Bucket=BUCKET, Key="dir/a b+c!.txt", Body=b"hello",
                  Metadata={"color": "blue"}, ContentType="text/plain")
    res = req.auth()
    assert res.credential is FULL and res.scheme == "sigv4-header" and res.family == "amz"
    assert len(res.payload) == 64
    dec = res.body_decoder()
    assert dec.feed(b"hel") + dec.feed(b"lo") == b"hello"
    dec.finish()
    dec = res.body_decoder()
    dec.feed(b"HELLO")
    refused(Exception, "XAmzContentSHA256Mismatch", dec.finish)


def test_boto3_header_checksum_is_checked():
    req = capture(s3(), "put_object", Bucket=BUCKET, Key="k", Body=b"data",
                  ChecksumAlgorithm="SHA256")
    res = req.auth()
    assert any(k.lower() == "x-amz-checksum-sha256" for k, _ in req.headers)
    dec = res.body_decoder()
    dec.feed(b"data")
    dec.finish()


@pytest.mark.parametrize("op,params", [
    ("get_object", {"Bucket": BUCKET, "Key": "x/y z.bin", "Range": "bytes=0-9"}),
    ("list_objects_v2", {"Bucket": BUCKET, "Prefix": "a b/", "Delimiter": "/",
                         "StartAfter": "a b/ä"}),
    ("list_buckets", {}),
    ("delete_objects", {"Bucket": BUCKET, "Delete": {"Objects": [{"Key": "a"}]}}),
    ("put_bucket_encryption", {"Bucket": BUCKET, "ServerSideEncryptionConfiguration": {
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}}),
])
def test_boto3_requests_verify(op, params):
    req = capture(s3(), op, **params)
    assert req.auth().credential is FULL


def test_boto3_https_uses_unsigned_streaming_trailer():
    req = capture(s3(endpoint="https://127.0.0.1:8360"), "put_object", Bucket=BUCKET, Key="k",
                  Body=b"x" * 3000)
    res = req.auth()
    assert res.payload == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    dec = res.body_decoder()
    assert dec.feed(req.body) == b"x" * 3000
    dec.finish()


@pytest.fixture
def put_req():
    return capture(s3(), "put_object", Bucket=BUCKET, Key="dir/obj", Body=b"hello",
                   Metadata={"color": "blue"})


def test_boto3_tampering_is_refused(put_req):
    r = put_req
    mismatch = (SignatureDoesNotMatch, "SignatureDoesNotMatch")
    refused(*mismatch, r.auth, method="POST")
    refused(*mismatch, r.auth, path="/photos-1250000000/dir/obj2")
    refused(*mismatch, r.auth, path="/other-1250000000/dir/obj")
    refused(*mismatch, r.auth, query="acl")
    refused(*mismatch, r.auth, headers=r.with_header("x-amz-meta-color", "red"))
    refused(*mismatch, r.auth, headers=r.with_header("Host", "evil:8360"))
    date = dict((k.lower(), v) for k, v in r.headers)["x-amz-date"]
    later = date[:-3] + "%02dZ" % ((int(date[-3:-1]) + 1) % 60)
    refused(*mismatch, r.auth, headers=r.with_header("X-Amz-Date", later))
    other = [(k, v.replace(FULL.secret_id, RO.secret_id) if k.lower() == "authorization" else v)
             for k, v in r.headers]
    refused(*mismatch, r.auth, headers=other)  # a real id, the wrong key
    unknown = [(k, v.replace(FULL.secret_id, "AKID" + "X" * 32)
                if k.lower() == "authorization" else v) for k, v in r.headers]
    refused(InvalidAccessKeyId, "InvalidAccessKeyId", r.auth, headers=unknown)
    refused(RequestTimeTooSkewed, "RequestTimeTooSkewed", r.auth,
            clock=lambda: time.time() + 16 * 60)
    refused(RequestTimeTooSkewed, "RequestTimeTooSkewed", r.auth,
            clock=lambda: time.time() - 16 * 60)
    # a header nobody signed may change; an unsigned x-amz-* header may not appear
    assert r.auth(headers=r.with_header("User-Agent", "something else")).credential is FULL
    refused(AccessDenied, "AccessDenied", r.auth,
            headers=r.with_header("x-amz-server-side-encryption", "AES256"))


def test_boto3_wrong_secret_key():
    wrong = Credential(FULL.secret_id, "0" * 40)
    req = capture(s3(cred=wrong), "get_object", Bucket=BUCKET, Key="k")
    refused(SignatureDoesNotMatch, "SignatureDoesNotMatch", req.auth)


def test_boto3_presigned_urls():
    client = s3()
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                        "Key": "a b/ü.txt"}, ExpiresIn=600)
    u = urllib.parse.urlsplit(url)
    headers = [("Host", u.netloc), ("User-Agent", "curl")]
    res = auth.authenticate(STORE, "GET", u.path, u.query, headers)
    assert res.scheme == "sigv4-query" and res.payload == "UNSIGNED-PAYLOAD"
    pairs = urllib.parse.parse_qsl(u.query, keep_blank_values=True)
    assert auth.authenticate(STORE, "GET", u.path, pairs, headers).credential is FULL

    def check(exc, code, method="GET", path=u.path, query=u.query, clock=time.time):
        refused(exc, code, auth.authenticate, STORE, method, path, query, headers, clock=clock)
    check(AccessDenied, "AccessDenied", clock=lambda: time.time() + 601)
    check(SignatureDoesNotMatch, "SignatureDoesNotMatch", method="PUT")
    check(SignatureDoesNotMatch, "SignatureDoesNotMatch", path=u.path + "x")
    check(SignatureDoesNotMatch, "SignatureDoesNotMatch",
          query=u.query.replace("X-Amz-Expires=600", "X-Amz-Expires=6000"))
    check(SignatureDoesNotMatch, "SignatureDoesNotMatch", query=u.query + "&versionId=1")
    check(MalformedAuth, "AuthorizationQueryParametersError",
          query="&".join(p for p in u.query.split("&") if not p.startswith("X-Amz-Date")))
    check(MalformedAuth, "AuthorizationQueryParametersError",
          query=u.query.replace("X-Amz-Expires=600", "X-Amz-Expires=604801"))

    put = client.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "up"},
                                        ExpiresIn=60)
    u = urllib.parse.urlsplit(put)
    assert auth.authenticate(STORE, "PUT", u.path, u.query, headers).credential is FULL


# -- cos-python-sdk-v5 -----------------------------------------------------------------
class _Adapter(requests.adapters.HTTPAdapter):
    """Answers every request with an empty 200 and remembers it."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def send(self, request, **kw):
        body = request.body or b""
        if hasattr(body, "read"):
            body = body.read()
        elif isinstance(body, str):
            body = body.encode()
        self.seen.append(Req(request.method, request.url, dict(request.headers), body))
        resp = requests.Response()
        resp.status_code = 200
        resp.headers.update({"ETag": '"0"', "x-cos-request-id": "test",
                             "Content-Type": "application/xml"})
        resp._content = b""
        resp.url = request.url
        resp.request = request
        return resp


def cos(cred=FULL, ip=True):
    kw = {"IP": "127.0.0.1", "Port": 8360} if ip else {}
    seen = []
    # a private session: the SDK's default one is shared by every client in the process
    session = requests.Session()
    session.mount("http://", _Adapter(seen))
    client = CosS3Client(CosConfig(Region=REGION, SecretId=cred.secret_id,
                                   SecretKey=cred.secret_key, Scheme="http", **kw),
                         session=session)
    return client, seen


def test_cos_sdk_put_object():
    client, seen = cos()
    client.put_object(Bucket=BUCKET, Key="dir/a b+c!é.txt", Body=b"hello",
                      ServerSideEncryption="AES256", Metadata={"x-cos-meta-color": "blue"})
    req = seen[0]
    assert dict((k.lower(), v) for k, v in req.headers)["host"].startswith(BUCKET + ".cos.")
    res = req.auth()
    assert res.credential is FULL and res.scheme == "cos-header" and res.family == "cos"
    dec = res.body_decoder()
    assert dec.feed(req.body) == b"hello"
    dec.finish()


@pytest.mark.parametrize("call", [
    lambda c: c.get_object(Bucket=BUCKET, Key="x/y z.bin", Range="bytes=0-9"),
    lambda c: c.list_objects(Bucket=BUCKET, Prefix="a b/", Delimiter="/", Marker="m"),
    lambda c: c.get_bucket_encryption(Bucket=BUCKET),
    lambda c: c.delete_bucket_encryption(Bucket=BUCKET),
    lambda c: c.head_object(Bucket=BUCKET, Key="k"),
])
def test_cos_sdk_requests_verify(call):
    client, seen = cos()
    try:
        call(client)
    except Exception:
        pass  # the empty answer may not parse; the request was captured
    assert seen[0].auth().credential is FULL


def test_cos_tampering_is_refused():
    client, seen = cos()
    client.put_object(Bucket=BUCKET, Key="obj", Body=b"hello",
                      Metadata={"x-cos-meta-color": "blue"})
    r = seen[0]
    mismatch = (SignatureDoesNotMatch, "SignatureDoesNotMatch")
    refused(*mismatch, r.auth, method="POST")
    refused(*mismatch, r.auth, path="/obj2")
    refused(*mismatch, r.auth, headers=r.with_header("x-cos-meta-color", "red"))
    refused(*mismatch, r.auth, headers=r.with_header("Content-Length", "6"))
    refused(*mismatch, r.auth, headers=r.with_header("Host", "other-1250000000.cos."
                                                              "ap-guangzhou.myqcloud.com"))
    authz = dict((k.lower(), v) for k, v in r.headers)["authorization"]
    refused(InvalidAccessKeyId, "InvalidAccessKeyId", r.auth,
            headers=r.with_header("Authorization", authz.replace(FULL.secret_id, "AKIDnope" * 4)))
    refused(*mismatch, r.auth,
            headers=r.with_header("Authorization", authz.replace(FULL.secret_id, RO.secret_id)))
    start, end = authz.split("q-sign-time=")[1].split("&")[0].split(";")
    longer = authz.replace("%s;%s" % (start, end), "%s;%d" % (start, int(end) + 100000))
    refused(*mismatch, r.auth, headers=r.with_header("Authorization", longer))
    refused(AccessDenied, "AccessDenied", r.auth, clock=lambda: int(end) + 1)
    refused(MalformedAuth, "InvalidArgument", r.auth,
            headers=r.with_header("Authorization", authz.replace("q-signature=", "q-sig=")))
    # a damaged signature value is a wrong signature, whatever its length
    refused(*mismatch, r.auth,
            headers=r.with_header("Authorization", authz.replace("q-signature=", "q-signature=0")))
    # headers the signature does not name may change
    assert r.auth(headers=r.with_header("User-Agent", "other")).credential is FULL
    assert r.auth(headers=r.with_header("Accept", "*/*;q=0.5")).credential is FULL


def test_cos_query_params_are_signed():
    client, seen = cos()
    try:
        client.list_objects(Bucket=BUCKET, Prefix="a/")
    except Exception:
        pass  # the empty answer does not parse; the request was captured
    r = seen[0]
    assert r.auth().credential is FULL
    refused(SignatureDoesNotMatch, "SignatureDoesNotMatch", r.auth,
            query=r.query.replace("prefix=a%2F", "prefix=b%2F"))


def test_cos_wrong_secret_key():
    client, seen = cos(cred=Credential(FULL.secret_id, "z" * 40))
    client.head_object(Bucket=BUCKET, Key="k")
    refused(SignatureDoesNotMatch, "SignatureDoesNotMatch", seen[0].auth)


@pytest.mark.parametrize("ip", [True, False])
def test_cos_presigned_url(ip):
    client, _ = cos(ip=ip)
    url = client.get_presigned_url(Bucket=BUCKET, Key="dir/ü x.txt", Method="GET", Expired=300,
                                   Params={"response-content-type": "text/plain"})
    u = urllib.parse.urlsplit(url)
    headers = [("Host", u.netloc), ("User-Agent", "curl")]
    res = auth.authenticate(STORE, "GET", u.path, u.query, headers)
    assert res.scheme == "cos-query" and res.credential is FULL

    def check(exc, code, method="GET", path=u.path, query=u.query, clock=time.time):
        refused(exc, code, auth.authenticate, STORE, method, path, query, headers, clock=clock)
    check(AccessDenied, "AccessDenied", clock=lambda: time.time() + 400)
    check(SignatureDoesNotMatch, "SignatureDoesNotMatch", method="PUT")
    check(SignatureDoesNotMatch, "SignatureDoesNotMatch", path=u.path + "2")
    check(SignatureDoesNotMatch, "SignatureDoesNotMatch",
          query=u.query.replace("text%2Fplain", "text%2Fhtml"))
    # a parameter the signature does not list is not covered
    assert auth.authenticate(STORE, "GET", u.path, u.query + "&extra=1", headers)


def test_cos_signature_lifetime_is_capped_at_seven_days():
    client, _ = cos(ip=False)
    host = "%s.cos.%s.myqcloud.com" % (BUCKET, REGION)
    week = client.get_auth(Method="GET", Bucket=BUCKET, Key="/k", Expired=7 * 86400)
    assert auth.authenticate(STORE, "GET", "/k", "", [("Host", host), ("Authorization", week)])
    longer = client.get_auth(Method="GET", Bucket=BUCKET, Key="/k", Expired=8 * 86400)
    refused(AccessDenied, "AccessDenied", auth.authenticate, STORE, "GET", "/k", "",
            [("Host", host), ("Authorization", longer)])


def test_cos_get_auth_as_header():
    client, _ = cos(ip=False)
    authz = client.get_auth(Method="DELETE", Bucket=BUCKET, Key="/a/b", Expired=60)
    host = "%s.cos.%s.myqcloud.com" % (BUCKET, REGION)
    res = auth.authenticate(STORE, "DELETE", "/a/b", "", [("Host", host),
                                                         ("Authorization", authz)])
    assert res.credential is FULL
    refused(SignatureDoesNotMatch, "SignatureDoesNotMatch", auth.authenticate, STORE, "DELETE",
            "/a/c", "", [("Host", host), ("Authorization", authz)])


# -- mechanisms and authorization ------------------------------------------------------
def test_anonymous_and_unsupported_mechanisms():
    refused(AccessDenied, "AccessDenied", auth.authenticate, STORE, "GET", "/", "",
            [("Host", "x")])
    refused(AccessDenied, "AccessDenied", auth.authenticate, STORE, "GET", "/", "",
            [("Authorization", "")])
    refused(MalformedAuth, "InvalidRequest", auth.authenticate, STORE, "GET", "/", "",
            [("Authorization", "AWS %s:c2ln" % FULL.secret_id)])
    refused(MalformedAuth, "InvalidRequest", auth.authenticate, STORE, "GET", "/",
            "AWSAccessKeyId=x&Signature=y&Expires=1", [])
    refused(MalformedAuth, "InvalidArgument", auth.authenticate, STORE, "GET", "/",
            "X-Amz-Algorithm=AWS4-HMAC-SHA256", [("Authorization", "q-sign-algorithm=sha1")])
    refused(MalformedAuth, "InvalidArgument", auth.authenticate, STORE, "GET", "/", "",
            [("Authorization", "Bearer abc")])
    refused(MalformedAuth, "AuthorizationHeaderMalformed", auth.authenticate, STORE, "GET", "/",
            "", [("Authorization", "AWS4-HMAC-SHA256 Credential=x"), ("x-amz-date",
                                                                       "20250101T000000Z")])


def test_header_signature_needs_content_sha256(put_req):
    headers = [(k, v) for k, v in put_req.headers if k.lower() != "x-amz-content-sha256"]
    refused(MalformedAuth, "InvalidRequest", put_req.auth, headers=headers)


def test_authorize():
    auth.authorize(FULL, BUCKET, True)
    auth.authorize(FULL, None, False)
    auth.authorize(RO, BUCKET, False)
    auth.authorize(RO, None, False)
    refused(AccessDenied, "AccessDenied", auth.authorize, RO, BUCKET, True)
    refused(AccessDenied, "AccessDenied", auth.authorize, RO, "other-1250000000", False)
    assert auth.is_write("PUT") and auth.is_write("POST") and auth.is_write("DELETE")
    assert not auth.is_write("GET") and not auth.is_write("head")


def test_read_only_key_signs_fine_and_is_stopped_by_authorize():
    req = capture(s3(cred=RO), "put_object", Bucket=BUCKET, Key="k", Body=b"x")
    res = req.auth()
    assert res.credential is RO
    refused(AccessDenied, "AccessDenied", auth.authorize, res.credential, BUCKET,
            auth.is_write(req.method))


def test_result_repr_hides_secrets(put_req):
    res = put_req.auth()
    for secret in SECRETS:
        assert secret not in repr(res) and secret not in repr(res.credential)


# -- headers a signature must cover ------------------------------------------------------
@pytest.mark.parametrize("header", ["x-amz-copy-source", "x-cos-copy-source",
                                    "x-amz-server-side-encryption", "x-cos-meta-color",
                                    "x-amz-metadata-directive"])
def test_presigned_urls_gain_no_unsigned_request_headers(header):
    """Holding a pre-signed PUT must not let anyone turn it into a copy from another bucket,
    nor pick the encryption or metadata: every x-cos-*/x-amz-* header must be signed."""
    client = s3()
    url = client.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "up"},
                                        ExpiresIn=60)
    u = urllib.parse.urlsplit(url)
    base = [("Host", u.netloc)]
    assert auth.authenticate(STORE, "PUT", u.path, u.query, base).credential is FULL
    refused(AccessDenied, "AccessDenied", auth.authenticate, STORE, "PUT", u.path, u.query,
            base + [(header, "secrets-1250000000/db.dump")])
    cclient, _ = cos()
    curl = cclient.get_presigned_url(Bucket=BUCKET, Key="up", Method="PUT", Expired=300)
    cu = urllib.parse.urlsplit(curl)
    cbase = [("Host", cu.netloc)]
    assert auth.authenticate(STORE, "PUT", cu.path, cu.query, cbase).credential is FULL
    refused(AccessDenied, "AccessDenied", auth.authenticate, STORE, "PUT", cu.path, cu.query,
            cbase + [(header, "secrets-1250000000/db.dump")])


def test_cos_signature_must_cover_host():
    client, _ = cos()
    url = client.get_presigned_url(Bucket=BUCKET, Key="k", Method="GET", Expired=300,
                                   SignHost=False)
    u = urllib.parse.urlsplit(url)
    refused(AccessDenied, "AccessDenied", auth.authenticate, STORE, "GET", u.path, u.query,
            [("Host", u.netloc)])
