"""Progress of long command-line jobs: a bar on a terminal, log lines otherwise.

``with Progress("re-wrapping object keys", total, unit="key") as p: ... p.update()``
shows, when ``stream`` (default: standard error) is a terminal, a :mod:`tqdm`
bar that redraws itself; otherwise it writes plain INFO lines through this
module's logger (``cosfs.progress``), one at the start, then whenever
``every`` items (default: a tenth of ``total``) or ``interval`` seconds have
passed since the last line, and one at the end::

    re-wrapping object keys: 0/1200 keys
    re-wrapping object keys: 120/1200 keys (10%)
    ...
    re-wrapping object keys: done, 1200/1200 keys in 3.2 s

The caller decides whether those lines are seen (the CLI enables INFO for
this logger, see :func:`cosfs.cli._progress`); the library never configures
logging. ``update`` costs an addition, a comparison and a clock read between
lines, so it may be called per item of a loop over millions. Not thread-safe: one
thread updates one Progress. Imports no cosfs module and no trio; tqdm is
imported only when a bar is drawn.
"""

import logging
import sys
import time

log = logging.getLogger(__name__)

#: seconds between two log lines when the item count alone would not write one
INTERVAL = 10.0


class Progress:
    """A count of ``total`` items (None: unknown) being worked through; see the module
    docstring. ``what``: the job, as the start of every line; ``unit``: the items'
    name (``"%ss"`` makes the plural); ``bar``: force (True) or refuse (False) the
    terminal bar instead of asking ``stream.isatty()``; ``clock``: seconds (tests)."""

    def __init__(self, what, total=None, *, unit="item", stream=None, bar=None,
                 every=None, interval=INTERVAL, clock=time.monotonic):
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self.clock = clock
        self.interval = interval
        self.every = max(1, every if every is not None else (total or 0) // 10 or 1)
        stream = sys.stderr if stream is None else stream
        if bar is None:
            isatty = getattr(stream, "isatty", None)
            bar = bool(isatty and isatty())
        self._bar = None
        self._started = clock()
        self._closed = False
        if bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=what, unit=" " + unit, file=stream,
                             dynamic_ncols=True, leave=True)
        else:
            self._next = self.every
            self._last = self._started
            log.info("%s: %s", what, self._count())

    def _count(self):
        if self.total is None:
            return "%d %ss" % (self.done, self.unit)
        return "%d/%d %ss" % (self.done, self.total, self.unit)

    def update(self, n=1):
        """``n`` more items are done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.done < self._next:
            if self.interval is None or self.clock() - self._last < self.interval:
                return
        self._next = self.done + self.every
        self._last = self.clock()
        if self.total:
            log.info("%s: %s (%d%%)", self.what, self._count(), 100 * self.done // self.total)
        else:
            log.info("%s: %s", self.what, self._count())

    def close(self):
        """The job ended (the final line or the bar's last state; idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            return
        log.info("%s: done, %s in %.1f s", self.what, self._count(),
                 self.clock() - self._started)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self._bar is None and not self._closed:
            self._closed = True
            log.info("%s: stopped after %s", self.what, self._count())
            return False
        self.close()
        return False


class _Quiet:
    """The progress of a job nobody watches (see :func:`quiet`)."""

    def update(self, n=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def quiet(what, total=None):
    """A Progress factory that shows nothing: the default of functions that take a
    ``progress(what, total)`` factory (:func:`cosfs.fsck.run`, :func:`cosfs.cli.rewrap`)."""
    return _Quiet()
