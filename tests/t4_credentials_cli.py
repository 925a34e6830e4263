"""Tier 4: ``cosfs credentials add|list|remove`` as a user runs it (no mount needed)."""

import os
import re
import stat
import subprocess
import sys

import pytest

from conftest import write_config
from cosfs import credentials


def cosfs(*args):
    return subprocess.run([sys.executable, "-m", "cosfs.cli", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def config(tmp_path):
    return write_config(str(tmp_path / "site"))


def _default_file(config):
    from cosfs import config as cfgmod
    cfg = cfgmod.load(config)
    api = getattr(cfg, "api", None)
    path = getattr(api, "credentials", None)
    return os.fspath(path) if path is not None else os.path.join(cfg.store, "credentials")


def _added(res):
    assert res.returncode == 0, res.stderr
    sid = re.search(r"SecretId:\s+(AKID\w{32})", res.stdout).group(1)
    key = re.search(r"SecretKey:\s+(\w{40})", res.stdout).group(1)
    return sid, key


def test_add_list_remove(config):
    sid, key = _added(cosfs("credentials", "add", "--config", config))
    ro, ro_key = _added(cosfs("credentials", "add", "--config", config, "--read-only",
                              "--bucket", "photos-1250000000", "--bucket", "docs-1250000000"))
    path = _default_file(config)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert credentials.load(path).lookup(sid).secret_key == key
    assert credentials.load(path).lookup(ro).buckets == ("photos-1250000000", "docs-1250000000")

    res = cosfs("credentials", "list", "--config", config)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2
    assert sid in lines[0] and "full" in lines[0] and "all buckets" in lines[0]
    assert ro in lines[1] and "read-only" in lines[1] and "photos-1250000000" in lines[1]
    assert key not in res.stdout and ro_key not in res.stdout

    res = cosfs("credentials", "remove", sid, "--config", config)
    assert res.returncode == 0 and sid in res.stdout
    res = cosfs("credentials", "remove", sid, "--config", config)
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith("cosfs: InvalidAccessKeyId: ")
    assert sid not in cosfs("credentials", "list", "--config", config).stdout


def test_file_option(tmp_path):
    path = str(tmp_path / "creds")
    sid, _ = _added(cosfs("credentials", "add", "--file", path))
    assert sid in cosfs("credentials", "list", "--file", path).stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_group_readable_file_is_refused(config):
    sid, key = _added(cosfs("credentials", "add", "--config", config))
    path = _default_file(config)
    os.chmod(path, 0o640)
    for args in (["list"], ["add"], ["remove", sid]):
        res = cosfs("credentials", *args, "--config", config)
        assert res.returncode == 1
        assert len(res.stderr.splitlines()) == 1, res.stderr
        assert res.stderr.startswith("cosfs: CredentialsError: ") and "0640" in res.stderr
        assert key not in res.stderr + res.stdout


def test_usage_errors(config, tmp_path):
    res = cosfs("credentials", "add", "--config", config, "--bucket", "Bad_Name")
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1
    assert "InvalidBucketName" in res.stderr
    res = cosfs("credentials", "remove", "--config", config)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1
    res = cosfs("credentials", "list")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1
    assert cosfs("credentials", "list", "--config", config).stdout == ""
