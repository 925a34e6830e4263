"""Request authentication of the XML API: the COS signature and AWS Signature V4.

Independent of the HTTP framework. The application calls, for every request::

    result = authenticate(credentials, method, raw_path, query, headers)
    authorize(result.credential, bucket, is_write(method))
    decoder = result.body_decoder()          # see cosfs.api.chunked

* ``credentials``: anything with ``lookup(secret_id) -> Credential | None``
  (:class:`cosfs.credentials.CredentialsFile` in the daemon).
* ``raw_path``: the request target's path as received, still percent-encoded,
  without the query (str or bytes).
* ``query``: the query as decoded (name, value) pairs in the order received,
  as ``urllib.parse.parse_qsl(raw, keep_blank_values=True)`` gives them, or
  the raw query string itself (str or bytes), which is parsed that way.
* ``headers``: a mapping or a list of (name, value) pairs; names in any case;
  values as received (bytes, or str decoded as latin-1 as ASGI servers do).
* ``clock``: returns the current time in seconds (``time.time``).

:func:`authenticate` returns an :class:`Authenticated` (the credential, the
scheme, and what the body decoder needs), or raises:

* :class:`cosfs.errors.AccessDenied` (403): no signature (anonymous), an
  expired signature or pre-signed URL, a SigV4 request with ``x-amz-*``
  headers it did not sign;
* :class:`cosfs.errors.InvalidAccessKeyId` (403): unknown SecretId;
* :class:`cosfs.errors.SignatureDoesNotMatch` (403);
* :class:`cosfs.errors.RequestTimeTooSkewed` (403): a SigV4 header signature
  whose ``x-amz-date`` is more than 15 minutes from now;
* :class:`cosfs.errors.MalformedAuth` (400) with code ``InvalidArgument``
  (COS fields, two mechanisms at once), ``AuthorizationHeaderMalformed``
  (SigV4 header), ``AuthorizationQueryParametersError`` (SigV4 query) or
  ``InvalidRequest`` (an unsupported mechanism such as SigV2 or SigV4a).

**The COS signature** (``q-sign-algorithm=sha1&q-ak=...``), in the
``Authorization`` header or as query parameters of a pre-signed URL, as
cos-python-sdk-v5 computes it: the HTTP string is the lower-case method, the
decoded path, then the parameters named in ``q-url-param-list`` and the
headers named in ``q-header-list``, each ``name=value`` with the name
URL-encoded and lower-cased and the value URL-encoded (only ``-_.~`` kept),
sorted, joined by ``&``. SignKey = HMAC-SHA1(SecretKey, q-key-time);
StringToSign = ``sha1\\n<q-sign-time>\\nSHA1(HttpString)\\n``; signature =
HMAC-SHA1(SignKey, StringToSign), hex. Parameters and headers not named are
not covered and may change. ``q-sign-time`` and ``q-key-time`` are
``<start>;<end>`` in Unix seconds: a request after ``end`` is expired; one
more than 15 minutes before ``start`` is not valid yet. The SDK signs the
host name without a port when it takes it from the URL, so a signed ``host``
that has a port is also tried without it.

**AWS Signature V4** (``AWS4-HMAC-SHA256``), in the header or as
``X-Amz-*`` query parameters, in S3's variant: the canonical URI is the
decoded path URI-encoded once (every byte but ``A-Za-z0-9-_.~/``), with no
normalisation of ``.``/``..`` or repeated slashes; any region is accepted,
the service must be ``s3``. The path as sent is accepted too when it
differs (a client that left ``!`` unencoded signed it that way); both decode
to the same key. The payload hash is the
``x-amz-content-sha256`` header (required with the header signature): a hex
digest (checked against the body by the decoder), ``UNSIGNED-PAYLOAD``, or
a streaming mode whose aws-chunked framing, chunk signatures and trailing
checksums :mod:`cosfs.api.chunked` checks. Pre-signed URLs sign
``UNSIGNED-PAYLOAD`` and expire after ``X-Amz-Expires`` (at most 7 days).

Signatures are compared with :func:`hmac.compare_digest`. No secret key
appears in an exception or a log line. Pure computation; no trio.
"""

import calendar
import datetime
import functools
import hashlib
import hmac
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass, field

from ..errors import (AccessDenied, InvalidAccessKeyId, MalformedAuth, RequestTimeTooSkewed,
                      SignatureDoesNotMatch)
from . import chunked

log = logging.getLogger(__name__)

#: largest difference between a SigV4 x-amz-date and the server's clock (S3's rule)
MAX_SKEW = 15 * 60
#: longest validity of a SigV4 pre-signed URL (S3's rule)
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
SIGV4 = "AWS4-HMAC-SHA256"
PAYLOAD_MODES = ("UNSIGNED-PAYLOAD",) + chunked.SIGNED_STREAMING + chunked.UNSIGNED_STREAMING
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_AMZ_DATE = re.compile(r"(\d{8})T(\d{6})Z\Z")
_COS_TIME = re.compile(r"(\d{1,12});(\d{1,12})\Z")
_COS_FIELDS = ("q-sign-algorithm", "q-ak", "q-sign-time", "q-key-time", "q-header-list",
               "q-url-param-list", "q-signature")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Authenticated:
    """A request whose signature is valid.

    ``scheme``: ``cos-header``, ``cos-query``, ``sigv4-header`` or
    ``sigv4-query``; ``family``: ``cos`` or ``amz`` (which header family to
    answer in); ``payload``: the SigV4 payload hash or mode (None for COS).
    """

    credential: object
    scheme: str
    payload: "str | None" = None
    signing: "chunked.ChunkSigning | None" = field(default=None, repr=False)
    headers: dict = field(default_factory=dict, repr=False)

    @property
    def family(self):
        return "cos" if self.scheme.startswith("cos") else "amz"

    def body_decoder(self):
        """A fresh decoder of this request's body (:mod:`cosfs.api.chunked`)."""
        return chunked.body_decoder(self.payload, self.headers, self.signing)


def is_write(method):
    """True for methods that change something (every method but GET, HEAD, OPTIONS)."""
    return method.upper() not in READ_METHODS


def authorize(credential, bucket, write):
    """Raise AccessDenied unless ``credential`` may read (or ``write``) ``bucket``.

    ``bucket`` None is the service itself (GET Service): every key may list;
    the caller shows a bucket-limited key only its buckets.
    """
    if write and credential.read_only:
        raise AccessDenied("the key %s is read-only" % credential.secret_id)
    if bucket is not None and credential.buckets is not None and bucket not in credential.buckets:
        raise AccessDenied("the key %s may not access bucket %s"
                           % (credential.secret_id, bucket[:80]))


# -- input normalisation ---------------------------------------------------------------
def _as_query(query):
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    if isinstance(query, str):
        return urllib.parse.parse_qsl(query, keep_blank_values=True)
    return [(n, v) for n, v in query]


def _header_text(hmap):
    """{name: value as text}: values decoded as latin-1, several joined with commas."""
    return {n: ",".join(v.decode("latin-1") if isinstance(v, bytes) else v for v in vs)
            for n, vs in hmap.items()}


def _path_bytes(raw_path):
    if isinstance(raw_path, str):
        raw_path = raw_path.encode("latin-1", "strict") if raw_path.isascii() else \
            raw_path.encode("utf-8")
    return urllib.parse.unquote_to_bytes(raw_path) or b"/"


def _cos_quote(text):
    return urllib.parse.quote(text.encode("utf-8"), safe="-_.~")


def _aws_quote(text, safe=""):
    return urllib.parse.quote(text.encode("utf-8") if isinstance(text, str) else text,
                              safe=safe)


def _single(pairs, name, error):
    found = [v for n, v in pairs if n == name]
    if len(found) > 1:
        raise error("%s appears more than once" % name)
    return found[0] if found else None


# -- entry point -----------------------------------------------------------------------
def authenticate(credentials, method, raw_path, query, headers, *, clock=time.time):
    """Check the request's signature; return an :class:`Authenticated` or raise."""
    pairs = _as_query(query)
    hmap = chunked.header_map(headers)
    htext = _header_text(hmap)
    authz = htext.get("authorization", "").strip()
    names = {n for n, _ in pairs}
    amz_query = bool(names & {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"})
    cos_query = bool(names & {"q-sign-algorithm", "q-ak", "q-signature"})
    if "Signature" in names and "AWSAccessKeyId" in names:
        raise MalformedAuth("AWS signature version 2 is not supported; use AWS4-HMAC-SHA256",
                            code="InvalidRequest")
    if (authz and (amz_query or cos_query)) or (amz_query and cos_query):
        raise MalformedAuth("only one authentication mechanism is allowed: an Authorization "
                            "header or query parameters")
    now = clock()
    if authz.startswith(SIGV4 + " ") or authz == SIGV4:
        return _sigv4_header(credentials, method, raw_path, pairs, hmap, htext, authz, now)
    if authz.startswith("q-sign-algorithm="):
        fields = dict(_cos_fields(authz))
        return _cos(credentials, method, raw_path, pairs, htext, fields, now, "cos-header")
    if authz.startswith("AWS "):
        raise MalformedAuth("AWS signature version 2 is not supported; use AWS4-HMAC-SHA256",
                            code="InvalidRequest")
    if authz.startswith("AWS4-ECDSA-P256-SHA256"):
        raise MalformedAuth("AWS signature version 4A is not supported; use AWS4-HMAC-SHA256",
                            code="InvalidRequest")
    if authz:
        raise MalformedAuth("the Authorization header is neither a COS signature nor "
                            "AWS4-HMAC-SHA256")
    if amz_query:
        return _sigv4_query(credentials, method, raw_path, pairs, hmap, htext, now)
    if cos_query:
        fields = {}
        for name in _COS_FIELDS:
            value = _single(pairs, name, MalformedAuth)
            if value is not None:
                fields[name] = value
        return _cos(credentials, method, raw_path, pairs, htext, fields, now, "cos-query")
    raise AccessDenied("anonymous requests are not allowed: sign the request")


#: Headers a signature need not cover: checked against the body itself (digests,
#: checksums, lengths) or without effect on what a request does.
_UNSIGNED_OK = {"x-amz-content-sha256", "x-amz-decoded-content-length", "x-amz-trailer",
                "x-amz-sdk-checksum-algorithm", "x-amz-user-agent"}


def _require_signed(htext, signed):
    """AccessDenied if an ``x-cos-*``/``x-amz-*`` header is present that the signature does
    not cover: such headers change what a request does (a copy source, the metadata
    directive, the encryption, metadata), so a pre-signed URL must not gain them."""
    unsigned = sorted(n for n in htext
                      if n.startswith(("x-amz-", "x-cos-")) and n not in signed
                      and n not in _UNSIGNED_OK and not n.startswith("x-amz-checksum-"))
    if unsigned:
        raise AccessDenied("there were headers present in the request which were not signed: "
                           "%s" % ", ".join(unsigned)[:200])


def _lookup(credentials, secret_id):
    cred = credentials.lookup(secret_id)
    if cred is None:
        raise InvalidAccessKeyId("the SecretId %s does not exist" % secret_id[:128])
    return cred


# -- COS -------------------------------------------------------------------------------
def _cos_fields(text):
    fields = []
    for part in text.split("&"):
        name, sep, value = part.partition("=")
        if not sep:
            raise MalformedAuth("malformed COS Authorization field %r" % name[:40])
        fields.append((name.strip(), value.strip()))
    seen = set()
    for name, _ in fields:
        if name in seen:
            raise MalformedAuth("%s appears more than once in the Authorization header"
                                % name[:40])
        seen.add(name)
    return fields


def _cos_time(fields, name):
    m = _COS_TIME.match(fields.get(name, ""))
    if not m:
        raise MalformedAuth("%s must be <start>;<end> in seconds" % name)
    start, end = int(m.group(1)), int(m.group(2))
    if start > end:
        raise MalformedAuth("%s ends before it starts" % name)
    return start, end


def _cos(credentials, method, raw_path, pairs, htext, fields, now, scheme):
    missing = [f for f in _COS_FIELDS if f not in fields]
    if missing:
        raise MalformedAuth("the COS signature lacks %s" % missing[0])
    if fields["q-sign-algorithm"].lower() != "sha1":
        raise MalformedAuth("q-sign-algorithm must be sha1")
    sign_time = _cos_time(fields, "q-sign-time")
    key_time = _cos_time(fields, "q-key-time")
    cred = _lookup(credentials, fields["q-ak"])
    if not re.fullmatch(r"[0-9a-fA-F]{40}", fields["q-signature"]):
        # a damaged signature is a wrong one, whatever its shape (as COS answers)
        raise SignatureDoesNotMatch("the request signature we calculated does not match the "
                                    "signature you provided")

    param_names = {n for n in fields["q-url-param-list"].split(";") if n}
    header_names = {n for n in fields["q-header-list"].split(";") if n}
    if "host" not in header_names:
        # with virtual-hosted addressing the bucket is only in Host: unsigned, a request
        # could be replayed against another bucket
        raise AccessDenied("the COS signature must cover the host header (q-header-list)")
    params = sorted((_cos_quote(n).lower(), _cos_quote(v)) for n, v in pairs
                    if _cos_quote(n).lower() in param_names)
    params_text = "&".join("%s=%s" % p for p in params)
    signed = {}
    for name, value in htext.items():
        qname = _cos_quote(name).lower()
        if qname in header_names:
            signed[qname] = value.strip()
    variants = [signed]
    host = signed.get("host")
    if host is not None and re.search(r":\d+\Z", host) and not host.endswith("]"):
        variants.append(dict(signed, host=host.rsplit(":", 1)[0].lower()))

    sign_key = hmac.new(cred.secret_key.encode(), fields["q-key-time"].encode(),
                        hashlib.sha1).hexdigest()
    path = _path_bytes(raw_path)
    given = fields["q-signature"].lower()
    ok = False
    for hdrs in variants:
        headers_text = "&".join("%s=%s" % (n, _cos_quote(v)) for n, v in sorted(hdrs.items()))
        http_string = b"%s\n%s\n%s\n%s\n" % (method.lower().encode("latin-1"), path,
                                            params_text.encode(), headers_text.encode())
        to_sign = "sha1\n%s\n%s\n" % (fields["q-sign-time"],
                                      hashlib.sha1(http_string).hexdigest())
        expected = hmac.new(sign_key.encode(), to_sign.encode(), hashlib.sha1).hexdigest()
        ok = hmac.compare_digest(expected, given) or ok
    if not ok:
        log.debug("COS signature mismatch for %s (%s): path %r, params %r, headers %s",
                  cred.secret_id, scheme, path, params_text, sorted(signed))
        raise SignatureDoesNotMatch("the request signature we calculated does not match the "
                                    "signature you provided")
    for start, end in (sign_time, key_time):
        if now > end:
            raise AccessDenied("Request has expired")
        if start > now + MAX_SKEW:
            raise AccessDenied("the request signature is not valid yet")
        if end - start > MAX_PRESIGN_EXPIRES + MAX_SKEW:
            # a leaked signature must not stay usable for years: the same cap as SigV4's
            # pre-signed URLs (SDKs start the window a little early: the skew allowance)
            raise AccessDenied("the request signature is valid for more than %d days "
                               "(q-sign-time, q-key-time)" % (MAX_PRESIGN_EXPIRES // 86400))
    _require_signed(htext, header_names)
    return Authenticated(cred, scheme, None, None, {n: [v] for n, v in htext.items()})


# -- SigV4 -----------------------------------------------------------------------------
def _parse_amz_date(text, error):
    m = _AMZ_DATE.match(text or "")
    if not m:
        raise error("the date must look like 20250131T120000Z")
    try:
        fields = (int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]),
                  int(text[11:13]), int(text[13:15]))
        datetime.datetime(*fields)  # a date that exists (ValueError otherwise)
        return calendar.timegm(fields)
    except ValueError:
        raise error("the date %s does not exist" % text[:20]) from None


def _scope(credential_text, amz_date, error):
    parts = credential_text.split("/")
    if len(parts) != 5 or not parts[0]:
        raise error("the credential must be <SecretId>/<date>/<region>/s3/aws4_request")
    secret_id, date, region, service, terminal = parts
    if date != amz_date[:8]:
        raise error("the credential's date %s is not the request's date %s"
                    % (date[:8], amz_date[:8]))
    if not region:
        raise error("the credential has no region")
    if service != "s3":
        raise error("the credential's service must be s3, not %s" % service[:20])
    if terminal != "aws4_request":
        raise error("the credential must end with aws4_request")
    return secret_id, "/".join(parts[1:])


@functools.lru_cache(maxsize=64)
def _signing_key(secret_key, scope):
    """The SigV4 signing key of a secret for a scope (date/region/service/aws4_request);
    kept for the scopes in use (one a day per credential and region), as the secrets
    themselves are kept in memory."""
    date, region, service, terminal = scope.split("/")
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, terminal):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _canonical_uris(raw_path):
    """The canonical URI S3 defines (the decoded path encoded once), then the path as sent
    if that differs: clients sign the path they send, and some leave ``!*'()`` unencoded."""
    uri = _aws_quote(_path_bytes(raw_path), safe="/~")
    sent = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else raw_path
    return [uri] if sent in (uri, "") or not sent.isascii() else [uri, sent]


def _canonical_request(method, uri, pairs, htext, signed_headers, payload, skip=None):
    query = sorted((_aws_quote(n), _aws_quote(v)) for n, v in pairs if n != skip)
    lines = [method.upper(), uri, "&".join("%s=%s" % p for p in query)]
    for name in signed_headers:
        value = " ".join(htext.get(name, "").split())
        lines.append("%s:%s" % (name, value))
    lines += ["", ";".join(signed_headers), payload]
    return "\n".join(lines)


def _verify_v4(cred, scope, amz_date, canonicals, signature):
    """(signing key, signature) if one of ``canonicals`` was signed, else raise."""
    key = _signing_key(cred.secret_key, scope)
    found = None
    for canonical in canonicals:
        to_sign = "\n".join((SIGV4, amz_date, scope,
                             hashlib.sha256(canonical.encode("utf-8")).hexdigest()))
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, signature.lower()):
            found = expected
    if found is None:
        log.debug("SigV4 mismatch for %s; canonical request:\n%s", cred.secret_id,
                  canonicals[0])
        raise SignatureDoesNotMatch("the request signature we calculated does not match the "
                                    "signature you provided")
    return key, found


def _signed_list(text, error):
    names = text.split(";")
    if not text or any(not n or n != n.lower().strip() for n in names):
        raise error("SignedHeaders must be lower-case header names separated by ';'")
    if "host" not in names:
        raise error("SignedHeaders must include host")
    return names


def _payload(htext, required):
    value = htext.get("x-amz-content-sha256")
    if value is None:
        if required:
            raise MalformedAuth("Missing required header for this request: "
                                "x-amz-content-sha256", code="InvalidRequest")
        return "UNSIGNED-PAYLOAD"
    value = value.strip()
    if value in PAYLOAD_MODES:
        return value
    if _HEX64.match(value):
        return value.lower()
    if value.startswith("STREAMING-AWS4-ECDSA"):
        raise MalformedAuth("signature version 4A payloads are not supported",
                            code="InvalidRequest")
    raise MalformedAuth("x-amz-content-sha256 must be UNSIGNED-PAYLOAD, a STREAMING- mode or "
                        "a SHA-256 hex digest")


def _header_error(message):
    return MalformedAuth(message, code="AuthorizationHeaderMalformed")


def _query_error(message):
    return MalformedAuth(message, code="AuthorizationQueryParametersError")


def _sigv4_header(credentials, method, raw_path, pairs, hmap, htext, authz, now):
    parts = {}
    for item in authz[len(SIGV4):].split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name in parts:
            raise _header_error("the Authorization header must hold Credential=, "
                                "SignedHeaders= and Signature= once each")
        parts[name] = value.strip()
    if set(parts) != {"Credential", "SignedHeaders", "Signature"}:
        raise _header_error("the Authorization header must hold Credential=, SignedHeaders= "
                            "and Signature= once each")
    if not _HEX64.match(parts["Signature"]):
        raise _header_error("Signature must be 64 hex digits")
    amz_date = htext.get("x-amz-date", "").strip()
    if not amz_date:
        raise AccessDenied("AWS authentication requires a valid x-amz-date header")
    stamp = _parse_amz_date(amz_date, _header_error)
    secret_id, scope = _scope(parts["Credential"], amz_date, _header_error)
    signed = _signed_list(parts["SignedHeaders"], _header_error)
    payload = _payload(htext, required=True)
    cred = _lookup(credentials, secret_id)
    canonicals = [_canonical_request(method, uri, pairs, htext, signed, payload)
                  for uri in _canonical_uris(raw_path)]
    key, signature = _verify_v4(cred, scope, amz_date, canonicals, parts["Signature"])
    if abs(now - stamp) > MAX_SKEW:
        raise RequestTimeTooSkewed("the difference between the request time and the server's "
                                   "time is too large")
    _require_signed(htext, set(signed))
    return Authenticated(cred, "sigv4-header", payload,
                         chunked.ChunkSigning(key, amz_date, scope, signature), hmap)


def _sigv4_query(credentials, method, raw_path, pairs, hmap, htext, now):
    get = {name: _single(pairs, name, _query_error)
           for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                        "X-Amz-SignedHeaders", "X-Amz-Signature")}
    missing = [n for n, v in get.items() if v is None]
    if missing:
        raise _query_error("Query-string authentication requires the X-Amz-Algorithm, "
                           "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
                           "and X-Amz-Expires parameters (%s is missing)" % missing[0])
    if get["X-Amz-Algorithm"] != SIGV4:
        raise _query_error("X-Amz-Algorithm only supports AWS4-HMAC-SHA256")
    if not _HEX64.match(get["X-Amz-Signature"]):
        raise _query_error("X-Amz-Signature must be 64 hex digits")
    expires = get["X-Amz-Expires"]
    if not expires.isdigit() or len(expires) > 10:
        raise _query_error("X-Amz-Expires must be a whole number of seconds")
    expires = int(expires)
    if expires > MAX_PRESIGN_EXPIRES:
        raise _query_error("X-Amz-Expires must be less than a week (in seconds); that is, the "
                           "given X-Amz-Expires must be less than 604800 seconds")
    amz_date = get["X-Amz-Date"]
    stamp = _parse_amz_date(amz_date, _query_error)
    secret_id, scope = _scope(get["X-Amz-Credential"], amz_date, _query_error)
    signed = _signed_list(get["X-Amz-SignedHeaders"], _query_error)
    payload = _payload(htext, required=False)
    cred = _lookup(credentials, secret_id)
    canonicals = [_canonical_request(method, uri, pairs, htext, signed, payload,
                                     skip="X-Amz-Signature") for uri in _canonical_uris(raw_path)]
    _verify_v4(cred, scope, amz_date, canonicals, get["X-Amz-Signature"])
    if now > stamp + expires:
        raise AccessDenied("Request has expired")
    if stamp > now + MAX_SKEW:
        raise AccessDenied("the request signature is not valid yet")
    _require_signed(htext, set(signed))
    return Authenticated(cred, "sigv4-query", payload, None, hmap)
