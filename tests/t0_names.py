"""Tier 0: COS naming rules for buckets, regions and object keys."""

import errno

import pytest

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
