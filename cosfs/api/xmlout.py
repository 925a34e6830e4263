"""The XML documents of the COS XML API: responses rendered, request bodies parsed.

Rendering: one function per response document (ListAllMyBucketsResult,
ListBucketResult v1 and v2, LocationConstraint, the error document, the
copy and multipart results, DeleteResult). Each takes plain values (or the
core's result objects, read by attribute) and returns UTF-8 bytes in the
stable layout of :func:`cosfs.xmldoc.render`. Keys and prefixes are
URL-encoded when the request asked for ``encoding-type=url`` (COS and S3 do
that so keys with characters XML 1.0 cannot carry still list).

Parsing: ``Delete`` (multi-object delete) and ``CompleteMultipartUpload``
go through the project's safe parser :func:`cosfs.xmldoc.parse` with the
API's body limit; anything unexpected raises
:class:`cosfs.errors.MalformedXML`. Pure: no I/O, no trio; safe on any
thread.
"""

import logging
import time
import urllib.parse

from .. import xmldoc
from ..errors import MalformedXML

log = logging.getLogger(__name__)

#: the owner shown in listings: cosfs has one account, its APPID
OWNER_TEMPLATE = "qcs::cam::uin/{appid}:uin/{appid}"
#: at most this many objects per multi-object delete (COS and S3 limit)
MAX_DELETE_KEYS = 1000
STORAGE_CLASS = "STANDARD"

E = xmldoc.element


def _leaf(tag, value):
    if value is None:
        return E(tag)
    if isinstance(value, bool):
        value = "true" if value else "false"
    return E(tag, str(value))


def _node(tag, *children):
    return E(tag, children=[c for c in children if c is not None])


def iso_time(ns):
    """``2026-12-01T02:00:00.000Z`` for a time in nanoseconds since the epoch."""
    seconds, rest = divmod(int(ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % (rest // 1_000_000)


def http_date(ns):
    """RFC 7231 date (``Tue, 01 Dec 2026 02:00:00 GMT``) for a time in nanoseconds."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(int(ns) // 1_000_000_000))


def quote_etag(etag):
    etag = etag or ""
    return etag if etag.startswith('"') else '"%s"' % etag


def _enc(value, url):
    if value is None:
        return None
    return urllib.parse.quote(value, safe="/") if url else value


def _owner(appid):
    ident = OWNER_TEMPLATE.format(appid=appid)
    return _node("Owner", _leaf("ID", ident), _leaf("DisplayName", appid))


def render(root):
    return xmldoc.render(root)


# -- errors ---------------------------------------------------------------------------
def error(code, message, resource, request_id):
    """``<Error>``: Code, Message, Resource, RequestId and TraceId (the request id again)."""
    return render(_node("Error", _leaf("Code", code), _leaf("Message", message),
                        _leaf("Resource", resource), _leaf("RequestId", request_id),
                        _leaf("TraceId", request_id)))


# -- service and buckets ----------------------------------------------------------------
def list_buckets(buckets, appid):
    """``ListAllMyBucketsResult`` of ``[(name, region, creation time ns)]``."""
    items = [_node("Bucket", _leaf("Name", name), _leaf("Location", region),
                   _leaf("CreationDate", iso_time(created)), _leaf("BucketType", "cos"))
             for name, region, created in buckets]
    return render(_node("ListAllMyBucketsResult", _owner(appid), E("Buckets", children=items)))


def location(region):
    return render(_leaf("LocationConstraint", region))


def _contents(info, url, appid):
    return _node("Contents", _leaf("Key", _enc(info.key, url)),
                 _leaf("LastModified", iso_time(info.mtime_ns)),
                 _leaf("ETag", quote_etag(info.etag)), _leaf("Size", info.size),
                 _owner(appid), _leaf("StorageClass", STORAGE_CLASS))


def _prefixes(common, url):
    return [_node("CommonPrefixes", _leaf("Prefix", _enc(p, url))) for p in common]


def list_objects_v1(bucket, listing, *, prefix, delimiter, marker, max_keys, url, appid):
    """``ListBucketResult`` (GET Bucket / ListObjects) of a core listing."""
    children = [_leaf("Name", bucket), _leaf("EncodingType", "url") if url else None,
                _leaf("Prefix", _enc(prefix, url) or ""), _leaf("Marker", _enc(marker, url) or ""),
                _leaf("MaxKeys", max_keys),
                _leaf("Delimiter", _enc(delimiter, url)) if delimiter else None,
                _leaf("IsTruncated", bool(listing.is_truncated))]
    if listing.is_truncated and listing.next_marker:
        children.append(_leaf("NextMarker", _enc(listing.next_marker, url)))
    children += [_contents(c, url, appid) for c in listing.contents]
    children += _prefixes(listing.common_prefixes, url)
    return render(_node("ListBucketResult", *children))


def list_objects_v2(bucket, listing, *, prefix, delimiter, max_keys, url, appid,
                    continuation_token=None, next_token=None, start_after=None, fetch_owner=False):
    """``ListBucketResult`` of ListObjectsV2; the caller makes the continuation tokens."""
    children = [_leaf("Name", bucket), _leaf("EncodingType", "url") if url else None,
                _leaf("Prefix", _enc(prefix, url) or ""),
                _leaf("StartAfter", _enc(start_after, url)) if start_after else None,
                _leaf("ContinuationToken", continuation_token) if continuation_token else None,
                _leaf("KeyCount", len(listing.contents) + len(listing.common_prefixes)),
                _leaf("MaxKeys", max_keys),
                _leaf("Delimiter", _enc(delimiter, url)) if delimiter else None,
                _leaf("IsTruncated", bool(listing.is_truncated)),
                _leaf("NextContinuationToken", next_token) if next_token else None]
    for c in listing.contents:
        item = _contents(c, url, appid)
        if not fetch_owner:
            item.remove(item.find("Owner"))
        children.append(item)
    children += _prefixes(listing.common_prefixes, url)
    return render(_node("ListBucketResult", *children))


# -- objects ------------------------------------------------------------------------------
def copy_result(etag, mtime_ns, *, part=False):
    """``CopyObjectResult`` (PUT Object - Copy) or ``CopyPartResult`` (Upload Part - Copy)."""
    return render(_node("CopyPartResult" if part else "CopyObjectResult",
                        _leaf("ETag", quote_etag(etag)), _leaf("LastModified", iso_time(mtime_ns))))


def delete_result(deleted, failed, *, quiet, url=False):
    """``DeleteResult``: ``deleted`` keys (left out when ``quiet``), ``failed`` as
    ``[(key, code, message)]``. A deleted item may be (key, version id, delete marker
    version id or None) in a versioned bucket."""
    children = [] if quiet else [_deleted(k, url) for k in deleted]
    children += [_node("Error", _leaf("Key", _enc(k, url)), _leaf("Code", code),
                       _leaf("Message", msg)) for k, code, msg in failed]
    return render(_node("DeleteResult", *children))


def _deleted(item, url):
    if isinstance(item, str):
        return _node("Deleted", _leaf("Key", _enc(item, url)))
    key, vid, marker = item
    return _node("Deleted", _leaf("Key", _enc(key, url)),
                 _leaf("VersionId", vid) if vid else None,
                 _leaf("DeleteMarker", True) if marker else None,
                 _leaf("DeleteMarkerVersionId", marker) if marker else None)


def list_versions(bucket, listing, *, prefix, delimiter, key_marker, version_id_marker,
                  max_keys, url, appid):
    """``ListVersionsResult`` (GET Bucket Object versions) of a core versions listing."""
    children = [_leaf("Name", bucket), _leaf("EncodingType", "url") if url else None,
                _leaf("Prefix", _enc(prefix, url) or ""),
                _leaf("KeyMarker", _enc(key_marker, url) or ""),
                _leaf("VersionIdMarker", version_id_marker or ""),
                _leaf("MaxKeys", max_keys),
                _leaf("Delimiter", _enc(delimiter, url)) if delimiter else None,
                _leaf("IsTruncated", bool(listing.is_truncated))]
    if listing.is_truncated:
        children += [_leaf("NextKeyMarker", _enc(listing.next_key_marker, url)),
                     _leaf("NextVersionIdMarker", listing.next_version_id_marker or "")]
    for v in listing.versions:
        common = [_leaf("Key", _enc(v.key, url)), _leaf("VersionId", v.version_id),
                  _leaf("IsLatest", v.is_latest), _leaf("LastModified", iso_time(v.mtime_ns))]
        if v.is_delete_marker:
            children.append(_node("DeleteMarker", *common, _owner(appid)))
        else:
            children.append(_node("Version", *common, _leaf("ETag", quote_etag(v.etag)),
                                  _leaf("Size", v.size), _leaf("StorageClass", STORAGE_CLASS),
                                  _owner(appid)))
    children += _prefixes(listing.common_prefixes, url)
    return render(_node("ListVersionsResult", *children))


def parse_delete(body, max_bytes):
    """``<Delete><Quiet/>?<Object><Key/><VersionId/>?</Object>+</Delete>`` ->
    ([(key, version id or None)], quiet). Raises MalformedXML (also for more than 1000
    keys)."""
    root = xmldoc.parse(body, "Delete", max_bytes=max_bytes)
    xmldoc.check_children(root, ("Quiet", "Object"), repeatable=("Object",))
    quiet_text = xmldoc.text(root, "Quiet", required=False)
    if quiet_text not in (None, "", "true", "false", "True", "False"):
        raise MalformedXML("<Quiet> must be true or false")
    keys = []
    for obj in root.findall("Object"):
        xmldoc.check_children(obj, ("Key", "VersionId"))
        keys.append((_raw_text(xmldoc.find_one(obj, "Key")),
                     xmldoc.text(obj, "VersionId", required=False) or None))
    if not keys:
        raise MalformedXML("<Delete> lists no <Object>")
    if len(keys) > MAX_DELETE_KEYS:
        raise MalformedXML("<Delete> lists %d objects, at most %d allowed"
                           % (len(keys), MAX_DELETE_KEYS))
    return keys, (quiet_text or "").lower() == "true"


def _raw_text(elem):
    """A key's text exactly as sent: keys may begin or end with blanks."""
    if len(elem):
        raise MalformedXML("<%s> must hold text, not elements" % elem.tag)
    return elem.text or ""


# -- multipart ----------------------------------------------------------------------------
def initiate_result(bucket, key, upload_id):
    return render(_node("InitiateMultipartUploadResult", _leaf("Bucket", bucket),
                        _leaf("Key", key), _leaf("UploadId", upload_id)))


def complete_result(location_url, bucket, key, etag):
    return render(_node("CompleteMultipartUploadResult", _leaf("Location", location_url),
                        _leaf("Bucket", bucket), _leaf("Key", key),
                        _leaf("ETag", quote_etag(etag))))


def parse_complete(body, max_bytes):
    """``<CompleteMultipartUpload><Part><PartNumber/><ETag/></Part>+`` -> [(number, etag)]
    with the ETag's quotes removed. Raises MalformedXML."""
    root = xmldoc.parse(body, "CompleteMultipartUpload", max_bytes=max_bytes)
    xmldoc.check_children(root, ("Part",), repeatable=("Part",))
    parts = []
    for part in root.findall("Part"):
        # S3 clients add the part's checksums here: accepted and not needed
        xmldoc.check_children(part, ("PartNumber", "ETag", "ChecksumCRC32", "ChecksumCRC32C",
                                     "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256"))
        number = xmldoc.text(part, "PartNumber")
        if not number.isdigit():
            raise MalformedXML("<PartNumber> must be a number")
        parts.append((int(number), xmldoc.text(part, "ETag").strip('"')))
    if not parts:
        raise MalformedXML("<CompleteMultipartUpload> lists no <Part>")
    return parts


def list_parts(bucket, key, upload_id, parts, *, marker, next_marker, max_parts, truncated,
               appid, url=False):
    """``ListPartsResult``; ``parts`` have ``number``, ``etag``, ``size``, ``mtime_ns``."""
    children = [_leaf("Bucket", bucket), _leaf("EncodingType", "url") if url else None,
                _leaf("Key", _enc(key, url)), _leaf("UploadId", upload_id),
                _node("Initiator", *_owner(appid)), _owner(appid),
                _leaf("StorageClass", STORAGE_CLASS), _leaf("PartNumberMarker", marker or 0),
                _leaf("NextPartNumberMarker", next_marker or 0), _leaf("MaxParts", max_parts),
                _leaf("IsTruncated", bool(truncated))]
    children += [_node("Part", _leaf("PartNumber", p.number),
                       _leaf("LastModified", iso_time(p.mtime_ns)),
                       _leaf("ETag", quote_etag(p.etag)), _leaf("Size", p.size)) for p in parts]
    return render(_node("ListPartsResult", *children))


def list_uploads(bucket, uploads, common_prefixes, *, prefix, delimiter, key_marker,
                 upload_id_marker, next_key_marker, next_upload_id_marker, max_uploads,
                 truncated, appid, url=False):
    """``ListMultipartUploadsResult``; ``uploads`` have ``key``, ``upload_id``, ``initiated_ns``."""
    children = [_leaf("Bucket", bucket), _leaf("EncodingType", "url") if url else None,
                _leaf("KeyMarker", _enc(key_marker, url) or ""),
                _leaf("UploadIdMarker", upload_id_marker or ""),
                _leaf("NextKeyMarker", _enc(next_key_marker, url) or ""),
                _leaf("NextUploadIdMarker", next_upload_id_marker or ""),
                _leaf("Prefix", _enc(prefix, url) or ""),
                _leaf("Delimiter", _enc(delimiter, url)) if delimiter else None,
                _leaf("MaxUploads", max_uploads), _leaf("IsTruncated", bool(truncated))]
    children += [_node("Upload", _leaf("Key", _enc(u.key, url)), _leaf("UploadId", u.upload_id),
                       _leaf("StorageClass", STORAGE_CLASS), _node("Initiator", *_owner(appid)),
                       _owner(appid), _leaf("Initiated", iso_time(u.initiated_ns)))
                 for u in uploads]
    children += _prefixes(common_prefixes, url)
    return render(_node("ListMultipartUploadsResult", *children))
