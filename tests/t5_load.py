"""Concurrent load on a real mount: 16 processes writing, appending, reading,
renaming, listing and deleting in the same directories and files of both
buckets at once (the engine is ``contrib/load.py``; run it there for longer).

Checks: no deadlock (every worker ends within a watchdog timeout), no error
that a local file system would not give in the same race, every file and
append log verified afterwards and again after a remount, a clean daemon
log, a clean fsck, and the daemon's peak RSS under a bound.
"""

import importlib.util
import os

import pytest

from conftest import Mount, fuse_available, write_config

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

WORKERS = 16
SECONDS = 25
PEAK_RSS_LIMIT = 400 * 2 ** 20


def load_engine():
    path = os.path.join(os.path.dirname(__file__), "..", "contrib", "load.py")
    spec = importlib.util.spec_from_file_location("cosfs_load", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_concurrent_load(tmp_path):
    engine = load_engine()
    m = Mount(write_config(str(tmp_path / "fs"), chunk_size="64KiB", write_buffer="4MiB"))
    m.start()
    try:
        buckets = [m.plain, m.enc]
        summary, results = engine.load(buckets, workers=WORKERS, seconds=SECONDS, max_size=2 << 20,
                              seed=7, watchdog=90)
        rss = engine.peak_rss(m.proc.pid)
        summary["daemon_peak_rss_mib"] = round(rss / 2 ** 20, 1)
        print("load summary:", summary)
        assert not summary["failures"], "\n".join(summary["failures"])
        assert not summary["problems"], "\n".join(summary["problems"])
        assert summary["total_ops"] > 20 * WORKERS, summary
        assert summary["files_verified"] > 0 and summary["logs_verified"] > 0
        assert 0 < rss < PEAK_RSS_LIMIT, "daemon peak RSS %d MiB" % (rss >> 20)

        # everything acknowledged survives a remount, and verifies the same way
        m.restart()
        problems, files, logs = engine.verify(buckets, results)
        assert not problems, "\n".join(problems)
        assert files == summary["files_verified"] and logs == summary["logs_verified"]
        m.stop()
        res = m.cli("fsck", "--config", m.config, check=False)
        assert res.returncode == 0 and "DAMAGED" not in res.stdout, res.stdout
    finally:
        m.stop()
    bad = m.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a tmpfs store")
def test_concurrent_load_on_full_store(tmp_path):
    """The same load on a 40 MiB store that fills up: ENOSPC is expected, nothing else;
    every append confirmed by a successful close is there; then everything is deleted, the
    space comes back and writing works again; fsck is clean."""
    import subprocess
    engine = load_engine()
    m = Mount(write_config(str(tmp_path / "fs"), chunk_size="64KiB", write_buffer="4MiB"))
    m.expect_log(r"No space left")
    os.makedirs(m.store, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs", m.store],
                   check=True)
    try:
        m.start()
        summary, _ = engine.load([m.plain, m.enc], workers=WORKERS, seconds=12,
                                 max_size=3 << 20, seed=11, watchdog=90, full_store=m.store)
        print("full-store load summary:", summary)
        assert not summary["failures"], "\n".join(summary["failures"])
        assert not summary["problems"], "\n".join(summary["problems"])
        assert any(k.endswith(":ENOSPC") for k in summary["racy_errors"]), summary
        m.stop()
        res = m.cli("fsck", "--config", m.config, check=False)
        assert res.returncode == 0 and "DAMAGED" not in res.stdout, res.stdout
    finally:
        m.stop()
        subprocess.run(["umount", "-l", m.store], capture_output=True, timeout=60)
    bad = m.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


def test_sigterm_under_load(tmp_path):
    """SIGTERM while 16 processes work on the mount: the daemon commits, unmounts and exits
    0 by itself; the store is consistent (fsck) and, after a remount, every file verifies
    and every append confirmed by a close is there (the writers cut off by the unmount see
    ENOTCONN/ECONNABORTED or a short write)."""
    import signal
    import threading
    engine = load_engine()
    m = Mount(write_config(str(tmp_path / "fs"), chunk_size="64KiB", write_buffer="4MiB"))
    m.start()
    try:
        buckets = [m.plain, m.enc]
        engine.prepare(buckets)
        proc = m.proc
        timer = threading.Timer(6, proc.send_signal, (signal.SIGTERM,))
        timer.start()
        try:
            results = engine.run_workers(buckets, WORKERS, 10, 2 << 20, 13, 90)
        finally:
            timer.cancel()
        assert proc.wait(timeout=120) == 0, m.log_text()[-3000:]
        m.proc = None
        _, _, failures = engine.summarize(results)
        # a write the kernel split into requests, cut off by the unmount after the first
        # ones, returns what they stored: a short write, as an append can be short
        cut_off = ("Transport endpoint is not connected", "Software caused connection abort",
                   "short append", "short write")
        unexpected = [f for f in failures if not any(c in f for c in cut_off)]
        assert not unexpected, unexpected[:10]
        res = m.cli("fsck", "--config", m.config, check=False)
        assert res.returncode == 0 and "DAMAGED" not in res.stdout, res.stdout
        m.start()
        problems, files, logs = engine.verify(buckets, results, lenient=True)
        assert not problems, "\n".join(problems)
        assert files > 0 and logs > 0
    finally:
        m.stop()
    bad = m.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])
