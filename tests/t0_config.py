"""Tier 0: the YAML mount configuration and its error messages."""

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from cosfs import config, errors
from cosfs.config import BucketSpec, KiB, MiB, GiB, parse_size

EXAMPLE = Path(__file__).resolve().parent.parent / "mount.example.yaml"

MINIMAL = """\
store: ./data
keys: ./keys
appid: "1250000000"
"""


def write(tmp_path, text, name="mount.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(errors.ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message.replace(str(path), "F")


# -- the example and defaults

def test_example_in_empty_folder_is_a_fresh_store(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "mount.yaml")
    cfg = config.load(tmp_path / "mount.yaml")
    assert cfg.path == tmp_path / "mount.yaml"
    assert cfg.mountpoint == tmp_path / "mnt"
    assert cfg.store == tmp_path / "data"
    assert cfg.keys == tmp_path / "keys"
    assert cfg.appid == "1250000000"
    assert cfg.region == "ap-guangzhou"
    assert cfg.regions == ("ap-guangzhou", "ap-shanghai")
    assert cfg.buckets == (
        BucketSpec("photos-1250000000", "ap-guangzhou", None),
        BucketSpec("secrets-1250000000", "ap-shanghai", "AES256"),
    )
    assert cfg.chunk_size == MiB
    assert cfg.cache_size == 256 * MiB
    assert cfg.bucket("secrets-1250000000").encryption == "AES256"
    assert cfg.bucket("nope-1250000000") is None
    # Nothing outside the folder is referred to.
    for p in (cfg.mountpoint, cfg.store, cfg.keys):
        assert tmp_path in p.parents


def test_minimal_file_defaults(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL))
    assert cfg.mountpoint is None
    assert cfg.region == "ap-guangzhou" and cfg.regions == ("ap-guangzhou",)
    assert cfg.buckets == ()
    assert cfg.chunk_size == MiB
    assert cfg.cache_size == 256 * MiB
    assert cfg.write_buffer == 256 * MiB
    assert cfg.log_file is None and cfg.log_level == "warning"
    assert (cfg.allow_other, cfg.writeback_cache, cfg.fsync_on_close) == (False, False, False)
    assert cfg.default_permissions is False
    assert cfg.request_poll_us == 50
    assert cfg.fuse_loop == "native"


def test_relative_paths_follow_the_file_not_the_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, MINIMAL + "log_file: logs/cosfs.log\nmountpoint: ../mnt\n")
    monkeypatch.chdir("/")
    cfg = config.load(path)
    assert cfg.store == sub / "data"
    assert cfg.log_file == sub / "logs" / "cosfs.log"
    assert cfg.mountpoint == tmp_path / "mnt"


def test_relative_config_path(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    cfg = config.load("mount.yaml")
    assert cfg.path == tmp_path / "mount.yaml"
    assert cfg.store == tmp_path / "data"


def test_command_line_mountpoint_wins(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL + "mountpoint: ./mnt\n")
    monkeypatch.chdir(tmp_path)
    assert config.load(path, mountpoint="/somewhere/else").mountpoint == Path("/somewhere/else")
    assert config.load(path, mountpoint="rel").mountpoint == tmp_path / "rel"


def test_all_keys(tmp_path):
    cfg = config.load(write(tmp_path, """\
        mountpoint: /mnt/cos
        store: /srv/cosfs/data
        keys: /srv/cosfs/keys
        appid: 1250000000          # unquoted: read as a number, accepted
        region: ap-shanghai
        regions: [ap-guangzhou, ap-shanghai, ap-shanghai]
        buckets:
          - logs-1250000000        # bare name: default region, no encryption
          - {name: vault-1250000000, region: ap-guangzhou, encryption: SM4}
          - name: plain-1250000000
            encryption: null
        chunk_size: 4 MiB
        cache_size: 1g
        write_buffer: 128M
        log_file: ~/cosfs.log
        log_level: DEBUG
        allow_other: yes
        default_permissions: true
        writeback_cache: on
        fsync_on_close: true
        request_poll_us: 0
        fuse_loop: pyfuse3
    """))
    assert cfg.mountpoint == Path("/mnt/cos")
    assert cfg.appid == "1250000000"
    assert cfg.regions == ("ap-guangzhou", "ap-shanghai")
    assert cfg.buckets == (
        BucketSpec("logs-1250000000", "ap-shanghai", None),
        BucketSpec("vault-1250000000", "ap-guangzhou", "SM4"),
        BucketSpec("plain-1250000000", "ap-shanghai", None),
    )
    assert (cfg.chunk_size, cfg.cache_size, cfg.write_buffer) == (4 * MiB, GiB, 128 * MiB)
    assert cfg.log_file == Path(os.path.expanduser("~/cosfs.log"))
    assert cfg.log_level == "debug"
    assert (cfg.allow_other, cfg.writeback_cache, cfg.fsync_on_close) == (True, True, True)
    assert cfg.default_permissions is True
    assert cfg.request_poll_us == 0
    assert cfg.fuse_loop == "pyfuse3"


def test_region_defaults_to_first_of_regions(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL + "regions: [ap-beijing, ap-chengdu]\n"))
    assert cfg.region == "ap-beijing"


def test_cache_can_be_off(tmp_path):
    assert config.load(write(tmp_path, MINIMAL + "cache_size: 0\n")).cache_size == 0


def test_from_dict(tmp_path):
    cfg = config.from_dict(
        {"store": "d", "keys": str(tmp_path / "k"), "appid": "7", "buckets": ["a-7"]},
        base_dir=tmp_path,
    )
    assert cfg.path is None
    assert cfg.store == tmp_path / "d" and cfg.keys == tmp_path / "k"
    assert cfg.buckets == (BucketSpec("a-7", "ap-guangzhou", None),)
    with pytest.raises(errors.ConfigError) as info:
        config.from_dict({"store": "d", "keys": "k", "appid": "7", "chunk_size": "1MB"},
                         base_dir=tmp_path, source="cli")
    assert str(info.value).startswith("cli: chunk_size: ambiguous unit MB")


def test_config_is_frozen(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        cfg.appid = "1"


# -- sizes

@pytest.mark.parametrize(
    "value, expected",
    [(1048576, MiB), ("1048576", MiB), ("1MiB", MiB), ("256 MiB", 256 * MiB), ("64KiB", 64 * KiB),
     ("64K", 64 * KiB), ("64k", 64 * KiB), ("1GiB", GiB), ("1G", GiB), ("2T", 2 * 1024 * GiB),
     ("512B", 512), (0, 0), (" 3 mib ", 3 * MiB)],
)
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value", [True, False, 1.5, "1.5MiB", "-1", -1, "MiB", "1 XB", "", None, [1], "1MB", "512KB", "1gb"],
)
def test_parse_size_refuses(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_format_size():
    assert config.format_size(MiB) == "1MiB"
    assert config.format_size(64 * KiB) == "64KiB"
    assert config.format_size(100) == "100"
    assert config.format_size(0) == "0"


# -- errors: file level

def test_missing_file(tmp_path):
    with pytest.raises(errors.ConfigError) as info:
        config.load(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: cannot read config file: No such file or directory"


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(errors.ConfigError, match="cannot read config file"):
        config.load(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "mount.yaml"
    path.write_bytes(b"store: \xff\n")
    with pytest.raises(errors.ConfigError, match="not UTF-8"):
        config.load(path)


def test_malformed_yaml_has_line(tmp_path):
    msg = load_error(tmp_path, "store: ./data\nkeys: [./keys\nappid: '1'\n")
    assert msg.startswith("F:3: malformed YAML:") or msg.startswith("F:4: malformed YAML:")
    msg = load_error(tmp_path, "store: ./data\n  bad indent: x\n")
    assert msg.startswith("F:2: malformed YAML:")


def test_unsafe_tags_are_refused(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "log_file: !!python/object/apply:os.system ['true']\n")
    assert msg.startswith("F:4: malformed YAML:")
    assert "constructor" in msg


def test_several_documents(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "---\n" + MINIMAL)
    assert "malformed YAML" in msg


@pytest.mark.parametrize(
    "text, found",
    [("", "an empty document"), ("# only a comment\n", "an empty document"), ("- a\n- b\n", "a list"),
     ("just text\n", "the text 'just text'")],
)
def test_top_level_not_a_mapping(tmp_path, text, found):
    msg = load_error(tmp_path, text)
    assert msg.startswith("F")
    assert msg.endswith(f"expected a mapping of settings at the top level, found {found}")


def test_duplicate_key(tmp_path):
    assert load_error(tmp_path, MINIMAL + "store: ./other\n") == "F:4: store: duplicate key"


def test_aliases_neither_loop_nor_explode(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for i in "bcdefghi":
        prev = chr(ord(i) - 1)
        bomb += f"{i}: &{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
    msg = load_error(tmp_path, MINIMAL + bomb)
    assert msg.startswith("F:4: a: unknown key")


# -- errors: keys and values

def test_unknown_key_suggests(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "chunksize: 1MiB\n")
    assert msg == "F:4: chunksize: unknown key (did you mean 'chunk_size'?)"


def test_unknown_key_without_near_match(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "zzzzzz: 1\n")
    assert msg.startswith("F:4: zzzzzz: unknown key; known keys: mountpoint, store")


def test_unknown_bucket_key(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "buckets:\n  - name: a-1250000000\n    encrypt: AES256\n")
    assert msg == "F:6: buckets[0].encrypt: unknown key (did you mean 'encryption'?)"


def test_non_text_key(tmp_path):
    assert load_error(tmp_path, MINIMAL + "1: x\n").startswith("F: keys must be names, found the number 1")


@pytest.mark.parametrize("key", ["store", "keys", "appid"])
def test_required_keys(tmp_path, key):
    text = "".join(line + "\n" for line in MINIMAL.splitlines() if not line.startswith(key + ":"))
    assert load_error(tmp_path, text) == f"F: {key}: required key is missing"


def test_bool_where_size(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "cache_size: yes\n")
    assert msg.startswith("F:4: cache_size: expected a size such as 1MiB or 1048576, found the boolean true")
    assert "yes/no" in msg


def test_text_where_bool(tmp_path):
    msg = load_error(tmp_path, MINIMAL + 'allow_other: "true"\n')
    assert msg == "F:4: allow_other: expected true or false, found the text 'true'"


def test_number_where_path(tmp_path):
    msg = load_error(tmp_path, "store: 5\nkeys: ./k\nappid: '1'\n")
    assert msg == "F:1: store: expected text, found the number 5"


def test_empty_required_path(tmp_path):
    msg = load_error(tmp_path, "store:\nkeys: ./k\nappid: '1'\n")
    assert msg == "F:1: store: expected text, found an empty value"


@pytest.mark.parametrize("appid", ["'12a'", "''", "-5", "yes", "[1]"])
def test_bad_appid(tmp_path, appid):
    msg = load_error(tmp_path, f"store: d\nkeys: k\nappid: {appid}\n")
    assert msg.startswith("F:3: appid: expected the APPID as digits")


def test_bad_log_level(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "log_level: loud\n")
    assert msg == "F:4: log_level: expected one of debug, info, warning, error, found the text 'loud'"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("chunk_size: 1MB", "F:4: chunk_size: ambiguous unit MB: write MiB (powers of 1024), found the text '1MB'"),
        ("chunk_size: 1.5MiB", "F:4: chunk_size: expected a whole number with an optional unit"),
        ("chunk_size: 100000", "F:4: chunk_size: expected a multiple of 64KiB between 64KiB and 64MiB, found 100000"),
        ("chunk_size: 32KiB", "F:4: chunk_size: expected a multiple of 64KiB between 64KiB and 64MiB, found 32KiB"),
        ("chunk_size: 128MiB", "F:4: chunk_size: expected a multiple of 64KiB between 64KiB and 64MiB, found 128MiB"),
        ("chunk_size: -1", "F:4: chunk_size: expected a size that is not negative, found the number -1"),
        ("chunk_size: 1.0", "F:4: chunk_size: expected a size such as 1MiB or 1048576, found the number 1.0"),
        ("cache_size: 64KiB", "F:4: cache_size: expected 0 (no cache) or at least chunk_size (1MiB), found 64KiB"),
        ("write_buffer: 512K", "F:4: write_buffer: expected at least chunk_size (1MiB), found 512KiB"),
    ],
)
def test_bad_sizes(tmp_path, line, expected):
    assert load_error(tmp_path, MINIMAL + line + "\n").startswith(expected)


@pytest.mark.parametrize("value", ["libfuse", "true", "1"])
def test_bad_fuse_loop(tmp_path, value):
    assert load_error(tmp_path, MINIMAL + "fuse_loop: %s\n" % value) == (
        "F:4: fuse_loop: expected one of native, pyfuse3, found "
        + {"libfuse": "the text 'libfuse'", "1": "the number 1",
           "true": "the boolean true (YAML reads yes/no/on/off as booleans)"}[value])


@pytest.mark.parametrize("value", ["-1", "1001", "true", "50us", "2.5"])
def test_bad_request_poll(tmp_path, value):
    assert load_error(tmp_path, MINIMAL + "request_poll_us: %s\n" % value) == (
        "F:4: request_poll_us: expected a whole number of microseconds from 0 to 1000, found "
        + {"-1": "the number -1", "1001": "the number 1001",
           "true": "the boolean true (YAML reads yes/no/on/off as booleans)",
           "50us": "the text '50us'", "2.5": "the number 2.5"}[value])


def test_chunk_size_bounds_accepted(tmp_path):
    for value, size in (("64KiB", 64 * KiB), ("64MiB", 64 * MiB), ("192K", 192 * KiB)):
        text = MINIMAL + f"chunk_size: {value}\nwrite_buffer: 64MiB\ncache_size: 64MiB\n"
        assert config.load(write(tmp_path, text)).chunk_size == size


# -- errors: regions and buckets

def test_unknown_region_shape(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "region: Guangzhou\n")
    assert msg == "F:4: region: expected a region name such as ap-guangzhou, found the text 'Guangzhou'"


def test_region_not_in_regions(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "region: ap-beijing\nregions: [ap-guangzhou, ap-shanghai]\n")
    assert msg == ("F:4: region: expected one of the configured regions (ap-guangzhou, ap-shanghai), "
                   "found 'ap-beijing'")


def test_bad_entry_in_regions(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "regions:\n  - ap-guangzhou\n  - 42\n")
    assert msg == "F:6: regions[1]: expected a region name such as ap-guangzhou, found the number 42"


def test_empty_regions(tmp_path):
    assert load_error(tmp_path, MINIMAL + "regions: []\n").startswith("F:4: regions: expected a non-empty list")


def test_bucket_region_not_allowed(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "buckets:\n  - name: a-1250000000\n    region: ap-tokyo\n")
    assert msg == "F:6: buckets[0].region: expected one of the configured regions (ap-guangzhou), found 'ap-tokyo'"


def test_invalid_bucket_name_points_at_name(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "buckets:\n  - name: ok-1250000000\n  - name: Bad_Name-1250000000\n")
    assert msg.startswith("F:6: buckets[1].name: InvalidBucketName: bucket name 'Bad_Name-1250000000'")


def test_bare_bucket_name_error(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "buckets: [ok-1250000000, noappid]\n")
    assert msg.startswith("F:4: buckets[1]: InvalidBucketName: bucket name 'noappid' has no -APPID")


def test_bucket_of_other_appid(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "buckets: [photos-1250000001]\n")
    assert "does not match the configured APPID" in msg


def test_bucket_name_too_long(tmp_path):
    name = "a" * 25 + "-1250000000"
    msg = load_error(tmp_path, MINIMAL + f"buckets: [{name}]\n")
    assert msg.startswith("F:4: buckets[0]: BucketNameTooLong:")


def test_duplicate_bucket(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "buckets: [a-1250000000, {name: a-1250000000}]\n")
    assert msg == "F:4: buckets[1].name: bucket 'a-1250000000' is listed twice"


@pytest.mark.parametrize("value, found", [("KMS", "the text 'KMS'"), ("aes256", "the text 'aes256'"),
                                          ("true", "the boolean true")])
def test_bad_bucket_encryption(tmp_path, value, found):
    msg = load_error(tmp_path, MINIMAL + f"buckets:\n  - name: a-1250000000\n  - name: b-1250000000\n"
                                         f"    encryption: {value}\n")
    assert msg.startswith(f"F:7: buckets[1].encryption: expected AES256, SM4 or nothing, found {found}")


def test_bucket_without_name(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "buckets:\n  - region: ap-guangzhou\n")
    assert msg == "F:5: buckets[0].name: required key is missing"


def test_buckets_not_a_list(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "buckets: a-1250000000\n")
    assert msg == "F:4: buckets: expected a list of buckets, found the text 'a-1250000000'"


# -- errors: folders

def test_keys_inside_store(tmp_path):
    msg = load_error(tmp_path, "store: ./data\nkeys: ./data/keys\nappid: '1'\n")
    assert msg.startswith("F:2: keys: expected a folder outside store")


def test_keys_same_as_store(tmp_path):
    msg = load_error(tmp_path, "store: ./data\nkeys: data/.\nappid: '1'\n")
    assert msg.startswith("F:2: keys: expected a folder outside store")


def test_keys_inside_store_through_symlink(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    msg = load_error(tmp_path, "store: ./data\nkeys: ./link/keys\nappid: '1'\n")
    assert msg.startswith("F:2: keys: expected a folder outside store")


def test_store_inside_keys(tmp_path):
    msg = load_error(tmp_path, "store: ./keys/data\nkeys: ./keys\nappid: '1'\n")
    assert msg.startswith("F:1: store: expected a folder outside keys")


def test_store_inside_mountpoint(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "mountpoint: .\n")
    assert msg.startswith("F:1: store: expected a folder apart from the mountpoint")


def test_mountpoint_override_is_checked_too(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(errors.ConfigError, match="keys: expected a folder apart from the mountpoint"):
        config.load(path, mountpoint=tmp_path / "keys" / "sub")


def test_error_attributes(tmp_path):
    path = write(tmp_path, MINIMAL + "chunk_size: x\n")
    with pytest.raises(errors.ConfigError) as info:
        config.load(path)
    assert info.value.code == "InvalidConfig"


def test_long_values_are_cut(tmp_path):
    msg = load_error(tmp_path, MINIMAL + "log_level: " + "x" * 5000 + "\n")
    assert len(msg) < 200


def test_only_config_imports_yaml():
    root = Path(config.__file__).parent
    users = [p.name for p in root.glob("*.py") if "import yaml" in p.read_text()]
    assert users == ["config.py"]


@pytest.mark.parametrize("extra,uid,options", [
    ("", 0, set()),                                   # root only: the kernel checks nothing
    ("default_permissions: true\n", 0, {"default_permissions"}),
    ("allow_other: true\n", 0, {"allow_other", "default_permissions"}),
    ("", 1000, {"default_permissions"}),              # a user's mount: its owner is checked
    ("allow_other: true\n", 1000, {"allow_other", "default_permissions"}),
])
def test_who_checks_permissions(tmp_path, extra, uid, options):
    from cosfs.mount import permission_options
    p = tmp_path / "c.yaml"
    p.write_text(MINIMAL + extra)
    assert permission_options(config.load(p), uid) == options
