"""The versioning and replication documents (cosfs.versioning, cosfs.replicationconf): pure."""

import pytest

from cosfs.errors import CosfsError
from cosfs.replicationconf import parse_destination, parse_replication, render_replication
from cosfs.versioning import parse_versioning, render_versioning

DEST = "qcs::cos:ap-shanghai::backup-1250000000"


def doc(*rules, role="<Role>qcs::cam::uin/1:uin/1</Role>"):
    return ("<ReplicationConfiguration>%s%s</ReplicationConfiguration>"
            % (role, "".join(rules))).encode()


def rule(prefix="", status="Enabled", dest=DEST, rule_id=None, extra=""):
    return ("<Rule>%s<Status>%s</Status><Prefix>%s</Prefix><Destination><Bucket>%s</Bucket>"
            "</Destination>%s</Rule>" % ("<ID>%s</ID>" % rule_id if rule_id else "", status,
                                          prefix, dest, extra))


def code_of(fn, *args):
    with pytest.raises(CosfsError) as ei:
        fn(*args)
    return ei.value.code


@pytest.mark.parametrize("text,status", [
    (b"Enabled", "Enabled"), (b"Suspended\n\x00", "Suspended"),
    (b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>", "Enabled"),
    (b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
     b"<Status>Suspended</Status></VersioningConfiguration>", "Suspended"),
])
def test_versioning_documents(text, status):
    assert parse_versioning(text) == status
    assert parse_versioning(render_versioning(status)) == status


@pytest.mark.parametrize("text", [b"", b"Off", b"enabled", b"<VersioningConfiguration/>",
                                  b"<Versioning><Status>Enabled</Status></Versioning>",
                                  b"\xff\xfe", b"<VersioningConfiguration><Status>Enabled"])
def test_bad_versioning_documents(text):
    assert code_of(parse_versioning, text) == "MalformedXML"


def test_never_enabled_renders_the_empty_document():
    assert b"<Status>" not in render_versioning(None)


def test_replication_round_trip_and_matching():
    cfg = parse_replication(doc(rule("docs/", rule_id="a"), rule("logs/", "Disabled"),
                                rule("img/", extra="<DeleteMarkerReplication><Status>Disabled"
                                                   "</Status></DeleteMarkerReplication>")))
    assert parse_replication(render_replication(cfg)) == cfg
    assert cfg.dest_bucket == "backup-1250000000" and cfg.dest_region == "ap-shanghai"
    assert cfg.rule_for(b"docs/a.txt").id == "a"
    assert cfg.rule_for(b"logs/x") is None  # a disabled rule replicates nothing
    assert cfg.rule_for(b"other") is None
    assert cfg.rule_for(b"img/1.png").delete_markers is False
    every = parse_replication(doc(rule()))
    assert every.rule_for(b"anything").id == "rule-1"


def test_filter_prefix_is_accepted():
    cfg = parse_replication(doc(
        "<Rule><Status>Enabled</Status><Filter><Prefix>p/</Prefix></Filter><Destination>"
        "<Bucket>%s</Bucket><StorageClass>STANDARD_IA</StorageClass></Destination></Rule>"
        % DEST))
    assert cfg.rules[0].prefix == "p/" and cfg.rules[0].storage_class == "STANDARD_IA"


@pytest.mark.parametrize("body,code", [
    (doc(), "MalformedXML"),  # no rule
    (doc(rule("a/"), rule("a/b/")), "MalformedXML"),  # overlapping prefixes
    (doc(rule(""), rule("x/")), "MalformedXML"),  # the whole bucket overlaps everything
    (doc(rule("a/", rule_id="r"), rule("b/", rule_id="r")), "MalformedXML"),  # same id
    (doc(rule("a/"), rule("b/", dest="qcs::cos:ap-shanghai::other-1250000000")),
     "MalformedXML"),  # two destinations
    (doc(rule(status="On")), "MalformedXML"),
    (doc(rule(dest="backup-1250000000")), "InvalidArgument"),
    (doc(rule(dest="qcs::cos:ap-shanghai::Bad_Name")), "InvalidArgument"),
    (doc(rule(extra="<Unknown/>")), "MalformedXML"),
    (b"<ReplicationConfiguration><Rule>", "MalformedXML"),
    (b'<!DOCTYPE x [<!ENTITY a "b">]><ReplicationConfiguration/>', "MalformedXML"),
])
def test_bad_replication_documents(body, code):
    assert code_of(parse_replication, body) == code


def test_at_most_1000_rules():
    rules = [rule("p%04d/" % i, rule_id="r%d" % i) for i in range(1001)]
    assert code_of(parse_replication, doc(*rules)) == "MalformedXML"


def test_destination_names():
    assert parse_destination(DEST) == ("ap-shanghai", "backup-1250000000")
    for bad in ("", "qcs::cos:::backup-1250000000", "qcs::cos:ap-shanghai::",
                "cos:ap-shanghai::backup-1250000000"):
        assert code_of(parse_destination, bad) in ("InvalidArgument", "InvalidBucketName",
                                                   "InvalidRegionName")
