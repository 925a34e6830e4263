"""Tier 0: the encryption resolver, one test per rule of the COS bucket-encryption page."""

import ast
import errno
from pathlib import Path

import pytest

from cosfs import errors, resolver
from cosfs.resolver import EncryptionSpec, WriterKind, parse_override, resolve

AES = EncryptionSpec("AES256")
SM4 = EncryptionSpec("SM4")
KMS = EncryptionSpec("KMS", kms_key_id="key-1")


# -- NORMAL writers: "If your PUT request does not contain encryption information, the uploaded
#    objects will be encrypted with the encryption configuration of the bucket ... If it contains
#    encryption information, the objects will be encrypted with the contained information."

def test_normal_without_override_gets_bucket_default():
    assert resolve(override=None, bucket_default=AES) == AES


def test_normal_override_beats_bucket_default():
    assert resolve(override=SM4, bucket_default=AES) == SM4
    assert resolve(override=KMS, bucket_default=AES) == KMS


def test_normal_override_without_bucket_default():
    assert resolve(override=AES, bucket_default=None) == AES


def test_normal_nothing_means_plaintext():
    assert resolve(override=None, bucket_default=None) is None


def test_normal_is_the_default_writer():
    assert resolve(override=None, bucket_default=SM4, writer=WriterKind.NORMAL) == SM4


# -- Inventory reports: inventory's own encryption if configured, else the bucket's.

def test_inventory_without_own_encryption_gets_bucket_default():
    assert resolve(override=None, bucket_default=SM4, writer=WriterKind.INVENTORY) == SM4


def test_inventory_own_encryption_beats_bucket_default():
    got = resolve(override=None, bucket_default=SM4, writer=WriterKind.INVENTORY,
                  inventory_encryption=AES)
    assert got == AES


def test_inventory_own_encryption_without_bucket_default():
    got = resolve(override=None, bucket_default=None, writer=WriterKind.INVENTORY,
                  inventory_encryption=AES)
    assert got == AES


def test_inventory_nothing_means_plaintext():
    assert resolve(override=None, bucket_default=None, writer=WriterKind.INVENTORY) is None


# -- Origin pull: "the data pulled back to the bucket will be encrypted with the encryption
#    configuration of the bucket by default."

def test_origin_pull_gets_bucket_default():
    assert resolve(override=None, bucket_default=AES, writer=WriterKind.ORIGIN_PULL) == AES


def test_origin_pull_without_bucket_default_is_plaintext():
    assert resolve(override=None, bucket_default=None, writer=WriterKind.ORIGIN_PULL) is None


def test_origin_pull_ignores_override():
    assert resolve(override=SM4, bucket_default=AES, writer=WriterKind.ORIGIN_PULL) == AES


# -- Replication destination: unencrypted sources get the destination default; encrypted
#    sources keep their encryption "and the bucket encryption settings will not be honored".

def test_replica_of_plain_object_gets_destination_default():
    got = resolve(override=None, bucket_default=AES, writer=WriterKind.REPLICA, source_encryption=None)
    assert got == AES


def test_replica_of_encrypted_object_keeps_source_encryption():
    got = resolve(override=None, bucket_default=AES, writer=WriterKind.REPLICA, source_encryption=SM4)
    assert got == SM4


def test_replica_of_encrypted_object_into_plain_bucket_stays_encrypted():
    got = resolve(override=None, bucket_default=None, writer=WriterKind.REPLICA, source_encryption=KMS)
    assert got == KMS


def test_replica_of_plain_object_into_plain_bucket_is_plaintext():
    assert resolve(override=None, bucket_default=None, writer=WriterKind.REPLICA) is None


def test_unknown_writer_is_refused():
    with pytest.raises(ValueError):
        resolve(override=None, bucket_default=None, writer="normal")


# -- Specs

def test_stored_names():
    assert AES.stored_name == "AES256"
    assert SM4.stored_name == "SM4"
    assert KMS.stored_name == "cos/kms"
    assert {s.stored_name for s in (AES, SM4, KMS)} == resolver.OVERRIDE_VALUES


@pytest.mark.parametrize(
    "kwargs",
    [dict(algorithm="aes256"), dict(algorithm="cos/kms"), dict(algorithm="AES256", kms_key_id="k"),
     dict(algorithm="SM4", kms_algorithm="SM4"), dict(algorithm="KMS", kms_key_id=""),
     dict(algorithm="KMS", kms_algorithm="DES")],
)
def test_invalid_specs(kwargs):
    with pytest.raises(errors.InvalidArgument):
        EncryptionSpec(**kwargs)


def test_specs_are_hashable_values():
    assert EncryptionSpec("AES256") == AES
    assert len({AES, EncryptionSpec("AES256"), SM4}) == 2


# -- parse_override

@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"AES256", AES),
        (b"SM4", SM4),
        (b"cos/kms", EncryptionSpec("KMS")),
        (b"AES256\n", AES),
        (b"AES256\x00", AES),
        (b"AES256 \r\n\x00", AES),
        (b"SM4\t", SM4),
        (bytearray(b"AES256"), AES),
        (memoryview(b"SM4\n"), SM4),
    ],
)
def test_parse_override_accepts(raw, expected):
    assert parse_override(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [b"", b"\n", b"\x00", b"aes256", b"KMS", b"AES-256", b" AES256", b"AES256x", b"AES256\x00x",
     b"cos/KMS", b"\xff\xfe", b"AES256" * 1000, b"AES128", b"cos/kms/"],
)
def test_parse_override_refuses(raw):
    with pytest.raises(errors.InvalidArgument) as info:
        parse_override(raw)
    assert info.value.errno == errno.EINVAL
    assert len(str(info.value)) < 200


def test_parse_override_refuses_non_bytes():
    with pytest.raises(errors.InvalidArgument):
        parse_override(None)


def test_resolver_imports_only_errors():
    tree = ast.parse(Path(resolver.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                imported.update(alias.name for alias in node.names)
            elif node.module.startswith("cosfs"):
                imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith("cosfs"))
    assert imported <= {"errors"}
