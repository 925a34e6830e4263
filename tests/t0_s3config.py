"""The ``stores:`` section of the config (docs/config.md, "S3 stores")."""

import textwrap
from pathlib import Path

import pytest

from cosfs import config, errors
from cosfs.config import GiB, MiB, S3StoreSettings

BASE = """\
store: ./data
keys: ./keys
appid: "1250000000"
regions: [ap-guangzhou, ap-beijing]
"""


def load(tmp_path, text):
    path = tmp_path / "mount.yaml"
    path.write_text(BASE + textwrap.dedent(text))
    return config.load(path)


def load_error(tmp_path, text):
    with pytest.raises(errors.ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    return message.replace(str(tmp_path / "mount.yaml"), "F")


def test_no_stores_means_all_local(tmp_path):
    cfg = load(tmp_path, "")
    assert cfg.stores == () and cfg.store_of("ap-guangzhou") is None


def test_s3_defaults_and_mixed_regions(tmp_path):
    cfg = load(tmp_path, """\
        stores:
          ap-beijing:
            type: s3
            endpoint: http://127.0.0.1:8333/
            bucket: cosfs-chunks
            credentials: s3.credentials
          ap-guangzhou: {type: local}
        """)
    s3 = cfg.store_of("ap-beijing")
    assert cfg.store_of("ap-guangzhou") is None
    assert s3 == S3StoreSettings(endpoint="http://127.0.0.1:8333", bucket="cosfs-chunks",
                                 credentials=tmp_path / "s3.credentials",
                                 cache=tmp_path / "data" / "cache" / "ap-beijing",
                                 staging=tmp_path / "data" / "staging" / "ap-beijing")
    assert not s3.write_back and s3.staging_size == 1 * GiB and s3.upload_threads == 4
    assert s3.verify_tls and s3.retry_time == 60 and s3.cache_size == 1 * GiB
    assert s3.prefix == "" and s3.signing_region is None and s3.max_connections == 16


def test_s3_all_keys(tmp_path):
    s3 = load(tmp_path, """\
        stores:
          ap-guangzhou:
            type: s3
            endpoint: https://s3.example.com
            bucket: my.chunks-1
            prefix: prod/gz/
            credentials: /etc/cosfs/s3.credentials
            signing_region: eu-west-1
            verify_tls: false
            connect_timeout: 2
            read_timeout: 10.5
            retry_time: 120
            cache: /var/cache/cosfs
            cache_size: 64MiB
            max_connections: 32
            write_back: true
            staging: /var/spool/cosfs
            staging_size: 256MiB
            upload_threads: 8
        """).store_of("ap-guangzhou")
    assert (s3.endpoint, s3.bucket, s3.prefix, s3.signing_region) == \
        ("https://s3.example.com", "my.chunks-1", "prod/gz/", "eu-west-1")
    assert s3.credentials == Path("/etc/cosfs/s3.credentials")
    assert not s3.verify_tls
    assert (s3.connect_timeout, s3.read_timeout, s3.retry_time) == (2.0, 10.5, 120.0)
    assert s3.cache == Path("/var/cache/cosfs") and s3.cache_size == 64 * MiB
    assert s3.max_connections == 32
    assert s3.write_back and s3.staging == Path("/var/spool/cosfs")
    assert (s3.staging_size, s3.upload_threads) == (256 * MiB, 8)


@pytest.mark.parametrize("item,expected", [
    ("{type: s3, bucket: b-1, credentials: c}", "F:6: stores.ap-beijing.endpoint: required key"),
    ("{type: s3, endpoint: ftp://x, bucket: b-1, credentials: c}", "expected an http:// or https:// URL"),
    ("{type: s3, endpoint: 'http://x/path', bucket: b-1, credentials: c}", "with no path"),
    ("{type: s3, endpoint: 'http://x', bucket: B_1, credentials: c}", "expected an S3 bucket name"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1}", "stores.ap-beijing.credentials: required"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, prefix: /p}", "not starting with /"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, retry_time: 0}", "retry_time: expected a number"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, verify_tls: 'no'}", "verify_tls: expected true or false"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, max_connections: 0}", "from 1 to 256"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, cache: data/blobs/x}", "expected a folder outside"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, buckett: x}", "unknown key (did you mean 'bucket'?)"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, write_back: 1}", "write_back: expected true or false"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, staging: data/blobs}", "staging: expected a folder apart from the store's blobs"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, staging: data/cache/ap-beijing/x}", "apart from the read cache"),
    ("{type: s3, endpoint: 'http://x', bucket: b-1, credentials: c, upload_threads: 0}", "upload_threads: expected a whole number from 1 to 64"),
    ("{type: nfs}", "stores.ap-beijing.type: expected local or s3"),
    ("{type: local, endpoint: 'http://x'}", "stores.ap-beijing.endpoint: unknown key"),
    ("s3", "expected a mapping with type"),
])
def test_s3_errors(tmp_path, item, expected):
    message = load_error(tmp_path, "stores:\n  ap-beijing: %s\n" % item)
    assert expected in message, message


def test_two_regions_cannot_share_an_upload_queue(tmp_path):
    message = load_error(tmp_path, """\
        stores:
          ap-beijing: {type: s3, endpoint: 'http://x', bucket: b-1, credentials: c,
                       staging: q}
          ap-guangzhou: {type: s3, endpoint: 'http://x', bucket: b-2, credentials: c,
                         staging: q/sub}
        """)
    assert "staging: expected a folder apart from the upload queue of ap-beijing" in message


def test_store_of_an_unknown_region(tmp_path):
    message = load_error(tmp_path, "stores:\n  ap-chengdu: {type: local}\n")
    assert "stores.ap-chengdu: expected one of the configured regions" in message
