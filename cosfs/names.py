"""Naming rules of COS: bucket names, regions and object keys.

Pure functions, no I/O, no state; safe on any thread. Every check raises a
:mod:`cosfs.errors` class whose message says which rule was broken, so the
filesystem can log it and the command line can print it as is. Messages
quote the offending value in shortened form only.

Choices beyond the COS documentation (see ``docs/config.md`` and
``/work/shared/cos-reference.md``):

* the endpoint length rule (``<bucket>.cos.<region>.myqcloud.com`` at most
  60 characters) is only applied when the region is known;
* object keys must also map onto a path: no NUL byte, no leading ``/``, no
  empty, ``.`` or ``..`` component. A single trailing ``/`` is allowed because
  an empty directory is kept as a ``dir/`` marker object.
"""

import logging
import re

from . import errors

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 850
MAX_ENDPOINT_CHARS = 60

_BUCKET_PART = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_APPID = re.compile(r"[0-9]+\Z")
_REGION = re.compile(r"[a-z]{2}-[a-z]+(?:-[0-9]+)?(?:-fsi)?\Z")
# CAN, EM, SUB, ESC are refused by COS; NUL cannot occur in a path name.
_FORBIDDEN_KEY_BYTES = re.compile(rb"[\x00\x18-\x1b]")


def short(value, limit=40):
    """``repr`` of *value* cut to about *limit* characters, for error messages."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def endpoint(bucket, region):
    """The COS endpoint host name of *bucket* in *region* (no validation)."""
    return f"{bucket}.cos.{region}.myqcloud.com"


def split_bucket(name):
    """Split ``"my-data-1250000000"`` into ``("my-data", "1250000000")``.

    The APPID is whatever follows the last ``-``; nothing else is checked.
    Raises :class:`errors.InvalidBucketName` when there is no ``-`` at all.
    """
    if not isinstance(name, str):
        raise errors.InvalidBucketName(f"bucket name must be text, not {type(name).__name__}")
    short_name, sep, appid = name.rpartition("-")
    if not sep:
        raise errors.InvalidBucketName(
            f"bucket name {short(name)} has no -APPID suffix (expected <name>-<APPID>)"
        )
    return short_name, appid


def validate_bucket_name(name, region=None, appid=None):
    """Check a full bucket name ``<name>-<APPID>`` against the COS rules.

    * ``<name>`` is made of ``a-z``, ``0-9`` and ``-`` and neither starts nor
      ends with ``-``; ``<APPID>`` is ASCII digits;
    * with *appid*, the suffix must equal it;
    * with *region*, the endpoint ``<bucket>.cos.<region>.myqcloud.com`` must
      be at most 60 characters (:class:`errors.BucketNameTooLong`).

    Returns None; raises :class:`errors.InvalidBucketName` naming the rule.
    """
    short_name, appid_part = split_bucket(name)
    if not short_name:
        raise errors.InvalidBucketName(f"bucket name {short(name)} has an empty name before -APPID")
    if not _APPID.match(appid_part):
        raise errors.InvalidBucketName(
            f"bucket name {short(name)}: APPID suffix must be digits, found {short(appid_part)}"
        )
    if not _BUCKET_PART.match(short_name):
        raise errors.InvalidBucketName(
            f"bucket name {short(name)}: name part may contain only a-z, 0-9 and '-' "
            "and must not start or end with '-'"
        )
    if appid is not None and appid_part != str(appid):
        raise errors.InvalidBucketName(
            f"bucket name {short(name)}: APPID suffix {short(appid_part)} does not match "
            f"the configured APPID {short(str(appid))}"
        )
    if region is not None:
        host = endpoint(name, region)
        if len(host) > MAX_ENDPOINT_CHARS:
            raise errors.BucketNameTooLong(
                f"bucket name {short(name)} is too long for region {region}: endpoint "
                f"is {len(host)} characters, at most {MAX_ENDPOINT_CHARS} allowed"
            )


def validate_appid(appid):
    """Check an APPID: a non-empty string of ASCII digits. Raises :class:`errors.InvalidArgument`."""
    if not isinstance(appid, str) or not _APPID.match(appid):
        raise errors.InvalidArgument(f"APPID must be digits, found {short(appid)}")


def validate_region(region):
    """Check a region name such as ``ap-guangzhou``, ``ap-beijing-1`` or ``ap-shanghai-fsi``.

    Only the shape is checked (two-letter area, ``-``, lower-case city, optional
    ``-<digits>`` zone, optional ``-fsi``); whether the region is allowed is
    the configuration's business. Raises :class:`errors.InvalidArgument`.
    """
    if not isinstance(region, str) or not _REGION.match(region):
        raise errors.InvalidArgument(
            f"invalid region {short(region)}: expected a name like ap-guangzhou"
        )


def validate_key(key):
    """Check an object key (its path inside the bucket, as bytes).

    Rules, checked in this order:

    * non-empty, valid UTF-8 (:class:`errors.InvalidObjectName`);
    * at most :data:`MAX_KEY_BYTES` bytes (:class:`errors.KeyTooLong`);
    * none of the bytes NUL, 0x18-0x1B (:class:`errors.InvalidObjectName`);
    * ``/``-separated components that are non-empty and not ``.`` or ``..``;
      one trailing ``/`` (a directory marker) is allowed.

    Returns None.
    """
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise errors.InvalidObjectName(f"object key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if not key:
        raise errors.InvalidObjectName("object key is empty")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidObjectName(f"object key {short(key)} is not valid UTF-8") from None
    if len(key) > MAX_KEY_BYTES:
        raise errors.KeyTooLong(
            f"object key is {len(key)} bytes long, at most {MAX_KEY_BYTES} allowed"
        )
    bad = _FORBIDDEN_KEY_BYTES.search(key)
    if bad:
        raise errors.InvalidObjectName(
            f"object key {short(key)} contains the forbidden byte 0x{bad.group()[0]:02x}"
        )
    body = key[:-1] if key.endswith(b"/") else key
    for part in body.split(b"/"):
        if part in (b"", b".", b".."):
            raise errors.InvalidObjectName(
                f"object key {short(key)} has an empty, '.' or '..' path component"
            )
