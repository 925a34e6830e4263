"""Tier 0: COS naming rules for buckets, regions and object keys; the mapping of
file names (bytes) onto keys (UTF-8)."""

import errno

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cosfs import errors, names


@pytest.mark.parametrize(
    "bucket, expected",
    [
        ("my-data-1250000000", ("my-data", "1250000000")),
        ("examplebucket-1250000000", ("examplebucket", "1250000000")),
        ("a-1", ("a", "1")),
        ("a--b-12", ("a--b", "12")),
    ],
)
def test_split_bucket_on_last_dash(bucket, expected):
    assert names.split_bucket(bucket) == expected


def test_split_bucket_without_dash():
    with pytest.raises(errors.InvalidBucketName):
        names.split_bucket("nodash")


@pytest.mark.parametrize(
    "bucket",
    ["photos-1250000000", "a-1", "0-1", "my-data-bucket-1250000000", "a1b2-99", "x--y-7"],
)
def test_valid_bucket_names(bucket):
    names.validate_bucket_name(bucket)


@pytest.mark.parametrize(
    "bucket, rule",
    [
        ("photos", "no -APPID"),
        ("-1250000000", "empty name"),
        ("Photos-1250000000", "a-z, 0-9"),
        ("pho_tos-1250000000", "a-z, 0-9"),
        ("-photos-1250000000", "start or end"),
        ("photos--1250000000", "start or end"),
        ("photos-", "digits"),
        ("photos-12a", "digits"),
        ("photos-١٢٣", "digits"),  # non-ASCII digits are not an APPID
        ("pho tos-1", "a-z, 0-9"),
        ("phötos-1", "a-z, 0-9"),
    ],
)
def test_invalid_bucket_names(bucket, rule):
    with pytest.raises(errors.InvalidBucketName) as info:
        names.validate_bucket_name(bucket)
    assert rule in str(info.value)
    assert info.value.errno == errno.EINVAL
    assert info.value.code == "InvalidBucketName"


def test_bucket_name_not_text():
    with pytest.raises(errors.InvalidBucketName):
        names.validate_bucket_name(b"photos-1")


def test_appid_must_match():
    names.validate_bucket_name("photos-1250000000", appid="1250000000")
    with pytest.raises(errors.InvalidBucketName, match="does not match"):
        names.validate_bucket_name("photos-1250000001", appid="1250000000")


def test_endpoint_length_limit():
    # The COS example: a 21-character name in ap-beijing fills exactly 60 characters.
    name = "a" * 21 + "-1250000000"
    assert len(names.endpoint(name, "ap-beijing")) == 60
    names.validate_bucket_name(name, "ap-beijing")
    longer = "a" * 22 + "-1250000000"
    with pytest.raises(errors.BucketNameTooLong) as info:
        names.validate_bucket_name(longer, "ap-beijing")
    assert info.value.code == "BucketNameTooLong"
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value, errors.InvalidBucketName)
    # Without a region only the character rules apply.
    names.validate_bucket_name(longer)


@pytest.mark.parametrize(
    "region", ["ap-guangzhou", "ap-shanghai", "ap-beijing-1", "ap-shanghai-fsi", "na-siliconvalley",
               "eu-frankfurt", "sa-saopaulo"],
)
def test_valid_regions(region):
    names.validate_region(region)


@pytest.mark.parametrize(
    "region", ["", "guangzhou", "AP-guangzhou", "ap_guangzhou", "ap-", "ap-guangzhou-", "a-b",
               "ap-guang zhou", None, 5, "ap-guangzhou\n"],
)
def test_invalid_regions(region):
    with pytest.raises(errors.InvalidArgument):
        names.validate_region(region)


def test_validate_appid():
    names.validate_appid("1250000000")
    for bad in ("", "12a", "١٢", 1250000000, None):
        with pytest.raises(errors.InvalidArgument):
            names.validate_appid(bad)


@pytest.mark.parametrize(
    "key",
    [b"a", b"dir/file.txt", b"dir/", b"a/b/c/", "日本語/ファイル".encode(), b"x" * 850,
     b"with space and %*", b".hidden", b"a/..b/c.."],
)
def test_valid_keys(key):
    names.validate_key(key)


def test_key_length_limit():
    names.validate_key("é".encode() * 425)  # 850 bytes
    with pytest.raises(errors.KeyTooLong) as info:
        names.validate_key(b"x" * 851)
    assert info.value.errno == errno.ENAMETOOLONG
    # The limit counts UTF-8 bytes, not characters.
    with pytest.raises(errors.KeyTooLong):
        names.validate_key("é".encode() * 426)


@pytest.mark.parametrize(
    "key",
    [b"", b"\xff\xfe", b"bad\x18", b"bad\x19x", b"bad\x1a", b"\x1bx", b"nul\x00", b"/abs", b"a//b",
     b"//", b"/", b"a/./b", b"a/../b", b"..", b".", b"a/.", b"dir//"],
)
def test_invalid_keys(key):
    with pytest.raises(errors.InvalidObjectName) as info:
        names.validate_key(key)
    assert info.value.errno == errno.EINVAL


def test_key_must_be_bytes():
    with pytest.raises(errors.InvalidObjectName):
        names.validate_key("text")


def test_messages_stay_short():
    with pytest.raises(errors.InvalidObjectName) as info:
        names.validate_key(b"\x18" + b"y" * 800)
    assert len(str(info.value)) < 200


# -- file names <-> keys -----------------------------------------------------------------
RESERVED = range(names.ESCAPE_FIRST, names.ESCAPE_LAST + 1)


def escaped(byte):
    return chr(0xF780 + byte - 0x80)


@pytest.mark.parametrize("name, key", [
    (b"plain.txt", "plain.txt"),
    ("d\u00e9j\u00e0/\u65e5\u672c\U0001f600".encode(), "d\u00e9j\u00e0/\u65e5\u672c\U0001f600"),
    (b"caf\xe9", "caf" + escaped(0xE9)),                      # Latin-1
    (b"\xff\xfe", escaped(0xFF) + escaped(0xFE)),
    (b"\x80", escaped(0x80)),
    (b"na\xc3\xafve-\xe9", "na\u00efve-" + escaped(0xE9)),   # valid and invalid mixed
    (b"half\xc3", "half" + escaped(0xC3)),                    # truncated sequence
    (b"\xe2\x82x", escaped(0xE2) + escaped(0x82) + "x"),       # each byte on its own
    (b"\xed\xa0\x80", escaped(0xED) + escaped(0xA0) + escaped(0x80)),  # encoded surrogate
    (b"over\xc0\xaf", "over" + escaped(0xC0) + escaped(0xAF)),  # overlong "/"
    (b"\xf4\x90\x80\x80", "".join(escaped(b) for b in b"\xf4\x90\x80\x80")),  # > U+10FFFF
])
def test_name_to_key_examples(name, key):
    assert names.name_to_key(name) == key
    assert names.key_to_name(key) == name


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
@example(b"\xef\x9e\x80")  # U+F780 itself, as valid UTF-8
def test_random_names_round_trip(name):
    text = name.decode("utf-8", "surrogateescape")
    if any(ord(c) in RESERVED for c in text):
        with pytest.raises(errors.InvalidObjectName):
            names.name_to_key(name)
        return
    key = names.name_to_key(name)
    encoded = key.encode("utf-8")  # always valid UTF-8
    assert names.key_to_name(key) == name
    # every escaped byte is one reserved character, 3 bytes of UTF-8; the rest is unchanged
    n_escaped = sum(1 for c in key if ord(c) in RESERVED)
    assert n_escaped == sum(1 for c in text if 0xDC80 <= ord(c) <= 0xDCFF)
    assert len(encoded) == len(name) + 2 * n_escaped
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in key)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)).filter(
    lambda c: ord(c) not in RESERVED), max_size=40)


@settings(max_examples=1000, deadline=None)
@given(_TEXT)
def test_valid_utf8_is_unchanged(text):
    assert names.name_to_key(text.encode("utf-8")) == text
    assert names.key_to_name(text) == text.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=20), st.binary(max_size=20))
def test_different_names_get_different_keys(a, b):
    try:
        ka, kb = names.name_to_key(a), names.name_to_key(b)
    except errors.InvalidObjectName:
        return
    assert (ka == kb) == (a == b)


@pytest.mark.parametrize("cp", [0xF780, 0xF7A5, 0xF7E9, 0xF7FF])
@pytest.mark.parametrize("template", ["{}", "name-{}", "{}.txt", "\u00e9{}"])
def test_reserved_range_is_refused(cp, template):
    name = template.format(chr(cp)).encode("utf-8")
    with pytest.raises(errors.InvalidObjectName) as info:
        names.name_to_key(name)
    assert info.value.errno == errno.EINVAL
    assert "U+%04X" % cp in str(info.value) and "reserved" in str(info.value)
    # also next to bytes that are escaped
    with pytest.raises(errors.InvalidObjectName):
        names.name_to_key(b"\xff" + name)


def test_neighbours_of_the_reserved_range_pass():
    for cp in (0xF77F, 0xF800, 0xE000, 0xF8FF):
        name = chr(cp).encode("utf-8")
        assert names.name_to_key(name) == chr(cp)


@pytest.mark.parametrize("key", [
    escaped(0xC3) + escaped(0xA9),          # escapes that spell "\u00e9": its name maps to "\u00e9"
    "x" + escaped(0xE2) + escaped(0x82) + escaped(0xAC),  # escapes that spell "\u20ac"
    "\udc80", "a\ud800b",                   # surrogates: not UTF-8 text
])
def test_key_to_name_refuses_keys_no_name_maps_to(key):
    with pytest.raises(errors.InvalidObjectName):
        names.key_to_name(key)


def test_key_limit_counts_the_mapped_key():
    # 283 escaped bytes are 849 bytes of key; 284 are 852
    names.validate_key(names.name_to_key(b"\xe9" * 283).encode())
    with pytest.raises(errors.KeyTooLong):
        names.validate_key(names.name_to_key(b"\xe9" * 284).encode())
    assert len(names.name_to_key(b"a/\xff").encode()) == 5
