"""Tier 0: aws-chunked request bodies and payload checks (cosfs.api.chunked).

Unsigned bodies with trailing checksums are made by botocore's own encoder
(``botocore.httpchecksum.AwsChunkedWrapper``, what boto3 sends by default
over https). Botocore does not produce the signed streaming mode, so those
bodies are framed here following the published algorithm, seeded by a real
botocore SigV4 header signature.
"""

import base64
import hashlib
import hmac
import io
import time
import urllib.parse
import zlib

import crc32c
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.httpchecksum import (AwsChunkedWrapper, Crc32Checksum, Sha1Checksum,
                                   Sha256Checksum)

from cosfs.api import auth, chunked
from cosfs.credentials import Credential, Credentials
from cosfs.errors import BadRequestBody, SignatureDoesNotMatch

CRED = Credential("AKID" + "C" * 32, "chunkedsecret0123456789abcdefghijklmnopq")
STORE = Credentials([CRED])
UNSIGNED = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
ALGORITHMS = {"crc32": Crc32Checksum, "sha1": Sha1Checksum, "sha256": Sha256Checksum}


def botocore_body(payload, algorithm="crc32", chunk_size=None):
    name = "x-amz-checksum-" + algorithm
    wrapper = AwsChunkedWrapper(io.BytesIO(payload), checksum_cls=ALGORITHMS[algorithm],
                                checksum_name=name, chunk_size=chunk_size)
    headers = {"x-amz-trailer": name, "x-amz-decoded-content-length": str(len(payload)),
               "content-encoding": "aws-chunked"}
    return wrapper.read(), headers


def decode(body, headers, payload=UNSIGNED, signing=None, pieces=None):
    dec = chunked.body_decoder(payload, headers, signing)
    out = []
    if pieces is None:
        pieces = [body]
    for piece in pieces:
        out.append(dec.feed(piece))
    dec.finish()
    return b"".join(out)


def splits(body):
    """The body cut in two at every byte boundary."""
    for i in range(len(body) + 1):
        yield [body[:i], body[i:]]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("size,chunk_size", [(0, None), (1, None), (5, 2), (40, 7),
                                             (3000, 1024), (200000, None)])
def test_botocore_bodies_decode(algorithm, size, chunk_size):
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    body, headers = botocore_body(payload, algorithm, chunk_size)
    assert decode(body, headers) == payload
    if size <= 40:
        for pieces in splits(body):
            assert decode(body, headers, pieces=pieces) == payload
        assert decode(body, headers, pieces=[body[i:i + 1] for i in range(len(body))]) == payload


def test_crc32c_trailer():
    payload = b"hello crc32c" * 100
    value = base64.b64encode(crc32c.crc32c(payload).to_bytes(4, "big")).decode()
    body = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32c:%s\r\n\r\n" % (len(payload), payload,
                                                                   value.encode())
    headers = {"x-amz-trailer": "x-amz-checksum-crc32c"}
    assert decode(body, headers) == payload
    bad = body.replace(value.encode(), base64.b64encode(b"\0\0\0\0"))
    _refused("BadDigest", bad, headers)


def test_unsupported_checksum_is_refused_before_data():
    with pytest.raises(BadRequestBody) as info:
        chunked.body_decoder(UNSIGNED, {"x-amz-trailer": "x-amz-checksum-crc64nvme"})
    assert info.value.code == "InvalidRequest" and "crc64nvme" in str(info.value)
    with pytest.raises(BadRequestBody):
        chunked.body_decoder(UNSIGNED, {})  # the trailer must be announced


def _refused(code, body, headers, payload=UNSIGNED, signing=None, pieces=None,
             exc=BadRequestBody):
    with pytest.raises(exc) as info:
        decode(body, headers, payload, signing, pieces)
    assert info.value.code == code, info.value
    return info.value


def test_wrong_checksum():
    body, headers = botocore_body(b"payload" * 50, "crc32", 64)
    good = base64.b64encode(zlib.crc32(b"payload" * 50).to_bytes(4, "big"))
    assert good in body
    bad = body.replace(good, base64.b64encode(zlib.crc32(b"other").to_bytes(4, "big")))
    _refused("BadDigest", bad, headers)
    # the data changed, the trailer did not
    flipped = body.replace(b"payload", b"paYload", 1)
    _refused("BadDigest", flipped, headers)
    for pieces in splits(flipped[:80]):
        dec = chunked.body_decoder(UNSIGNED, headers)
        for p in pieces:
            dec.feed(p)
    _refused("InvalidRequest", body.replace(good, b"not base64!"), headers)


def test_truncated_body():
    body, headers = botocore_body(b"0123456789" * 3, "sha256", 8)
    for cut in range(len(body)):
        with pytest.raises(BadRequestBody) as info:
            decode(body[:cut], headers)
        assert info.value.code in ("IncompleteBody", "InvalidRequest")
    with pytest.raises(BadRequestBody) as info:
        decode(body[:-2], headers)
    assert info.value.code == "IncompleteBody"


def test_framing_errors():
    body, headers = botocore_body(b"abcdef", "crc32", 3)
    _refused("InvalidRequest", body + b"x", headers)                       # data after the end
    _refused("InvalidRequest", body.replace(b"3\r\nabc\r\n", b"3\r\nabcd\r\n"), headers)
    _refused("InvalidRequest", body.replace(b"3\r\n", b"zz\r\n", 1), headers)
    _refused("InvalidRequest", body.replace(b"3\r\n", b"3\n", 1), headers)
    _refused("InvalidRequest", body.replace(b"3\r\n", b"3;ext=1\r\n", 1), headers)
    _refused("InvalidRequest", body.replace(b"x-amz-checksum-crc32:", b"x-amz-meta-a:"), headers)
    _refused("InvalidRequest", b"3" * 5000 + b"\r\n", headers)             # oversize header
    _refused("InvalidRequest", b"1" * 17 + b"\r\n", headers)               # size overflow
    long_trailer = body[:-2] + b"x-amz-checksum-crc32:" + b"A" * 2000 + b"\r\n\r\n"
    _refused("InvalidRequest", long_trailer, headers)


def test_oversize_header_is_refused_without_buffering():
    dec = chunked.body_decoder(UNSIGNED, {"x-amz-trailer": "x-amz-checksum-crc32"})
    dec.feed(b"a" * (chunked.MAX_LINE - 1))
    with pytest.raises(BadRequestBody):
        dec.feed(b"a" * 10)


def test_decoded_content_length_is_checked():
    body, headers = botocore_body(b"abcdef", "crc32", 4)
    _refused("IncompleteBody", body, dict(headers, **{"x-amz-decoded-content-length": "7"}))
    _refused("InvalidRequest", body, dict(headers, **{"x-amz-decoded-content-length": "5"}))
    _refused("InvalidRequest", body, dict(headers, **{"x-amz-decoded-content-length": "-1"}))


# -- signed streaming ------------------------------------------------------------------
def _hmac(key, text):
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signed_body(payload, key, amz_date, scope, seed, chunk_size=4, trailer=None):
    """aws-chunked with chunk signatures (and a signed trailer) per the published algorithm."""
    empty = hashlib.sha256(b"").hexdigest()
    prev, out = seed, []
    pieces = [payload[i:i + chunk_size] for i in range(0, len(payload), chunk_size)] + [b""]
    for piece in pieces:
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, empty,
                         hashlib.sha256(piece).hexdigest()])
        prev = _hmac(key, sts)
        out.append(b"%x;chunk-signature=%s\r\n" % (len(piece), prev.encode()))
        if piece:
            out.append(piece + b"\r\n")
    if trailer:
        name, value = trailer
        line = "%s:%s\n" % (name, value)
        sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, prev,
                         hashlib.sha256(line.encode()).hexdigest()])
        out.append(b"%s:%s\r\nx-amz-trailer-signature:%s\r\n" % (name.encode(), value.encode(),
                                                                  _hmac(key, sts).encode()))
    out.append(b"\r\n")
    return b"".join(out)


def signed_request(payload, mode, trailer=None):
    """A PUT signed by botocore with x-amz-content-sha256 ``mode``; (result, body)."""
    headers = {"content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(payload))}
    if trailer:
        headers["x-amz-trailer"] = trailer[0]
    req = AWSRequest("PUT", "http://127.0.0.1:8360/photos-1250000000/obj", headers=headers)

    class StreamingAuth(S3SigV4Auth):
        def payload(self, request):  # botocore itself never signs a streaming payload
            return mode
    StreamingAuth(BotoCredentials(CRED.secret_id, CRED.secret_key), "s3",
                  "ap-guangzhou").add_auth(req)
    assert req.headers["X-Amz-Content-SHA256"] == mode
    u = urllib.parse.urlsplit(req.url)
    sent = list(req.headers.items()) + [("Host", u.netloc)]
    res = auth.authenticate(STORE, "PUT", u.path, u.query, sent)
    seed = req.headers["Authorization"].rsplit("Signature=", 1)[1]
    assert res.signing.seed == seed
    amz_date = req.headers["X-Amz-Date"]
    scope = "%s/ap-guangzhou/s3/aws4_request" % amz_date[:8]
    key = b"AWS4" + CRED.secret_key.encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return res, sent, (key, amz_date, scope, seed)


def _feed_all(res, body, pieces=None):
    dec = res.body_decoder()
    out = b"".join(dec.feed(p) for p in (pieces or [body]))
    dec.finish()
    return out


def test_signed_chunks():
    payload = b"signed streaming body!"
    res, _, sig = signed_request(payload, SIGNED)
    body = signed_body(payload, *sig, chunk_size=5)
    assert _feed_all(res, body) == payload
    for pieces in splits(body):
        assert _feed_all(res, body, pieces) == payload
    # a wrong signature, data swapped between chunks, a chunk dropped
    bad = body.replace(b"chunk-signature=" + body.split(b"chunk-signature=")[2][:4],
                       b"chunk-signature=0000", 1)
    with pytest.raises(SignatureDoesNotMatch):
        _feed_all(res, bad)
    with pytest.raises(SignatureDoesNotMatch):
        _feed_all(res, body.replace(b"signe", b"SIGNE", 1))
    first_end = body.index(b"\r\n", body.index(b"\r\n") + 2) + 2
    with pytest.raises(SignatureDoesNotMatch):
        _feed_all(res, body[first_end:])
    # a body signed with another seed (another request) is refused
    other = signed_body(payload, sig[0], sig[1], sig[2], "0" * 64, chunk_size=5)
    with pytest.raises(SignatureDoesNotMatch):
        _feed_all(res, other)
    # unsigned framing in a signed mode
    unsigned, _ = botocore_body(payload)
    with pytest.raises(BadRequestBody):
        _feed_all(res, unsigned)


def test_signed_chunks_with_signed_trailer():
    payload = b"trailer signed" * 20
    value = base64.b64encode(hashlib.sha256(payload).digest()).decode()
    trailer = ("x-amz-checksum-sha256", value)
    res, _, sig = signed_request(payload, SIGNED_TRAILER, trailer)
    body = signed_body(payload, *sig, chunk_size=64, trailer=trailer)
    assert _feed_all(res, body) == payload
    wrong = ("x-amz-checksum-sha256", base64.b64encode(b"\0" * 32).decode())
    with pytest.raises(SignatureDoesNotMatch):  # trailer changed, signature kept
        _feed_all(res, body.replace(value.encode(), wrong[1].encode()))
    with pytest.raises(BadRequestBody) as info:  # trailer re-signed, but the wrong checksum
        _feed_all(res, signed_body(payload, *sig, chunk_size=64, trailer=wrong))
    assert info.value.code == "BadDigest"
    no_sig = body[:body.index(b"x-amz-trailer-signature")] + b"\r\n"
    with pytest.raises(BadRequestBody):
        _feed_all(res, no_sig)


def test_signed_mode_needs_header_signature():
    with pytest.raises(BadRequestBody):
        chunked.body_decoder(SIGNED, {})


def test_plain_body_checks():
    dec = chunked.body_decoder(None, {})
    assert dec.feed(b"abc") == b"abc"
    dec.finish()
    digest = hashlib.sha256(b"abc").hexdigest()
    dec = chunked.body_decoder(digest, {"x-amz-checksum-crc32": base64.b64encode(
        zlib.crc32(b"abc").to_bytes(4, "big")).decode()})
    dec.feed(b"ab")
    dec.feed(b"c")
    dec.finish()
    dec = chunked.body_decoder("UNSIGNED-PAYLOAD", {"x-amz-checksum-crc32": "AAAAAA=="})
    dec.feed(b"abc")
    with pytest.raises(BadRequestBody) as info:
        dec.finish()
    assert info.value.code == "BadDigest"


def test_boto3_streaming_put_end_to_end():
    """boto3's default PUT over https, authenticated and decoded in one go."""
    import botocore.session
    from botocore.config import Config
    client = botocore.session.Session().create_client(
        "s3", region_name="ap-guangzhou", endpoint_url="https://127.0.0.1:8360",
        aws_access_key_id=CRED.secret_id, aws_secret_access_key=CRED.secret_key,
        config=Config(s3={"addressing_style": "path"}))
    seen = []

    class Sent(Exception):
        pass

    def handler(request, **_):
        seen.append((request.url, dict(request.headers), request.body.read()))
        raise Sent()
    client.meta.events.register("before-send.s3.*", handler)
    payload = b"\x00\xff" * 70000
    with pytest.raises(Sent):
        client.put_object(Bucket="photos-1250000000", Key="big", Body=payload)
    url, headers, body = seen[0]
    u = urllib.parse.urlsplit(url)
    sent = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in headers.items()]
    res = auth.authenticate(STORE, "PUT", u.path, u.query, sent + [("Host", u.netloc)],
                            clock=time.time)
    assert res.payload == UNSIGNED
    step = 7919
    assert _feed_all(res, body, [body[i:i + step] for i in range(0, len(body), step)]) == payload
