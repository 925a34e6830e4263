"""Write buffers that hold only the segments of a chunk a writer touched.

A random writer that changes 4 KiB of a stored 1 MiB chunk used to load (read
and open) the whole chunk into its buffer first. A :class:`PartialChunk` is
the buffer of such a chunk with only the 64 KiB segments written so far in
memory; the others are still those of its *source*, the stored chunk it was
started from (sealed but not committed, or committed), or zeros when it was
started in a hole (a sparse file written at random). Memory and the
``write_buffer`` budget count the segments held, so many more chunks of a
randomly written file fit in the buffers; only sealing the chunk (or a change
that is not a write inside it) needs the rest, which is then loaded and laid
under the segments held (:meth:`PartialChunk.fill`).

Contract the data path (:mod:`cosfs.objects`) keeps: while a partial chunk is
the buffer of its chunk, its source blob is neither replaced nor deleted (a
commit replaces only chunks that have a pending one, and a chunk gets one only
by sealing its buffer, which makes a partial one whole first, or by
re-encryption, which does too; a source that is itself the pending chunk is
what the commit names), and a segment not held is unchanged since the partial
chunk was made. This module holds no I/O: it is the
buffer's bookkeeping only.
"""

import logging

from .cipher import SEGMENT_SIZE as SEG

log = logging.getLogger(__name__)

#: Stored chunks shorter than this are loaded whole for a write (one read of a
#: small chunk costs less than the bookkeeping of a partial one).
PARTIAL_MIN = 4 * SEG


class PartialChunk:
    """Buffer of a chunk of ``length`` plaintext bytes of which some segments are held.

    ``source`` is what the rest is read from, opaque here (the data path keeps
    its store, encryption and stored chunk). ``held`` is the number of bytes in
    memory, what the write buffers' budget counts.
    """

    __slots__ = ("length", "source", "segs", "held")

    def __init__(self, length, source):
        self.length = length
        self.source = source
        self.segs = {}  # segment index -> bytearray of that segment's bytes
        self.held = 0

    def span(self, lo, hi):
        """Segment indexes ``range`` covering bytes ``[lo, hi)`` (within the chunk)."""
        return range(lo // SEG, (hi - 1) // SEG + 1)

    def missing(self, lo, hi):
        """The first and last segment covering ``[lo, hi)`` that is not held, or None."""
        absent = [s for s in self.span(lo, hi) if s not in self.segs]
        return (absent[0], absent[-1]) if absent else None

    def holds(self, lo, hi):
        """Whether ``[lo, hi)`` lies within ``length`` and every segment covering it is
        held (what a write there needs)."""
        if hi > self.length:
            return False
        segs = self.segs
        s, last = lo // SEG, (hi - 1) // SEG
        while s <= last:
            if s not in segs:
                return False
            s += 1
        return True

    def take(self, first, last, plain):
        """Hold segments ``first`` to ``last`` that are not held yet, with the source's
        bytes ``plain`` (from segment ``first`` on), or zeros when ``plain`` is None; a
        segment held already keeps its (newer) bytes. Returns the bytes newly held."""
        added = 0
        view = None if plain is None else memoryview(plain)
        for s in range(first, last + 1):
            if s not in self.segs:
                size = min(SEG, self.length - s * SEG)
                if view is None:
                    seg = bytearray(size)
                else:
                    start = (s - first) * SEG
                    seg = bytearray(view[start:start + size])
                self.segs[s] = seg
                added += size
        self.held += added
        return added

    def write(self, offset, data):
        """Write ``data`` at ``offset``; every segment it covers must be held and
        ``offset + len(data)`` must not pass ``length``."""
        s, o = divmod(offset, SEG)
        if o + len(data) <= SEG:  # within one segment: most writes
            self.segs[s][o:o + len(data)] = data
            return
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            s, o = divmod(offset + pos, SEG)
            n = min(SEG - o, len(view) - pos)
            self.segs[s][o:o + n] = view[pos:pos + n]
            pos += n

    def read(self, lo, hi):
        """The bytes ``[lo, hi)`` when every segment covering them is held, else None."""
        parts = []
        for s in self.span(lo, hi):
            seg = self.segs.get(s)
            if seg is None:
                return None
            base = s * SEG
            parts.append(seg[max(lo, base) - base:min(hi, base + SEG) - base])
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def overlay(self, lo, src):
        """``src`` (the source's bytes from ``lo`` on) with the held segments laid over."""
        hi = lo + len(src)
        out = bytearray(src)
        for s in self.span(lo, hi):
            seg = self.segs.get(s)
            if seg is not None:
                base = s * SEG
                a, b = max(lo, base), min(hi, base + len(seg))
                out[a - lo:b - lo] = seg[a - base:b - base]
        return bytes(out)

    def fill(self, first, plain):
        """The whole chunk as new immutable bytes: the segments held, laid over the
        source's bytes ``plain`` from segment ``first`` on, which must cover every
        segment not held (None: zeros, when all are held or the source is a hole)."""
        view = None if plain is None else memoryview(plain)
        pieces = []
        for s in range((self.length + SEG - 1) // SEG):
            seg = self.segs.get(s)
            if seg is None:
                size = min(SEG, self.length - s * SEG)
                if view is None:
                    seg = bytes(size)
                else:
                    start = (s - first) * SEG
                    seg = view[start:start + size]
            pieces.append(seg)
        return b"".join(pieces)

    def absent(self):
        """First and last segment of the chunk not held, or None when all are."""
        return self.missing(0, self.length) if self.length else None


def held(buf):
    """Bytes a chunk buffer keeps in memory: its length, or a partial chunk's ``held``."""
    return buf.held if isinstance(buf, PartialChunk) else len(buf)
