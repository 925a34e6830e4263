"""Tier 0: safe XML parsing and the bucket default encryption document."""

import errno

import pytest

from cosfs import errors, xmldoc
from cosfs.bucketconf import EncryptionConfig, parse_encryption, render_encryption, spec_from_config
from cosfs.resolver import EncryptionSpec


def doc(inner):
    return (
        "<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault>"
        f"{inner}"
        "</ApplyServerSideEncryptionByDefault></Rule></ServerSideEncryptionConfiguration>"
    )


# -- xmldoc.parse

def test_parse_plain_document():
    root = xmldoc.parse(b"<A><B> x </B></A>", "A")
    assert root.tag == "A"
    assert xmldoc.text(root, "B") == "x"


def test_parse_accepts_declaration_comments_and_cdata():
    root = xmldoc.parse(
        '<?xml version="1.0" encoding="UTF-8"?>\n<!-- note --><A><B><![CDATA[a<b]]></B></A>', "A"
    )
    assert xmldoc.text(root, "B") == "a<b"


def test_parse_strips_namespaces():
    root = xmldoc.parse('<A xmlns="http://example.com/ns"><B>1</B></A>', "A")
    assert root.tag == "A" and xmldoc.text(root, "B") == "1"
    root = xmldoc.parse('<p:A xmlns:p="urn:x"><p:B>2</p:B></p:A>', "A")
    assert xmldoc.text(root, "B") == "2"


def test_parse_text_and_bytes_agree():
    assert xmldoc.render(xmldoc.parse("<A><B>é</B></A>", "A")) == xmldoc.render(
        xmldoc.parse("<A><B>é</B></A>".encode(), "A")
    )


def test_parse_other_encodings():
    data = '<?xml version="1.0" encoding="UTF-16"?><A><B>x</B></A>'.encode("utf-16")
    assert xmldoc.text(xmldoc.parse(data, "A"), "B") == "x"


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    "<A>&lol3;</A>"
)
EXTERNAL = '<?xml version="1.0"?><!DOCTYPE A [<!ENTITY x SYSTEM "file:///etc/passwd">]><A>&x;</A>'
EXTERNAL_DTD = '<?xml version="1.0"?><!DOCTYPE A SYSTEM "http://example.com/a.dtd"><A/>'
PARAM_ENTITY = '<!DOCTYPE A [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><A/>'


@pytest.mark.parametrize(
    "bad, reason",
    [
        (BILLION_LAUGHS, "DOCTYPE"),
        (EXTERNAL, "DOCTYPE"),
        (EXTERNAL_DTD, "DOCTYPE"),
        (PARAM_ENTITY, "DOCTYPE"),
        ('<A><?php echo 1 ?></A>', "processing instruction"),
        ('<?xml-stylesheet href="x"?><A/>', "processing instruction"),
        ("<A>&undefined;</A>", "malformed"),
        ("<A><B></A>", "malformed"),
        ("<A></A><A></A>", "malformed"),
        ("not xml", "malformed"),
        ("", "empty"),
        ("   \n", "empty"),
        ("<B/>", "root element must be <A>"),
        ("<p:A><p:B/></p:A>", "malformed"),  # unbound prefix
        ("<X>" * 40 + "</X>" * 40, "nested deeper"),
        ("<A>" + "<X>" * 40 + "</X>" * 40 + "</A>", "nested deeper"),
    ],
)
def test_xml_parse_refuses(bad, reason):
    with pytest.raises(errors.MalformedXML) as info:
        xmldoc.parse(bad, "A")
    assert reason in str(info.value)
    assert info.value.errno == errno.EINVAL


def test_parse_refuses_big_documents_without_echo():
    big = "<A>" + "x" * (64 * 1024) + "</A>"
    with pytest.raises(errors.MalformedXML) as info:
        xmldoc.parse(big, "A")
    assert "at most 65536" in str(info.value)
    assert len(str(info.value)) < 120
    assert xmldoc.parse(big, "A", max_bytes=128 * 1024).tag == "A"


def test_messages_never_echo_long_input():
    long_tag = "Z" * 5000
    with pytest.raises(errors.MalformedXML) as info:
        xmldoc.parse(f"<{long_tag}/>", "A")
    assert len(str(info.value)) < 120


def test_parse_refuses_wrong_type():
    with pytest.raises(errors.MalformedXML):
        xmldoc.parse(None, "A")


def test_text_helper():
    root = xmldoc.parse("<A><B>1</B><B>2</B><C/><D><E/></D></A>", "A")
    with pytest.raises(errors.MalformedXML, match="only once"):
        xmldoc.text(root, "B")
    assert xmldoc.text(root, "C") == ""
    assert xmldoc.text(root, "Missing", required=False) is None
    with pytest.raises(errors.MalformedXML, match="missing"):
        xmldoc.text(root, "Missing")
    with pytest.raises(errors.MalformedXML, match="text"):
        xmldoc.text(root, "D")


def test_check_children():
    root = xmldoc.parse("<A><B/><C/><C/></A>", "A")
    xmldoc.check_children(root, ("B", "C"), repeatable=("C",))
    with pytest.raises(errors.MalformedXML, match="only once"):
        xmldoc.check_children(root, ("B", "C"))
    with pytest.raises(errors.MalformedXML, match="unknown element <C>"):
        xmldoc.check_children(root, ("B",), repeatable=("C",))
    with pytest.raises(errors.MalformedXML, match="not text"):
        xmldoc.check_children(xmldoc.parse("<A>junk<B/></A>", "A"), ("B",))
    with pytest.raises(errors.MalformedXML, match="not text"):
        xmldoc.check_children(xmldoc.parse("<A><B/>junk</A>", "A"), ("B",))


def test_render_is_stable():
    tree = xmldoc.element("A", children=[
        xmldoc.element("B", "x & <y>"), xmldoc.element("C"),
        xmldoc.element("D", children=[xmldoc.element("E", "1")]),
    ])
    tree.set("z", '"q"')
    tree.set("a", "1")
    out = xmldoc.render(tree)
    assert out == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<A a="1" z=\'"q"\'>\n'
        b"  <B>x &amp; &lt;y&gt;</B>\n"
        b"  <C/>\n"
        b"  <D>\n"
        b"    <E>1</E>\n"
        b"  </D>\n"
        b"</A>\n"
    )
    assert xmldoc.render(xmldoc.parse(out, "A")) == out
    assert not xmldoc.render(tree, declaration=False).startswith(b"<?xml")


# -- bucket encryption document

@pytest.mark.parametrize("algorithm", ["AES256", "SM4", "KMS"])
def test_parse_full_document(algorithm):
    assert parse_encryption(doc(f"<SSEAlgorithm>{algorithm}</SSEAlgorithm>")) == EncryptionConfig(algorithm)


def test_parse_pretty_document_with_namespace_and_declaration():
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ServerSideEncryptionConfiguration xmlns="http://example.com/doc">\n'
        "  <Rule>\n    <ApplyServerSideEncryptionByDefault>\n"
        "      <SSEAlgorithm> AES256 </SSEAlgorithm>\n"
        "    </ApplyServerSideEncryptionByDefault>\n  </Rule>\n"
        "</ServerSideEncryptionConfiguration>\n"
    )
    assert parse_encryption(text.encode()) == EncryptionConfig("AES256")


def test_parse_kms_document():
    got = parse_encryption(doc(
        "<SSEAlgorithm>KMS</SSEAlgorithm><KMSMasterKeyID>key-1</KMSMasterKeyID>"
        "<KMSAlgorithm>SM4</KMSAlgorithm>"
    ))
    assert got == EncryptionConfig("KMS", kms_key_id="key-1", kms_algorithm="SM4")
    # Empty optional elements count as absent.
    got = parse_encryption(doc("<SSEAlgorithm>KMS</SSEAlgorithm><KMSMasterKeyID/><KMSAlgorithm></KMSAlgorithm>"))
    assert got == EncryptionConfig("KMS")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("AES256", EncryptionConfig("AES256")),
        (b"AES256\n", EncryptionConfig("AES256")),
        (b"  SM4 \r\n", EncryptionConfig("SM4")),
        (b"KMS\x00", EncryptionConfig("KMS")),
        (b"\xef\xbb\xbfAES256", EncryptionConfig("AES256")),
    ],
)
def test_parse_bare_word(raw, expected):
    assert parse_encryption(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "", b"\n", "aes256", "AES128", "cos/kms", "AES256 SM4", b"\xff\xfe\x00",
        doc("<SSEAlgorithm>AES128</SSEAlgorithm>"),
        doc("<SSEAlgorithm>aes256</SSEAlgorithm>"),
        doc("<SSEAlgorithm></SSEAlgorithm>"),
        doc(""),
        doc("<SSEAlgorithm>AES256</SSEAlgorithm><SSEAlgorithm>SM4</SSEAlgorithm>"),
        doc("<SSEAlgorithm>AES256</SSEAlgorithm><KMSMasterKeyID>k</KMSMasterKeyID>"),
        doc("<SSEAlgorithm>SM4</SSEAlgorithm><KMSAlgorithm>SM4</KMSAlgorithm>"),
        doc("<SSEAlgorithm>KMS</SSEAlgorithm><KMSAlgorithm>DES</KMSAlgorithm>"),
        doc("<SSEAlgorithm>KMS</SSEAlgorithm><KMSMasterKeyID>has space</KMSMasterKeyID>"),
        doc("<SSEAlgorithm>KMS</SSEAlgorithm><KMSMasterKeyID>" + "k" * 257 + "</KMSMasterKeyID>"),
        doc("<SSEAlgorithm>AES256</SSEAlgorithm><BucketKeyEnabled>true</BucketKeyEnabled>"),
        doc("<SSEAlgorithm><X>AES256</X></SSEAlgorithm>"),
        "<ServerSideEncryptionConfiguration/>",
        "<ServerSideEncryptionConfiguration><Rule/></ServerSideEncryptionConfiguration>",
        "<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault>"
        "<SSEAlgorithm>AES256</SSEAlgorithm></ApplyServerSideEncryptionByDefault></Rule>"
        "<Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>SM4</SSEAlgorithm>"
        "</ApplyServerSideEncryptionByDefault></Rule></ServerSideEncryptionConfiguration>",
        "<ServerSideEncryptionConfiguration><Rules><ApplyServerSideEncryptionByDefault>"
        "<SSEAlgorithm>AES256</SSEAlgorithm></ApplyServerSideEncryptionByDefault></Rules>"
        "</ServerSideEncryptionConfiguration>",
        "<ServerSideEncryptionConfiguration><Rule><ApplySideEncryptionConfiguration>"
        "<SSEAlgorithm>AES256</SSEAlgorithm></ApplySideEncryptionConfiguration></Rule>"
        "</ServerSideEncryptionConfiguration>",
        "<Other><SSEAlgorithm>AES256</SSEAlgorithm></Other>",
        "<ServerSideEncryptionConfiguration>",
        BILLION_LAUGHS,
    ],
)
def test_encryption_parse_refuses(raw):
    with pytest.raises(errors.MalformedXML) as info:
        parse_encryption(raw)
    assert info.value.code == "MalformedXML"
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    "cfg",
    [EncryptionConfig("AES256"), EncryptionConfig("SM4"), EncryptionConfig("KMS"),
     EncryptionConfig("KMS", kms_key_id="0b7d6f1e-1b2c-4d5e-8f90-123456789abc"),
     EncryptionConfig("KMS", kms_algorithm="SM4"),
     EncryptionConfig("KMS", kms_key_id="qcs::kms:ap-guangzhou:uin/1:key/x", kms_algorithm="AES256")],
)
def test_render_round_trip(cfg):
    rendered = render_encryption(cfg)
    assert parse_encryption(rendered) == cfg
    assert render_encryption(parse_encryption(rendered)) == rendered


def test_render_canonical_document():
    assert render_encryption(EncryptionConfig("AES256")) == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b"<ServerSideEncryptionConfiguration>\n"
        b"  <Rule>\n"
        b"    <ApplyServerSideEncryptionByDefault>\n"
        b"      <SSEAlgorithm>AES256</SSEAlgorithm>\n"
        b"    </ApplyServerSideEncryptionByDefault>\n"
        b"  </Rule>\n"
        b"</ServerSideEncryptionConfiguration>\n"
    )


def test_config_validates_itself():
    with pytest.raises(errors.MalformedXML):
        EncryptionConfig("AES128")
    with pytest.raises(errors.MalformedXML):
        EncryptionConfig("SM4", kms_key_id="k")


def test_spec_from_config():
    assert spec_from_config(EncryptionConfig("AES256")) == EncryptionSpec("AES256")
    assert spec_from_config(EncryptionConfig("SM4")).stored_name == "SM4"
    spec = spec_from_config(EncryptionConfig("KMS", kms_key_id="k", kms_algorithm="SM4"))
    assert spec == EncryptionSpec("KMS", kms_key_id="k", kms_algorithm="SM4")
    assert spec.stored_name == "cos/kms"
