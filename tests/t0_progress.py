"""Progress of long CLI jobs (cosfs.progress): log lines when not on a terminal, a tqdm
bar on one, and the quiet default of the functions that take a progress factory."""

import io
import logging

from cosfs.progress import Progress, quiet


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Tty(io.StringIO):
    def isatty(self):
        return True


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "cosfs.progress"]


def test_lines_every_tenth_and_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="cosfs.progress")
    stream = io.StringIO()  # not a terminal
    with Progress("re-wrapping object keys", 100, unit="key", stream=stream,
                  clock=Clock()) as p:
        for _ in range(100):
            p.update()
    got = lines(caplog)
    assert got[0] == "re-wrapping object keys: 0/100 keys"
    assert got[1] == "re-wrapping object keys: 10/100 keys (10%)"
    assert got[-2] == "re-wrapping object keys: 100/100 keys (100%)"
    assert got[-1] == "re-wrapping object keys: done, 100/100 keys in 0.0 s"
    assert len(got) == 12 and stream.getvalue() == ""


def test_lines_after_an_interval_without_enough_items(caplog):
    caplog.set_level(logging.INFO, logger="cosfs.progress")
    clock = Clock()
    p = Progress("verifying chunks", 10 ** 6, unit="chunk", stream=io.StringIO(),
                 interval=10.0, clock=clock)
    p.update(5)
    clock.now += 9
    p.update(5)
    assert len(lines(caplog)) == 1  # only the start line
    clock.now += 2
    p.update(1)
    assert lines(caplog)[-1] == "verifying chunks: 11/1000000 chunks (0%)"
    p.close()
    p.close()  # idempotent
    assert lines(caplog)[-1] == "verifying chunks: done, 11/1000000 chunks in 11.0 s"
    assert len(lines(caplog)) == 3


def test_unknown_total_and_a_failure(caplog):
    caplog.set_level(logging.INFO, logger="cosfs.progress")
    try:
        with Progress("scanning", unit="object", stream=io.StringIO(), every=2,
                      clock=Clock()) as p:
            p.update(3)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert lines(caplog) == ["scanning: 0 objects", "scanning: 3 objects",
                             "scanning: stopped after 3 objects"]


def test_a_bar_on_a_terminal_and_no_log_lines(caplog):
    caplog.set_level(logging.INFO, logger="cosfs.progress")
    tty = Tty()
    with Progress("verifying chunks", 5, unit="chunk", stream=tty) as p:
        for _ in range(5):
            p.update()
    assert "verifying chunks" in tty.getvalue() and "5/5" in tty.getvalue()
    assert "100%" in tty.getvalue()
    assert lines(caplog) == []


def test_quiet_shows_nothing(caplog):
    caplog.set_level(logging.INFO, logger="cosfs.progress")
    with quiet("anything", 3) as p:
        p.update()
    assert lines(caplog) == []
