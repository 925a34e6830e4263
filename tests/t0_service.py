"""Tier 0: running as a service (cosfs.service): mount(8) options, systemd notification,
journal detection, log reopening, the last error and the status text."""

import logging
import os
import re
import socket

import pytest

from cosfs import service
from cosfs.service import (JournalFormatter, LastError, OptionError, ReopeningFileHandler,
                           format_status, human_bytes, human_duration, parse_mount_options,
                           reopen_log_files, sd_notify, stderr_is_journal)


# -- mount options -----------------------------------------------------------------------------
def test_options_map_onto_config_keys():
    o = parse_mount_options(["rw,allow_other,writeback_cache=no", "fsync_on_close=yes",
                             "log_file=/var/log/cosfs/a.log,log_level=DEBUG",
                             "cache_size=64MiB,write_buffer=1G"])
    assert o.config == {"allow_other": True, "writeback_cache": False, "fsync_on_close": True,
                        "log_file": "/var/log/cosfs/a.log", "log_level": "debug",
                        "cache_size": "64MiB", "write_buffer": "1G"}
    assert o.kernel == [] and o.unknown == []


def test_later_option_wins():
    o = parse_mount_options(["allow_other,allow_other=off,log_level=info,log_level=error"])
    assert o.config == {"allow_other": False, "log_level": "error"}
    assert parse_mount_options(["ro,rw"]).kernel == []
    assert parse_mount_options(["rw,ro"]).kernel == ["ro"]
    assert parse_mount_options(["noexec,nosuid,nodev,user,exec"]).kernel == []
    assert parse_mount_options(["noexec,noexec"]).kernel == ["noexec"]
    # the kernel's permission checks even where cosfs would leave them out
    o = parse_mount_options(["default_permissions"])
    assert o.config == {"default_permissions": True} and o.kernel == []


@pytest.mark.parametrize("option", [
    "defaults", "rw", "auto", "noauto", "_netdev", "nofail", "user", "users", "nouser", "owner",
    "group", "dev", "nodev", "suid", "nosuid", "exec", "async", "noatime", "relatime",
    "strictatime", "nodiratime", "lazytime", "x-systemd.automount",
    "X-mount.mkdir", "comment=cosfs", "uhelper=cosfs"])
def test_fstab_options_accepted_and_ignored(option):
    o = parse_mount_options([option])
    assert o.ignored == [option] and o.config == {} and o.kernel == []


@pytest.mark.parametrize("option,words", [
    ("bogus", ["unknown option 'bogus'", "allow_other"]),
    ("sync", ["fsync_on_close"]),
    ("dirsync", ["fsync_on_close"]),
    ("allow_root", ["allow_other"]),
    ("allow_other=maybe", ["allow_other", "'maybe'"]),
    ("cache_size", ["cache_size needs a value"]),
    ("cache_size=1.5MiB", ["cache_size"]),
    ("write_buffer=10MB", ["ambiguous unit"]),
    ("log_level=loud", ["debug, info, warning, error"]),
    ("log_file=", ["log_file needs a value"]),
    ("fsname=x", ["unknown option"]),
    ("store=/tmp/x", ["unknown option"]),
    ("setuid=nobody", ["unknown option"]),
])
def test_bad_options_refused_in_one_line(option, words):
    with pytest.raises(OptionError) as info:
        parse_mount_options(["rw", option])
    text = str(info.value)
    assert "\n" not in text
    for w in words:
        assert w in text


def test_sloppy_keeps_unknown_options():
    o = parse_mount_options(["rw,bogus,allow_other,other=1"], sloppy=True)
    assert o.unknown == ["bogus", "other=1"] and o.config == {"allow_other": True}
    with pytest.raises(OptionError):
        parse_mount_options(["sync"], sloppy=True)  # a known option refused for a reason


def test_empty_option_parts_skipped():
    assert parse_mount_options([",,rw,", ""]).ignored == ["rw"]


# -- systemd notification ------------------------------------------------------------------------
def _receiver(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_to_a_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    with _receiver(path) as sock:
        assert sd_notify("READY=1\nSTATUS=mounted", {"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1\nSTATUS=mounted"


def test_notify_to_an_abstract_socket():
    name = "cosfs-t0-%d-%s" % (os.getpid(), os.urandom(4).hex())
    with _receiver("\0" + name) as sock:
        assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"STOPPING=1"


def test_notify_without_systemd_does_nothing(tmp_path, caplog):
    assert not sd_notify("READY=1", {})
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": ""})
    with caplog.at_level(logging.WARNING):
        assert not sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
        assert not sd_notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})
    assert "cannot notify systemd" in caplog.text


def test_journal_stream_detection():
    st = os.fstat(2)
    assert stderr_is_journal({"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino)})
    assert not stderr_is_journal({"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino + 1)})
    assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"})
    assert not stderr_is_journal({})


# -- logging ---------------------------------------------------------------------------------------
def _record(level, msg, *args, name="cosfs.test"):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_journal_format_has_priority_and_no_time():
    f = JournalFormatter()
    assert f.format(_record(logging.ERROR, "bad %s", "thing")) == \
        "<3>ERROR cosfs.test: bad thing"
    assert f.format(_record(logging.WARNING, "w")).startswith("<4>WARNING ")
    assert f.format(_record(logging.INFO, "i")).startswith("<6>INFO ")
    assert f.format(_record(logging.DEBUG, "d")).startswith("<7>DEBUG ")
    assert f.format(_record(logging.CRITICAL, "c")).startswith("<2>CRITICAL ")


def test_log_file_reopened_after_a_move(tmp_path):
    path = str(tmp_path / "cosfs.log")
    logger = logging.getLogger("cosfs-t0-reopen")
    logger.propagate = False
    old_umask = os.umask(0)  # the log is created 0600 whatever the umask
    handler = ReopeningFileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        logger.warning("before")
        assert os.stat(path).st_mode & 0o777 == 0o600
        os.rename(path, path + ".1")
        logger.warning("between")  # still the moved file, as logrotate expects
        assert reopen_log_files(logger) == [path]
        logger.warning("after")
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert service.log_destination(logger) == path
    finally:
        os.umask(old_umask)
        logger.removeHandler(handler)
        handler.close()
    assert open(path + ".1").read() == "before\nbetween\n"
    assert open(path).read() == "after\n"


def test_last_error_keeps_the_latest_first_line():
    h = LastError()
    logger = logging.getLogger("cosfs-t0-lasterror")
    logger.propagate = False
    logger.addHandler(h)
    try:
        logger.warning("not an error")
        assert h.count == 0 and h.last is None
        logger.error("first")
        logger.error("second %d\nwith a second line", 2)
        logger.error("x" * 2000)
    finally:
        logger.removeHandler(h)
    assert h.count == 3
    assert len(h.last["message"]) == LastError.MAX_MESSAGE + 3
    logger.addHandler(h)
    try:
        logger.error("second %d\nwith a second line", 2)
    finally:
        logger.removeHandler(h)
    assert h.last["message"] == "second 2" and h.last["logger"] == "cosfs-t0-lasterror"
    assert h.last["time"].endswith("Z")


# -- status text ----------------------------------------------------------------------------
SAMPLE = {
    "version": "0.1.0", "pid": 4242, "mountpoint": "/srv/cos", "store": "/srv/cosfs/data",
    "key_store": {"path": "/etc/cosfs/keys", "current": "v3", "versions": ["v2", "v3"],
                  "retired": ["v1"]},
    "log": "/var/log/cosfs/home.log", "started": "2026-12-01T02:00:00Z",
    "uptime_seconds": 3 * 3600 + 125,
    "options": {"allow_other": False, "writeback_cache": False, "fsync_on_close": False},
    "buckets": [{"name": "photos-1250000000", "region": "ap-guangzhou", "encryption": None},
                {"name": "secrets-1250000000", "region": "ap-shanghai", "encryption": "SM4"}],
    "buckets_total": 2, "open_files": 2, "dirty_bytes": 3 << 20,
    "uncommitted": {"objects": 1, "buffered_bytes": 2 << 20, "sealed_bytes": 1 << 20,
                    "write_buffer": 256 << 20},
    "cache": {"used_bytes": 12 << 20, "size_bytes": 256 << 20, "segments": 192},
    "errors": {"count": 2, "last": {"time": "2026-12-01T03:00:00Z", "logger": "cosfs.reader",
                                    "message": "cannot read inode 7 chunk 0"}},
}


def _fields(text):
    """label -> value of each line (labels are padded to one width)."""
    out = {}
    starts = set()
    for line in text.splitlines():
        label, value = re.match(r"(.*?)\s{2,}(\S.*)$", line).groups()
        starts.add(line.index(value))
        out.setdefault(label, []).append(value)
    assert len(starts) == 1, "values do not line up:\n" + text
    return out


def test_status_text():
    f = _fields(format_status(SAMPLE))
    assert f["mounted at"] == ["/srv/cos (pid 4242, cosfs 0.1.0)"]
    assert f["since"] == ["2026-12-01T02:00:00Z (up 3h 2m)"]
    assert f["store"] == ["/srv/cosfs/data"]
    assert f["key store"] == ["/etc/cosfs/keys (current master key v3; versions v2, v3; "
                              "retired v1)"]
    assert f["log"] == ["/var/log/cosfs/home.log"]
    assert f["buckets"] == ["photos-1250000000 (ap-guangzhou, no default encryption)"]
    assert f[""] == ["secrets-1250000000 (ap-shanghai, SM4)"]
    assert f["open files"] == ["2"]
    assert f["uncommitted"] == ["3.0 MiB in 1 object(s): 2.0 MiB buffered, 1.0 MiB sealed "
                                "(limit 256.0 MiB)"]
    assert f["cache"] == ["12.0 MiB of 256.0 MiB (192 segments)"]
    assert f["last error"] == ["2026-12-01T03:00:00Z: cannot read inode 7 chunk 0 "
                               "(2 error(s) since start)"]


def test_status_text_when_quiet():
    st = dict(SAMPLE, buckets=[], buckets_total=0, errors={"count": 0, "last": None})
    f = _fields(format_status(st))
    assert f["buckets"] == ["none"] and f["last error"] == ["none"]


def test_human_units():
    assert human_bytes(0) == "0 B" and human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(5 << 30) == "5.0 GiB"
    assert human_bytes(3 << 50) == "3072.0 TiB"
    assert human_duration(5) == "5s" and human_duration(65) == "1m 5s"
    assert human_duration(3 * 86400 + 7200 + 60) == "3d 2h 1m"
