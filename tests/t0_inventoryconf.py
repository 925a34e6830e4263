"""The inventory document, schedule and report formats (cosfs.inventoryconf), pure."""

import csv
import io
import json

import pytest

from cosfs import inventoryconf as ic
from cosfs.errors import CosfsError

DEST = "qcs::cos:ap-guangzhou::dest-1250000000"
FULL = """<?xml version="1.0" encoding="UTF-8"?>
<InventoryConfiguration xmlns="http://example.com/">
    <Id>list1</Id>
    <IsEnabled>true</IsEnabled>
    <Destination>
        <COSBucketDestination>
            <Format>CSV</Format>
            <AccountId>100000000001</AccountId>
            <Bucket>{dest}</Bucket>
            <Prefix>list1</Prefix>
            <Encryption><SSE-COS></SSE-COS></Encryption>
        </COSBucketDestination>
    </Destination>
    <Schedule><Frequency>Daily</Frequency></Schedule>
    <Filter><Prefix>myPrefix</Prefix></Filter>
    <IncludedObjectVersions>All</IncludedObjectVersions>
    <OptionalFields>
        <Field>Size</Field>
        <Field>LastModifiedDate</Field>
        <Field>ETag</Field>
        <Field>StorageClass</Field>
        <Field>IsMultipartUploaded</Field>
        <Field>ReplicationStatus</Field>
    </OptionalFields>
</InventoryConfiguration>
"""


def doc(**over):
    """A minimal valid document with parts replaced (None drops an element)."""
    parts = {
        "Id": "<Id>inv-1</Id>",
        "IsEnabled": "<IsEnabled>true</IsEnabled>",
        "Destination": "<Destination><COSBucketDestination><Format>CSV</Format>"
                       "<Bucket>%s</Bucket></COSBucketDestination></Destination>" % DEST,
        "Schedule": "<Schedule><Frequency>Weekly</Frequency></Schedule>",
        "IncludedObjectVersions": "<IncludedObjectVersions>Current</IncludedObjectVersions>",
    }
    parts.update(over)
    return ("<InventoryConfiguration>%s</InventoryConfiguration>"
            % "".join(v for v in parts.values() if v)).encode()


def code_of(fn, *args, **kw):
    with pytest.raises(CosfsError) as ei:
        fn(*args, **kw)
    return ei.value.code


def test_full_document_round_trips():
    cfg = ic.parse_inventory(FULL.format(dest=DEST).encode(), expected_id="list1")
    assert cfg == ic.InventoryConfig(
        id="list1", enabled=True, versions="All", prefix="myPrefix", fields=ic.FIELDS,
        frequency="Daily", dest_region="ap-guangzhou", dest_bucket="dest-1250000000",
        dest_prefix="list1", account_id="100000000001", sse_cos=True)
    assert ic.parse_inventory(ic.render_inventory(cfg)) == cfg
    assert cfg.file_schema == ("Appid, Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, "
                               "LastModifiedDate, ETag, StorageClass, IsMultipartUploaded, "
                               "ReplicationStatus")
    minimal = ic.parse_inventory(doc())
    assert (minimal.frequency, minimal.prefix, minimal.fields, minimal.sse_cos) == \
        ("Weekly", "", (), False)
    assert ic.parse_inventory(ic.render_inventory(minimal)) == minimal
    assert b"<OptionalFields/>" in ic.render_inventory(minimal)
    assert minimal.columns == ("Appid", "Bucket", "Key")


def test_sdk_spellings_are_accepted():
    # cos-python-sdk-v5 sends 'SSECOS' and 'True'
    cfg = ic.parse_inventory(doc(IsEnabled="<IsEnabled>True</IsEnabled>", Destination=(
        "<Destination><COSBucketDestination><Format>CSV</Format><Bucket>%s</Bucket>"
        "<Encryption><SSECOS></SSECOS></Encryption></COSBucketDestination></Destination>"
        % DEST)))
    assert cfg.sse_cos and cfg.enabled
    assert b"<SSE-COS/>" in ic.render_inventory(cfg)


def test_id_rules():
    for good in ("a", "A.b-c_9", "x" * 64):
        assert ic.check_id(good) == good
    for bad in ("", "a b", "a/b", "x" * 65, "é", None):
        assert code_of(ic.check_id, bad) == "InvalidArgument"
    assert code_of(ic.parse_inventory, doc(Id="<Id>bad id</Id>")) == "InvalidArgument"
    assert code_of(ic.parse_inventory, doc(), expected_id="other") == "InvalidArgument"
    assert ic.parse_inventory(doc(Id=None), expected_id="from-name").id == "from-name"
    assert code_of(ic.parse_inventory, doc(Id=None)) == "MalformedXML"


@pytest.mark.parametrize("over,code", [
    ({"IsEnabled": "<IsEnabled>yes</IsEnabled>"}, "InvalidArgument"),
    ({"IsEnabled": None}, "MalformedXML"),
    ({"Schedule": "<Schedule><Frequency>Monthly</Frequency></Schedule>"}, "InvalidArgument"),
    ({"Schedule": None}, "MalformedXML"),
    ({"IncludedObjectVersions": "<IncludedObjectVersions>Some</IncludedObjectVersions>"},
     "InvalidArgument"),
    ({"Destination": "<Destination><COSBucketDestination><Format>ORC</Format><Bucket>%s"
      "</Bucket></COSBucketDestination></Destination>" % DEST}, "InvalidArgument"),
    ({"Destination": "<Destination><COSBucketDestination><Format>CSV</Format><Bucket>"
      "dest-1250000000</Bucket></COSBucketDestination></Destination>"}, "InvalidArgument"),
    ({"Destination": "<Destination><COSBucketDestination><Format>CSV</Format><Bucket>"
      "qcs::cos:ap-guangzhou::Bad_Name-1</Bucket></COSBucketDestination></Destination>"},
     "InvalidArgument"),
    ({"Destination": "<Destination><COSBucketDestination><Format>CSV</Format><Bucket>%s"
      "</Bucket><AccountId>x1</AccountId></COSBucketDestination></Destination>" % DEST},
     "InvalidArgument"),
    ({"Destination": "<Destination><COSBucketDestination><Format>CSV</Format><Bucket>%s"
      "</Bucket><Encryption><SSE-KMS/></Encryption></COSBucketDestination></Destination>"
      % DEST}, "MalformedXML"),
    ({"Destination": None}, "MalformedXML"),
    ({"Destination": "<Destination><COSBucketDestination><Format>CSV</Format><Bucket>%s"
      "</Bucket><Prefix>/abs</Prefix></COSBucketDestination></Destination>" % DEST},
     "InvalidArgument"),
    ({"Destination": "<Destination><COSBucketDestination><Format>CSV</Format><Bucket>%s"
      "</Bucket><Prefix>a/../b</Prefix></COSBucketDestination></Destination>" % DEST},
     "InvalidArgument"),
    ({"Extra": "<Tagging/>"}, "MalformedXML"),
    ({"OptionalFields": "<OptionalFields><Field>Owner</Field></OptionalFields>"},
     "InvalidArgument"),
    ({"OptionalFields": "<OptionalFields><Field>Size</Field><Field>Size</Field>"
      "</OptionalFields>"}, "InvalidArgument"),
    ({"Filter": "<Filter><Tag/></Filter>"}, "MalformedXML"),
])
def test_validation_errors(over, code):
    assert code_of(ic.parse_inventory, doc(**over)) == code


def test_one_off_documents_need_no_schedule():
    cfg = ic.parse_inventory(doc(IsEnabled=None, Schedule=None), one_off=True)
    assert cfg.frequency is None
    assert b"Schedule" not in ic.render_inventory(cfg)
    assert ic.parse_inventory(ic.render_inventory(cfg), one_off=True) == cfg


def test_destination_checks():
    cfg = ic.parse_inventory(doc())
    ic.check_destination(cfg, "ap-guangzhou", "ap-guangzhou")
    assert code_of(ic.check_destination, cfg, "ap-guangzhou", None) == "InvalidArgument"
    assert code_of(ic.check_destination, cfg, "ap-shanghai", "ap-guangzhou") == "InvalidArgument"
    assert code_of(ic.check_destination, cfg, "ap-guangzhou", "ap-shanghai") == "InvalidArgument"


def test_schedule_periods_with_a_given_clock():
    mon = ic.utc_seconds(2026, 11, 30, 10)  # a Monday
    assert ic.period_of("Daily", mon) == "D20261130"
    assert ic.period_of("Daily", mon + 14 * 3600 - 1) == "D20261130"
    assert ic.period_of("Daily", mon + 14 * 3600) == "D20261201"
    assert ic.next_period_start("Daily", mon) == ic.utc_seconds(2026, 12, 1)
    assert ic.period_of("Weekly", mon) == ic.period_of("Weekly", mon + 6 * 86400) == "W2026-49"
    assert ic.period_of("Weekly", ic.utc_seconds(2026, 12, 7)) == "W2026-50"
    assert ic.next_period_start("Weekly", mon) == ic.utc_seconds(2026, 12, 7)
    assert ic.next_period_start("Weekly", ic.utc_seconds(2026, 12, 6, 23, 59)) == \
        ic.utc_seconds(2026, 12, 7)
    daily = ic.parse_inventory(doc(Schedule="<Schedule><Frequency>Daily</Frequency></Schedule>"))
    assert ic.is_due(daily, None, mon)  # never delivered: at once
    assert not ic.is_due(daily, "D20261130", mon + 3600)
    assert ic.is_due(daily, "D20261130", ic.utc_seconds(2026, 12, 1, 0, 0, 1))
    assert ic.is_due(daily, "D20261120", mon)  # missed days: one delivery
    disabled = ic.parse_inventory(doc(IsEnabled="<IsEnabled>false</IsEnabled>"))
    assert not ic.is_due(disabled, None, mon)


def test_report_layout_rows_and_manifest():
    cfg = ic.parse_inventory(FULL.format(dest=DEST).encode())
    assert ic.report_base(cfg, "src-1250000000") == "list1/1250000000/src/list1/"
    assert ic.manifest_key(cfg, "src-1250000000", ic.utc_seconds(2026, 12, 1, 5)) == \
        "list1/1250000000/src/list1/20261201/manifest.json"
    bare = ic.parse_inventory(doc())
    assert ic.report_base(bare, "src-1250000000") == "1250000000/src/inv-1/"
    row = ic.Row("dir/a b,\"c\"\u00e9", 12, 1_764_554_400_123_456_789, "0" * 32, "PENDING", None)
    fields = ic.csv_row(cfg, "src-1250000000", row)
    assert fields == ["1250000000", "src", "dir/a%20b%2C%22c%22%C3%A9", "null", "true", "false",
                      "12", "2025-12-01T02:00:00.123Z", "0" * 32, "STANDARD", "false", "PENDING"]
    text = ic.csv_lines([fields, ic.csv_row(cfg, "src-1250000000", ic.Row(
        "k", 0, 0, "ab-2", None, "v1"))])
    assert text.startswith('"1250000000","src","dir/a%20b')
    back = list(csv.reader(io.StringIO(text)))
    assert back[0] == fields and back[1][3] == "v1" and back[1][10] == "true"
    assert back[1][11] == ""
    manifest = ic.render_manifest(cfg, "src-1250000000", counts=(3, 30, 2, 20),
                                  files=[("k.csv.gz", 10, "f" * 32)])
    m = json.loads(manifest)
    assert m["sourceAppid"] == "1250000000" and m["sourceBucket"] == "src"
    assert m["destinationBucket"] == "dest" and m["fileFormat"] == "CSV"
    assert (m["listObjectCount"], m["listStorageSize"], m["filterObjectCount"],
            m["filterStorageSize"]) == ("3", "30", "2", "20")
    assert m["files"] == [{"key": "k.csv.gz", "size": "10", "md5Checksum": "f" * 32}]
    assert m["fileSchema"] == cfg.file_schema


def test_list_and_post_documents():
    cfg = ic.parse_inventory(doc())
    body = ic.render_list([cfg], next_token="inv-1")
    assert b"<IsTruncated>true</IsTruncated>" in body
    assert b"<NextContinuationToken>inv-1</NextContinuationToken>" in body
    assert b"<JobId>abc</JobId>" in ic.render_post_result("abc")
