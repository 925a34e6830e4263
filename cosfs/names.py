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
  an empty directory is kept as a ``dir/`` marker object;
* file names are bytes, keys are UTF-8: :func:`name_to_key` and
  :func:`key_to_name` map every name reversibly onto a key (bytes that are not
  UTF-8 become private-use characters, see ``docs/format.md``, "Object keys").
"""

import logging
import re

from . import errors

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 850
MAX_ENDPOINT_CHARS = 60
#: A name's byte B that is not part of valid UTF-8 (0x80..0xFF) is the key character
#: U+F780 + (B - 0x80); U+F780..U+F7FF are reserved for that in the keys of names.
ESCAPE_FIRST = 0xF780
ESCAPE_LAST = 0xF7FF

_BUCKET_PART = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_APPID = re.compile(r"[0-9]+\Z")
_REGION = re.compile(r"[a-z]{2}-[a-z]+(?:-[0-9]+)?(?:-fsi)?\Z")
# CAN, EM, SUB, ESC are refused by COS; NUL cannot occur in a path name.
_FORBIDDEN_KEY_BYTES = re.compile(rb"[\x00\x18-\x1b]")
_RESERVED = re.compile("[\uf780-\uf7ff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Python's "surrogateescape" decodes each byte that is not part of valid UTF-8 (strict:
# no overlong forms, no encoded surrogates, nothing above U+10FFFF) to U+DC80..U+DCFF.
_ESCAPE = {0xDC80 + i: ESCAPE_FIRST + i for i in range(0x80)}
_UNESCAPE = {ESCAPE_FIRST + i: 0xDC80 + i for i in range(0x80)}


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
    """Check an object key (its path inside the bucket, as UTF-8 bytes; the components
    of a path on the mount reach it mapped by :func:`name_to_key`, so the length limit
    counts the mapped key).

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


def name_to_key(name):
    """The key text (str) of a file name given as bytes (a component, or components
    joined with ``/``).

    Contract (pure; no other check is made here, see :func:`validate_key`):

    * a name that is valid UTF-8 maps to its decoded text, unchanged;
    * every byte that is not part of a valid UTF-8 sequence (only 0x80..0xFF can
      be) maps to the character U+F780 + (byte - 0x80), one character per byte;
      valid sequences around it map as above;
    * a name whose valid UTF-8 holds a character of U+F780..U+F7FF raises
      :class:`errors.InvalidObjectName`: those characters stand for escaped
      bytes, and passing them through would give two names the same key;
    * so the mapping is one-to-one and ``key_to_name(name_to_key(n)) == n``;
      the result always encodes as UTF-8, where an escaped byte takes 3 bytes.
    """
    name = bytes(name)
    if name.isascii():
        return name.decode("ascii")
    text = name.decode("utf-8", "surrogateescape")
    reserved = _RESERVED.search(text)
    if reserved:
        raise errors.InvalidObjectName(
            f"name {short(name)} contains the character U+{ord(reserved.group()):04X}: "
            f"U+{ESCAPE_FIRST:04X}..U+{ESCAPE_LAST:04X} are reserved for bytes that are not UTF-8"
        )
    return text.translate(_ESCAPE)


def key_to_name(key):
    """The file name (bytes) of key text made by :func:`name_to_key`: its inverse.

    Contract (pure):

    * each character U+F780..U+F7FF becomes the byte 0x80 + (char - U+F780);
      every other character becomes its UTF-8 encoding;
    * ``name_to_key(key_to_name(k)) == k`` for every key it accepts;
    * key text that no name maps to raises :class:`errors.InvalidObjectName`:
      text with surrogates (not UTF-8), or escaped bytes that together spell
      valid UTF-8 (the name with those bytes maps to the unescaped text).
    """
    if key.isascii():
        return key.encode("ascii")
    if _SURROGATE.search(key):
        raise errors.InvalidObjectName(f"key {short(key)} is not valid UTF-8 text")
    if not _RESERVED.search(key):
        return key.encode("utf-8")
    name = key.translate(_UNESCAPE).encode("utf-8", "surrogateescape")
    if name_to_key(name) != key:
        raise errors.InvalidObjectName(
            f"key {short(key)} escapes bytes that form valid UTF-8: no name maps to it"
        )
    return name
