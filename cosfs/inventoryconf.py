"""The bucket inventory document, its schedule and the report formats (pure).

Document (PUT / GET / POST Bucket inventory, the element names COS uses)::

    <InventoryConfiguration>
      <Id>list1</Id>                             [A-Za-z0-9._-], 1 to 64 characters
      <IsEnabled>true</IsEnabled>                true | false (not in a one-off run)
      <Destination>
        <COSBucketDestination>
          <Format>CSV</Format>                   CSV only
          <AccountId>100000000001</AccountId>    optional, digits
          <Bucket>qcs::cos:ap-guangzhou::dest-1250000000</Bucket>
          <Prefix>list1</Prefix>                 optional
          <Encryption><SSE-COS/></Encryption>    optional (SSECOS, the SDK's spelling, too)
        </COSBucketDestination>
      </Destination>
      <Schedule><Frequency>Daily</Frequency></Schedule>   Daily | Weekly (not in a one-off run)
      <Filter><Prefix>logs/</Prefix></Filter>              optional
      <IncludedObjectVersions>Current</IncludedObjectVersions>   All | Current
      <OptionalFields><Field>Size</Field>...</OptionalFields>   optional, see FIELDS
    </InventoryConfiguration>

Structure errors (unknown or repeated elements, text where elements belong,
bad XML) raise :class:`errors.MalformedXML`; a wrong value (Id characters,
Format, Frequency, an unknown or repeated field, a destination that is not
``qcs::cos:<region>::<bucket>``) raises :class:`errors.InvalidArgument` with
a message naming it. Whether the destination bucket exists and shares the
source's region is for the caller to check (:func:`check_destination`).

Also here, pure as well: the schedule (which period a time falls in, when
the next one starts: :func:`period_of`, :func:`next_period_start`,
:func:`is_due`), the report layout (:func:`report_base`,
:func:`manifest_key`), the CSV row of an object (:func:`csv_row`) and the
manifest (:func:`render_manifest`). No I/O, no trio; safe on any thread.
"""

import calendar
import csv
import io
import json
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Optional, Tuple

from . import errors, names, xmldoc

log = logging.getLogger(__name__)

ROOT = "InventoryConfiguration"
MAX_CONFIGS = 1000
ID_MAX = 64
_ID = re.compile(r"[A-Za-z0-9._-]{1,%d}\Z" % ID_MAX)
_DEST = re.compile(r"qcs::cos:([^:]+)::([^:]+)\Z")
_ACCOUNT = re.compile(r"[0-9]{1,32}\Z")
#: the optional fields COS offers (cos-reference.md, "Inventory"), in no particular order
FIELDS = ("Size", "LastModifiedDate", "ETag", "StorageClass", "IsMultipartUploaded",
          "ReplicationStatus")
FREQUENCIES = ("Daily", "Weekly")
VERSIONS = ("All", "Current")
BASE_COLUMNS = ("Appid", "Bucket", "Key")
VERSION_COLUMNS = ("VersionId", "IsLatest", "IsDeleteMarker")
STORAGE_CLASS = "STANDARD"
PREFIX_MAX = 850
_TOP = ("Id", "IsEnabled", "Destination", "Schedule", "Filter", "IncludedObjectVersions",
        "OptionalFields")
_DEST_CHILDREN = ("Format", "AccountId", "Bucket", "Prefix", "Encryption")
_SSE = ("SSE-COS", "SSECOS")
DAY = 86400


@dataclass(frozen=True)
class InventoryConfig:
    """One inventory. ``frequency`` is None for a one-off run (POST); ``prefix`` is the
    Filter prefix ("" for every object); ``dest_prefix`` the destination Prefix ("" for
    none); ``sse_cos``: the report is encrypted SSE-COS whatever the destination's default."""

    id: str
    enabled: bool
    versions: str
    prefix: str
    fields: Tuple[str, ...]
    frequency: Optional[str]
    dest_region: str
    dest_bucket: str
    dest_prefix: str = ""
    account_id: Optional[str] = None
    sse_cos: bool = False

    @property
    def destination(self):
        return "qcs::cos:%s::%s" % (self.dest_region, self.dest_bucket)

    @property
    def columns(self):
        """The report's columns: Appid, Bucket, Key, the version columns with ``All``,
        then the optional fields in the order configured."""
        return BASE_COLUMNS + (VERSION_COLUMNS if self.versions == "All" else ()) + self.fields

    @property
    def file_schema(self):
        return ", ".join(self.columns)


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_id(inventory_id):
    """Raise InvalidArgument unless ``inventory_id`` is 1-64 of ``[A-Za-z0-9._-]``."""
    if not isinstance(inventory_id, str) or not _ID.match(inventory_id):
        raise errors.InvalidArgument(
            "inventory id %s: use 1 to %d of the characters a-z A-Z 0-9 - _ ."
            % (_short(inventory_id), ID_MAX))
    return inventory_id


def _bool(value, what):
    low = value.lower()
    if low not in ("true", "false"):
        raise errors.InvalidArgument("%s must be true or false, found %s" % (what, _short(value)))
    return low == "true"


def parse_destination(text):
    """(region, bucket) of ``qcs::cos:<region>::<bucket>``; InvalidArgument otherwise."""
    m = _DEST.match(text or "")
    if not m:
        raise errors.InvalidArgument("destination bucket %s: expected qcs::cos:<region>::"
                                     "<BucketName-APPID>" % _short(text))
    region, bucket = m.groups()
    try:
        names.validate_region(region)
        names.validate_bucket_name(bucket)
    except errors.CosfsError as exc:
        raise errors.InvalidArgument("destination %s: %s" % (_short(text), exc)) from None
    return region, bucket


def parse_inventory(doc, *, expected_id=None, one_off=False):
    """Parse an ``InventoryConfiguration`` document (bytes or text).

    ``expected_id``: the id the request names (``?id=``, the xattr name); the
    document's ``Id`` must equal it (an absent ``Id`` takes it). ``one_off``: a
    POST run, whose document needs no ``IsEnabled`` and ``Schedule`` (given
    ones are ignored). Returns an :class:`InventoryConfig`.
    """
    root = xmldoc.parse(doc, ROOT)
    xmldoc.check_children(root, _TOP)
    doc_id = xmldoc.text(root, "Id", required=expected_id is None)
    if doc_id is None or (doc_id == "" and expected_id is not None):
        doc_id = expected_id
    check_id(doc_id)
    if expected_id is not None and doc_id != expected_id:
        raise errors.InvalidArgument("the document's Id %s differs from the id %s of the request"
                                     % (_short(doc_id), _short(expected_id)))
    enabled, frequency = True, None
    if not one_off:
        enabled = _bool(xmldoc.text(root, "IsEnabled"), "IsEnabled")
        schedule = xmldoc.find_one(root, "Schedule")
        xmldoc.check_children(schedule, ("Frequency",))
        frequency = xmldoc.text(schedule, "Frequency")
        if frequency not in FREQUENCIES:
            raise errors.InvalidArgument("Schedule/Frequency must be Daily or Weekly, found %s"
                                         % _short(frequency))
    versions = xmldoc.text(root, "IncludedObjectVersions")
    if versions not in VERSIONS:
        raise errors.InvalidArgument("IncludedObjectVersions must be All or Current, found %s"
                                     % _short(versions))
    prefix = ""
    flt = xmldoc.find_one(root, "Filter", required=False)
    if flt is not None:
        xmldoc.check_children(flt, ("Prefix",))
        prefix = xmldoc.text(flt, "Prefix", required=False) or ""
        if len(prefix.encode("utf-8", "surrogatepass")) > PREFIX_MAX:
            raise errors.InvalidArgument("Filter/Prefix is longer than %d bytes" % PREFIX_MAX)
    fields = []
    opt = xmldoc.find_one(root, "OptionalFields", required=False)
    if opt is not None:
        xmldoc.check_children(opt, ("Field",), repeatable=("Field",))
        for leaf in opt.findall("Field"):
            if len(leaf):
                raise errors.MalformedXML("<Field> must hold text, not elements")
            name = (leaf.text or "").strip()
            if name not in FIELDS:
                raise errors.InvalidArgument("unknown optional field %s: known are %s"
                                             % (_short(name), ", ".join(FIELDS)))
            if name in fields:
                raise errors.InvalidArgument("optional field %s is listed twice" % name)
            fields.append(name)
    destination = xmldoc.find_one(root, "Destination")
    xmldoc.check_children(destination, ("COSBucketDestination",))
    dest = xmldoc.find_one(destination, "COSBucketDestination")
    xmldoc.check_children(dest, _DEST_CHILDREN)
    fmt = xmldoc.text(dest, "Format")
    if fmt != "CSV":
        raise errors.InvalidArgument("Format must be CSV, found %s" % _short(fmt))
    account = xmldoc.text(dest, "AccountId", required=False) or None
    if account is not None and not _ACCOUNT.match(account):
        raise errors.InvalidArgument("AccountId must be digits, found %s" % _short(account))
    region, bucket = parse_destination(xmldoc.text(dest, "Bucket"))
    dest_prefix = xmldoc.text(dest, "Prefix", required=False) or ""
    if len(dest_prefix.encode("utf-8", "surrogatepass")) > PREFIX_MAX // 2:
        raise errors.InvalidArgument("Destination Prefix is longer than %d bytes"
                                     % (PREFIX_MAX // 2))
    if dest_prefix.rstrip("/"):
        try:  # the reports' keys start with it
            names.validate_key((dest_prefix.rstrip("/") + "/x").encode("utf-8", "surrogatepass"))
        except errors.CosfsError as exc:
            raise errors.InvalidArgument("Destination Prefix %s cannot start an object key: %s"
                                         % (_short(dest_prefix), exc)) from None
    sse = False
    enc = xmldoc.find_one(dest, "Encryption", required=False)
    if enc is not None:
        xmldoc.check_children(enc, _SSE)
        kinds = [child for child in enc]
        if len(kinds) != 1:
            raise errors.MalformedXML("<Encryption> must hold exactly one <SSE-COS/>")
        if len(kinds[0]) or (kinds[0].text or "").strip():
            raise errors.MalformedXML("<SSE-COS> must be empty")
        sse = True
    return InventoryConfig(id=doc_id, enabled=enabled, versions=versions, prefix=prefix,
                           fields=tuple(fields), frequency=frequency, dest_region=region,
                           dest_bucket=bucket, dest_prefix=dest_prefix, account_id=account,
                           sse_cos=sse)


def check_destination(cfg, source_region, bucket_region):
    """Raise InvalidArgument unless the destination exists (``bucket_region`` is its
    region, None when there is no such bucket) in the source's region, as named."""
    if bucket_region is None:
        raise errors.InvalidArgument("destination bucket %s does not exist" % cfg.dest_bucket)
    if cfg.dest_region != bucket_region:
        raise errors.InvalidArgument("destination %s names region %s, but bucket %s is in %s"
                                     % (cfg.destination, cfg.dest_region, cfg.dest_bucket,
                                        bucket_region))
    if bucket_region != source_region:
        raise errors.InvalidArgument("destination bucket %s is in %s, the source bucket in %s: "
                                     "they must share a region" % (cfg.dest_bucket,
                                                                   bucket_region, source_region))


def _inventory_element(cfg):
    E, leaf = xmldoc.element, xmldoc.element
    dest = [leaf("Format", "CSV")]
    if cfg.account_id:
        dest.append(leaf("AccountId", cfg.account_id))
    dest.append(leaf("Bucket", cfg.destination))
    if cfg.dest_prefix:
        dest.append(leaf("Prefix", cfg.dest_prefix))
    if cfg.sse_cos:
        dest.append(E("Encryption", children=[E("SSE-COS")]))
    children = [leaf("Id", cfg.id)]
    if cfg.frequency is not None:
        children.append(leaf("IsEnabled", "true" if cfg.enabled else "false"))
    children.append(E("Destination", children=[E("COSBucketDestination", children=dest)]))
    if cfg.frequency is not None:
        children.append(E("Schedule", children=[leaf("Frequency", cfg.frequency)]))
    if cfg.prefix:
        children.append(E("Filter", children=[leaf("Prefix", cfg.prefix)]))
    children.append(leaf("IncludedObjectVersions", cfg.versions))
    # always present: cos-python-sdk-v5's get_bucket_inventory reads it unconditionally
    children.append(E("OptionalFields", children=[leaf("Field", f) for f in cfg.fields]))
    return E(ROOT, children=children)


def render_inventory(cfg):
    """The canonical document (UTF-8 bytes); ``parse_inventory`` of it gives ``cfg`` back."""
    return xmldoc.render(_inventory_element(cfg))


def render_list(configs, *, token=None, next_token=None):
    """``ListInventoryConfigurationResult`` for one page of configurations."""
    E = xmldoc.element
    children = [_inventory_element(c) for c in configs]
    children.append(E("IsTruncated", "true" if next_token else "false"))
    if token:
        children.append(E("ContinuationToken", token))
    if next_token:
        children.append(E("NextContinuationToken", next_token))
    return xmldoc.render(E("ListInventoryConfigurationResult", children=children))


def render_post_result(job_id):
    E = xmldoc.element
    return xmldoc.render(E("PostInventoryResult", children=[E("JobId", job_id)]))


# -- the schedule ------------------------------------------------------------------
def period_of(frequency, t):
    """The delivery period that time ``t`` (seconds since the epoch) falls in: the UTC
    day ``D20261201`` (Daily) or the ISO week ``W2026-49`` (Weekly, from Monday 00:00
    UTC); a one-off run (None) is ``once``."""
    if frequency is None:
        return "once"
    tm = time.gmtime(t)
    if frequency == "Daily":
        return time.strftime("D%Y%m%d", tm)
    if frequency == "Weekly":
        return time.strftime("W%G-%V", tm)
    raise ValueError("unknown frequency %r" % frequency)


def next_period_start(frequency, t):
    """When the period after the one holding ``t`` starts (seconds since the epoch)."""
    day_start = int(t) - int(t) % DAY
    if frequency == "Daily":
        return day_start + DAY
    if frequency == "Weekly":
        weekday = time.gmtime(t).tm_wday  # Monday is 0
        return day_start + (7 - weekday) * DAY
    raise ValueError("unknown frequency %r" % frequency)


def is_due(cfg, last_period, now):
    """True when an enabled scheduled inventory has no delivery in the period of ``now``
    (``last_period``: the period of its last delivery, None if never delivered). The
    first delivery is due at once; a period missed entirely (the daemon was not running)
    makes the delivery due at the next look, once, not once per missed period."""
    if cfg.frequency is None or not cfg.enabled:
        return False
    return last_period != period_of(cfg.frequency, now)


# -- the report --------------------------------------------------------------------
def report_base(cfg, source_bucket):
    """The key prefix of a report: ``<prefix>/<appid>/<source name>/<Id>/`` (COS adds the
    ``/`` after the destination prefix; no prefix: ``<appid>/...``)."""
    name, appid = names.split_bucket(source_bucket)
    pre = cfg.dest_prefix.rstrip("/")
    return "%s%s/%s/%s/" % (pre + "/" if pre else "", appid, name, cfg.id)


def manifest_key(cfg, source_bucket, t):
    """``<report base><YYYYMMDD>/manifest.json`` for a scan started at ``t`` (UTC date)."""
    return report_base(cfg, source_bucket) + time.strftime("%Y%m%d", time.gmtime(t)) + \
        "/manifest.json"


def iso8601(ns):
    """``2026-12-01T02:03:04.567Z``: a time in nanoseconds as ISO 8601 UTC, milliseconds."""
    seconds, rest = divmod(int(ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % (rest // 1_000_000)


def quote_key(key):
    """The URL-encoded key of a report row (UTF-8, ``/`` kept): decode with
    ``urllib.parse.unquote``."""
    return urllib.parse.quote(key, safe="/")


@dataclass(frozen=True)
class Row:
    """One line of a report: an object (or, with ``All``, one version of it)."""

    key: str
    size: int
    mtime_ns: int
    etag: str
    replication: Optional[str] = None
    version_id: Optional[str] = None
    is_latest: bool = True
    is_delete_marker: bool = False


def csv_row(cfg, source_bucket, row):
    """The fields of ``row`` in the columns of ``cfg`` (text, for a csv writer)."""
    name, appid = names.split_bucket(source_bucket)
    out = [appid, name, quote_key(row.key)]
    if cfg.versions == "All":
        out += [row.version_id or "null", "true" if row.is_latest else "false",
                "true" if row.is_delete_marker else "false"]
    for field in cfg.fields:
        if field == "Size":
            out.append(str(row.size))
        elif field == "LastModifiedDate":
            out.append(iso8601(row.mtime_ns))
        elif field == "ETag":
            out.append(row.etag)
        elif field == "StorageClass":
            out.append(STORAGE_CLASS)
        elif field == "IsMultipartUploaded":
            out.append("true" if "-" in row.etag else "false")
        elif field == "ReplicationStatus":
            out.append(row.replication or "")
    return out


def csv_lines(rows):
    """CSV text of field lists: every field double-quoted, ``\\n`` line ends, no header."""
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()


def render_manifest(cfg, source_bucket, *, counts, files):
    """manifest.json as bytes: every value a string (COS's example), ``files`` a list of
    (key, size, md5 hex). ``counts``: (listObjectCount, listStorageSize,
    filterObjectCount, filterStorageSize)."""
    src_name, src_appid = names.split_bucket(source_bucket)
    dst_name, dst_appid = names.split_bucket(cfg.dest_bucket)
    doc = {
        "sourceAppid": src_appid,
        "sourceBucket": src_name,
        "destinationAppid": dst_appid,
        "destinationBucket": dst_name,
        "fileFormat": "CSV",
        "listObjectCount": str(counts[0]),
        "listStorageSize": str(counts[1]),
        "filterObjectCount": str(counts[2]),
        "filterStorageSize": str(counts[3]),
        "fileSchema": cfg.file_schema,
        "files": [{"key": k, "size": str(s), "md5Checksum": m} for k, s, m in files],
    }
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def utc_seconds(year, month, day, hour=0, minute=0, second=0):
    """Seconds since the epoch of a UTC time (for callers and tests of the schedule)."""
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
