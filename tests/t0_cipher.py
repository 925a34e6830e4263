"""Tier 0: the sealed blob format (cosfs.cipher).

Run as a script with ``--write-golden`` to create missing golden samples in
tests/golden/ (existing ones are never replaced: they pin the format).
"""

import hashlib
import json
import random
import sys
import types
from pathlib import Path

import pytest
from cryptography.exceptions import UnsupportedAlgorithm
from hypothesis import given, settings
from hypothesis import strategies as st

from cosfs import cipher
from cosfs.cipher import (ALGORITHMS, HEADER_SIZE, SEGMENT_SIZE, TAG_SIZE, BlobContext,
                          open_blob, open_range, seal_blob, sealed_size, segment_range)
from cosfs.errors import CosfsError, IntegrityError

GOLDEN = Path(__file__).parent / "golden"
MIB = 1024 * 1024
STRIDE = SEGMENT_SIZE + TAG_SIZE

SM4_OK = cipher.algorithm_available("SM4")
algorithms_param = pytest.mark.parametrize("alg", [
    "AES256",
    pytest.param("SM4", marks=pytest.mark.skipif(not SM4_OK, reason="no SM4-GCM")),
])


def ctx(chunk=0, object_id=b"o" * 16, blob_id=b"b" * 16):
    return BlobContext(object_id=object_id, chunk_index=chunk, blob_id=blob_id)


CTX = ctx(chunk=7)
KEY = bytes(range(100, 132))


def data(n, seed=1):
    return random.Random(seed).randbytes(n)


def seal(alg, plain, c=CTX, key=KEY, **kw):
    return seal_blob(alg, key, c, plain, **kw)


# ---------------------------------------------------------------------------
# Geometry


def test_constants_and_sizes():
    assert cipher.FORMAT_VERSION == 1
    assert HEADER_SIZE == 44
    assert ALGORITHMS == ("AES256", "SM4")
    assert sealed_size(0) == HEADER_SIZE + TAG_SIZE
    assert sealed_size(1) == HEADER_SIZE + 1 + TAG_SIZE
    assert sealed_size(SEGMENT_SIZE) == HEADER_SIZE + STRIDE
    assert sealed_size(SEGMENT_SIZE + 1) == HEADER_SIZE + STRIDE + 1 + TAG_SIZE
    assert sealed_size(MIB) == HEADER_SIZE + MIB + 16 * TAG_SIZE


def test_segment_range_examples():
    n = 3 * SEGMENT_SIZE + 10
    assert segment_range(n, 0, 1) == (0, HEADER_SIZE, STRIDE)
    assert segment_range(n, SEGMENT_SIZE - 1, 2) == (0, HEADER_SIZE, 2 * STRIDE)
    assert segment_range(n, 3 * SEGMENT_SIZE, 100) == (3, HEADER_SIZE + 3 * STRIDE,
                                                       10 + TAG_SIZE)
    assert segment_range(n, 0, 10 * MIB) == (0, HEADER_SIZE, sealed_size(n) - HEADER_SIZE)
    # Empty or past-the-end ranges read nothing.
    assert segment_range(n, 5, 0)[2] == 0
    assert segment_range(n, n, 10)[2] == 0
    assert segment_range(n, n + 1000, 10)[2] == 0
    assert segment_range(0, 0, 10) == (0, HEADER_SIZE, 0)
    with pytest.raises(ValueError):
        segment_range(n, -1, 1)


def test_context_validation():
    with pytest.raises(ValueError):
        BlobContext(b"short", 0, b"b" * 16)
    with pytest.raises(ValueError):
        BlobContext(b"o" * 16, -1, b"b" * 16)
    with pytest.raises(ValueError):
        BlobContext(b"o" * 16, 0, "b" * 16)


# ---------------------------------------------------------------------------
# Round trips


SIZES = [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, MIB - 1, MIB, MIB + 1,
         4 * MIB]


@algorithms_param
@pytest.mark.parametrize("n", SIZES)
def test_round_trip(alg, n):
    plain = data(n, seed=n)
    blob = seal(alg, plain)
    assert len(blob) == sealed_size(n)
    assert n < 16 or plain[:16] not in blob
    assert open_blob(alg, KEY, CTX, blob, n) == plain
    assert open_blob(alg, KEY, CTX, bytes(blob), n) == plain


@algorithms_param
def test_bytes_like_inputs(alg):
    plain = data(SEGMENT_SIZE * 2 + 5)
    salt = b"s" * 32
    reference = seal(alg, plain, _salt=salt)
    assert seal(alg, bytearray(plain), _salt=salt) == reference
    assert seal(alg, memoryview(plain), _salt=salt) == reference
    padded = b"xx" + plain + b"yy"
    assert seal(alg, memoryview(padded)[2:-2], _salt=salt) == reference
    assert open_blob(alg, KEY, CTX, memoryview(reference), len(plain)) == plain


def test_fallback_without_encrypt_into(monkeypatch):
    plain = data(SEGMENT_SIZE + 77)
    salt = b"t" * 32
    fast = seal("AES256", plain, _salt=salt)
    monkeypatch.setattr(cipher, "_HAVE_INTO", False)
    assert seal("AES256", plain, _salt=salt) == fast
    assert open_blob("AES256", KEY, CTX, fast, len(plain)) == plain


@algorithms_param
def test_open_range_random_offsets(alg):
    rng = random.Random(5)
    n = 5 * SEGMENT_SIZE + 1234
    plain = data(n)
    blob = seal(alg, plain)
    header = blob[:HEADER_SIZE]
    for _ in range(200):
        offset = rng.randrange(n + 10)
        length = rng.choice([0, 1, 4096, rng.randrange(3 * SEGMENT_SIZE)])
        first, coff, clen = segment_range(n, offset, length)
        got = open_range(alg, KEY, CTX, header, blob[coff:coff + clen], first, n)
        start = offset - first * SEGMENT_SIZE
        assert got[start:start + length] == plain[offset:offset + length]


@algorithms_param
def test_open_range_into_a_given_buffer(alg):
    n = 2 * SEGMENT_SIZE + 77
    plain = data(n)
    blob = seal(alg, plain)
    out = bytearray(n + TAG_SIZE)
    got = open_range(alg, KEY, CTX, blob[:HEADER_SIZE], blob[HEADER_SIZE:], 0, n, out=out)
    assert got is out and out == plain
    with pytest.raises(ValueError, match="holds"):
        open_range(alg, KEY, CTX, blob[:HEADER_SIZE], blob[HEADER_SIZE:], 0, n,
                   out=bytearray(n - 1))
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError):
        open_range(alg, KEY, CTX, bad[:HEADER_SIZE], bad[HEADER_SIZE:], 0, n,
                   out=bytearray(n + TAG_SIZE))


_HYP_PLAIN = data(3 * SEGMENT_SIZE + 300, seed=9)


@settings(max_examples=150, deadline=None)
@given(plain_len=st.integers(0, len(_HYP_PLAIN)), offset=st.integers(0, len(_HYP_PLAIN) + 50),
       length=st.integers(0, 2 * SEGMENT_SIZE + 50))
def test_open_range_property(plain_len, offset, length):
    plain = _HYP_PLAIN[:plain_len]
    blob = seal("AES256", plain)
    first, coff, clen = segment_range(plain_len, offset, length)
    assert HEADER_SIZE <= coff and coff + clen <= len(blob)
    got = open_range("AES256", KEY, CTX, blob[:HEADER_SIZE], blob[coff:coff + clen],
                     first, plain_len)
    start = offset - first * SEGMENT_SIZE
    wanted = plain[offset:offset + length]
    assert got[start:start + length] == wanted
    if wanted:
        # Only the touched segments are decrypted: at most one extra segment each side.
        assert len(got) < len(wanted) + 2 * SEGMENT_SIZE
        assert 0 <= start < SEGMENT_SIZE


# ---------------------------------------------------------------------------
# Nonces and subkeys


@algorithms_param
def test_every_seal_is_fresh(alg):
    plain = data(SEGMENT_SIZE + 3)
    a, b = seal(alg, plain), seal(alg, plain)
    assert a != b
    salt_a, salt_b = a[12:HEADER_SIZE], b[12:HEADER_SIZE]
    assert salt_a != salt_b
    assert cipher._subkey(alg, KEY, salt_a) != cipher._subkey(alg, KEY, salt_b)
    # Same plaintext, same key, same context: no ciphertext segment repeats.
    assert a[HEADER_SIZE:HEADER_SIZE + 64] != b[HEADER_SIZE:HEADER_SIZE + 64]
    assert open_blob(alg, KEY, CTX, a, len(plain)) == open_blob(alg, KEY, CTX, b, len(plain))


def test_nonces_are_distinct_per_segment():
    nonces = {cipher._nonce(i) for i in range(1000)}
    assert len(nonces) == 1000 and all(len(n) == 12 for n in nonces)


def test_subkey_depends_on_algorithm():
    salt = b"x" * 32
    assert cipher._subkey("AES256", KEY, salt)[:16] != cipher._subkey("SM4", KEY, salt)
    assert len(cipher._subkey("SM4", KEY, salt)) == 16


def test_new_data_key():
    a, b = cipher.new_data_key("AES256"), cipher.new_data_key("SM4")
    assert len(a) == len(b) == 32 and a != b
    with pytest.raises(ValueError):
        cipher.new_data_key("KMS")


# ---------------------------------------------------------------------------
# Attacks: every one must raise IntegrityError


THREE = 3 * SEGMENT_SIZE  # three full segments, so they can be swapped


@pytest.fixture(scope="module")
def three():
    plain = data(THREE, seed=3)
    return plain, seal("AES256", plain)


def _fails(blob, plain_len, c=CTX, key=KEY, alg="AES256"):
    with pytest.raises(IntegrityError) as info:
        open_blob(alg, key, c, blob, plain_len)
    assert KEY.hex() not in str(info.value) and KEY.hex() not in repr(info.value)
    return str(info.value)


@pytest.mark.parametrize("position", [0, 4, 5, 6, 8, 12, HEADER_SIZE - 1, HEADER_SIZE,
                                      HEADER_SIZE + SEGMENT_SIZE,  # tag of segment 0
                                      HEADER_SIZE + STRIDE + 100, -1])
def test_flipped_bit(three, position):
    plain, blob = three
    bad = bytearray(blob)
    bad[position] ^= 0x01
    _fails(bad, len(plain))


def test_reordered_segments(three):
    plain, blob = three
    h, s = blob[:HEADER_SIZE], blob[HEADER_SIZE:]
    segs = [s[i * STRIDE:(i + 1) * STRIDE] for i in range(3)]
    _fails(h + segs[1] + segs[0] + segs[2], len(plain))
    _fails(h + segs[0] + segs[2] + segs[1], len(plain))


def test_dropped_segments(three):
    plain, blob = three
    h, s = blob[:HEADER_SIZE], blob[HEADER_SIZE:]
    segs = [s[i * STRIDE:(i + 1) * STRIDE] for i in range(3)]
    _fails(h + segs[0] + segs[2], len(plain))          # wrong length
    _fails(h + segs[0] + segs[2], 2 * SEGMENT_SIZE)    # plain_len and final flag
    _fails(h + segs[0] + segs[1], 2 * SEGMENT_SIZE)    # truncated at a boundary
    _fails(h + segs[0], SEGMENT_SIZE)


def test_truncated_and_extended(three):
    plain, blob = three
    for cut in (1, TAG_SIZE, STRIDE - 1, len(blob) - HEADER_SIZE, len(blob) - 1, len(blob)):
        _fails(blob[:len(blob) - cut], len(plain))
    _fails(blob + b"\0", len(plain))
    _fails(blob + blob[HEADER_SIZE:HEADER_SIZE + STRIDE], len(plain))
    _fails(blob + blob[HEADER_SIZE:HEADER_SIZE + STRIDE], len(plain) + SEGMENT_SIZE)
    # The catalog's length is part of every tag.
    short = seal("AES256", plain[:100])
    _fails(short, 99)
    _fails(short[:-1], 99)


def test_empty_blob_is_authenticated():
    blob = seal("AES256", b"")
    assert open_blob("AES256", KEY, CTX, blob, 0) == b""
    _fails(blob[:-1], 0)
    _fails(blob[:HEADER_SIZE], 0)
    _fails(blob, 0, c=ctx(chunk=8))


def test_swapped_between_objects_and_positions(three):
    plain, blob = three
    _fails(blob, len(plain), c=ctx(chunk=7, object_id=b"p" * 16))
    _fails(blob, len(plain), c=ctx(chunk=6))
    _fails(blob, len(plain), c=ctx(chunk=8))


def test_replayed_older_blob_of_same_chunk():
    old_ctx = ctx(chunk=2, blob_id=b"1" * 16)
    new_ctx = ctx(chunk=2, blob_id=b"2" * 16)
    old = seal("AES256", b"old contents", c=old_ctx)
    seal("AES256", b"new contents", c=new_ctx)
    # The old blob put where the new blob's name points: same object, chunk, key, length.
    _fails(old, 12, c=new_ctx)


def test_wrong_key_and_algorithm(three):
    plain, blob = three
    _fails(blob, len(plain), key=bytes(32))
    if SM4_OK:
        message = _fails(blob, len(plain), alg="SM4")
        assert "algorithm" in message


def test_header_checks(three):
    plain, blob = three
    bad = bytearray(blob)
    bad[4] = 2
    message = _fails(bad, len(plain))
    assert "format version 2" in message and "version 1" in message
    bad = bytearray(blob)
    bad[0:4] = b"XXXX"
    assert "magic" in _fails(bad, len(plain))
    bad = bytearray(blob)
    bad[8:12] = (32768).to_bytes(4, "big")
    assert "segment size" in _fails(bad, len(plain))


def test_open_range_attacks(three):
    plain, blob = three
    h = blob[:HEADER_SIZE]
    seg = [blob[HEADER_SIZE + i * STRIDE:HEADER_SIZE + (i + 1) * STRIDE] for i in range(3)]
    n = len(plain)
    assert open_range("AES256", KEY, CTX, h, seg[1], 1, n) == plain[SEGMENT_SIZE:2 * SEGMENT_SIZE]
    cases = [
        (h, seg[1], 0),                # segment moved to another position
        (h, seg[0] + seg[2], 0),       # gap
        (h, seg[2] + seg[2], 2),       # runs past the end
        (h, seg[1][:-1], 1),           # partial segment
        (h, seg[0], 4),                # out of range index
        (h[:-1], seg[0], 0),           # short header
        (b"\0" * HEADER_SIZE, seg[0], 0),
    ]
    for header, segments, first in cases:
        with pytest.raises(IntegrityError):
            open_range("AES256", KEY, CTX, header, segments, first, n)


def test_key_bytes_never_in_messages():
    for call in (lambda: seal("AES256", b"x", key=KEY[:31]),
                 lambda: seal("KMS", b"x"),
                 lambda: open_blob("AES256", KEY, CTX, b"junk", 1)):
        with pytest.raises((ValueError, IntegrityError)) as info:
            call()
        assert KEY.hex() not in str(info.value) and repr(KEY) not in str(info.value)


def test_sm4_unavailable_is_a_clear_error(monkeypatch):
    def refuse(key):
        raise UnsupportedAlgorithm("no SM4 here")
    fake = types.SimpleNamespace(SM4=refuse, AES=cipher.algorithms.AES)
    monkeypatch.setattr(cipher, "algorithms", fake)
    assert not cipher.algorithm_available("SM4")
    with pytest.raises(CosfsError, match="SM4-GCM is not supported"):
        seal("SM4", b"abc")


# ---------------------------------------------------------------------------
# Golden samples: blobs written by format version 1 must open forever.


def golden_plaintext(n):
    return bytes((i * 7 + (i >> 8) * 13 + 1) & 0xFF for i in range(n))


GOLDEN_SPECS = [
    # name, algorithm, plain_len, chunk_index
    ("aes256-empty", "AES256", 0, 0),
    ("aes256-short", "AES256", 100, 3),
    ("aes256-two-segments", "AES256", SEGMENT_SIZE + 1000, 1),
    ("sm4-short", "SM4", 100, 0),
    ("sm4-two-segments", "SM4", SEGMENT_SIZE + 17, 2),
]
GOLDEN_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
GOLDEN_OBJECT = bytes.fromhex("00112233445566778899aabbccddeeff")


def golden_manifest():
    entries = []
    for number, (name, alg, n, chunk) in enumerate(GOLDEN_SPECS):
        entries.append({
            "file": name + ".bin", "algorithm": alg, "plain_len": n, "chunk_index": chunk,
            "data_key": GOLDEN_KEY.hex(), "object_id": GOLDEN_OBJECT.hex(),
            "blob_id": bytes([0xB0 + number] * 16).hex(),
            "salt": bytes([0x50 + number] * 32).hex(),
            "plain_sha256": hashlib.sha256(golden_plaintext(n)).hexdigest(),
        })
    return entries


def _golden_entries():
    return json.loads((GOLDEN / "manifest.json").read_text())


@pytest.mark.parametrize("entry", golden_manifest(), ids=lambda e: e["file"])
def test_golden_sample(entry):
    if entry["algorithm"] == "SM4" and not SM4_OK:
        pytest.skip("no SM4-GCM")
    stored = {e["file"]: e for e in _golden_entries()}
    assert stored[entry["file"]] == entry
    blob = (GOLDEN / entry["file"]).read_bytes()
    c = BlobContext(bytes.fromhex(entry["object_id"]), entry["chunk_index"],
                    bytes.fromhex(entry["blob_id"]))
    key = bytes.fromhex(entry["data_key"])
    plain = open_blob(entry["algorithm"], key, c, blob, entry["plain_len"])
    assert hashlib.sha256(plain).hexdigest() == entry["plain_sha256"]
    assert plain == golden_plaintext(entry["plain_len"])
    # The writer still produces the same bytes from the same inputs.
    again = seal_blob(entry["algorithm"], key, c, plain, _salt=bytes.fromhex(entry["salt"]))
    assert again == blob


def write_golden():
    GOLDEN.mkdir(exist_ok=True)
    manifest = GOLDEN / "manifest.json"
    entries = golden_manifest()
    if manifest.exists() and json.loads(manifest.read_text()) != entries:
        sys.exit("golden/manifest.json differs from the specs: "
                 "add new samples, never edit old ones")
    for e in entries:
        path = GOLDEN / e["file"]
        if path.exists():
            continue
        c = BlobContext(bytes.fromhex(e["object_id"]), e["chunk_index"],
                        bytes.fromhex(e["blob_id"]))
        blob = seal_blob(e["algorithm"], bytes.fromhex(e["data_key"]), c,
                         golden_plaintext(e["plain_len"]), _salt=bytes.fromhex(e["salt"]))
        path.write_bytes(blob)
        print("wrote", path)
    if not manifest.exists():
        manifest.write_text(json.dumps(entries, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-golden"]:
        write_golden()
    else:
        sys.exit("usage: python tests/t0_cipher.py --write-golden")
