#!/usr/bin/env python3
"""Concurrent load on a cosfs mount: many processes in the same directories and files.

    python contrib/load.py [--workers N] [--seconds S] [--config FILE | --mount DIR]
                           [--max-size BYTES] [--seed N] [--keep] [--store-size SIZE]

Without ``--mount`` a fresh store is made in a temporary folder and mounted
(foreground daemon, 64 KiB chunks); with ``--config`` that config is mounted;
with ``--mount DIR`` the buckets below an already mounted DIR are used.
``tests/t5_load.py`` runs the same engine in a CI-sized form.

Every worker process, for ``S`` seconds and in both test buckets, picks
random operations on a shared set of directories:

* ``write``   a self-describing file (header with writer, length and SHA-256 of
  the body; body written in shuffled pieces, sometimes fsync'd) under a
  temporary name, then renamed to its final name or over a shared name;
* ``append``  one record per ``write()`` to shared ``O_APPEND`` logs (writer,
  sequence number, CRC of the payload);
* ``blocks``  whole 4 KiB blocks (each naming its own place, with a CRC)
  overwritten in place in shared files, several writers at once;
* ``resize``  truncation of those shared block files by whole blocks;
* ``read``    a whole file, log or block file, verified as it is read;
* ``rename``  a file into another directory; ``delete`` a file;
* ``list``    a directory with ``stat`` of each entry;
* ``mkdir``/``rmdir`` of scratch directories.

Errors a local file system would give in the same race (ENOENT after a
concurrent delete or rename, ENOTEMPTY, EEXIST) are counted, anything else is
a failure. At the end every file and log is verified: each file matches its
header, every log holds exactly the records its writers were told were
appended, in order, untorn. The daemon's peak RSS (VmHWM) is reported, and a
fresh store is checked with ``cosfs fsck`` after the unmount.

``--store-size`` puts a fresh store on a small tmpfs, so that the load fills
it: ENOSPC is then an expected answer, torn records or blocks left by a failed
commit are tolerated (confirmed records must still be there), and at the end
everything is deleted, the space must come back and writing must work again.

Exit status 0 when nothing unexpected happened; a JSON summary goes to stdout.
"""

import argparse
import errno
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

DIRS = 4
SHARED = 6
LOGS = 3
BLOCK_FILES = 2
BLOCK = 4096
BLOCKS = 256  # 1 MiB: several chunks
RACY = {errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST}

# -- self-describing content ----------------------------------------------------------


def make_file(writer, n, size, seed):
    body = random.Random(seed).randbytes(size)
    head = b"COSFSLOAD %d %d %d %s\n" % (writer, n, size, hashlib.sha256(body).hexdigest().encode())
    return head + body


def check_file(data):
    """None if ``data`` is a complete self-describing file, else what is wrong."""
    head, sep, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 5 or parts[0] != b"COSFSLOAD":
        return "bad header %r (file of %d bytes)" % (head[:60], len(data))
    if int(parts[3]) != len(body):
        return "body is %d bytes, header says %s" % (len(body), parts[3].decode())
    if hashlib.sha256(body).hexdigest().encode() != parts[4]:
        return "body does not match its SHA-256"
    return None


def make_record(writer, seq, rnd):
    payload = bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz0123456789")
                    for _ in range(rnd.randint(0, 3000)))
    return b"R %d %d %08x %s\n" % (writer, seq, zlib.crc32(payload), payload)


def make_block(writer, seq, index, rnd):
    head = b"B %d %d %d " % (writer, seq, index)
    payload = rnd.randbytes(BLOCK - len(head) - 9)
    return head + payload + b"%08x\n" % zlib.crc32(head + payload)


def check_blocks(data, complete, lenient=False):
    """Each 4 KiB block is zeros (never written) or one whole block written for that very
    place. Returns None or what is wrong. Blocks are page-aligned, so even a write cut
    short (``lenient``: a full disk, a stopped daemon) never tears one."""
    if complete and len(data) % BLOCK:
        return "size %d is not a whole number of blocks" % len(data)
    for i in range(len(data) // BLOCK):
        blk = data[i * BLOCK:(i + 1) * BLOCK]
        if not blk.strip(b"\0"):
            continue
        parts = blk.split(b" ", 4)
        if len(parts) != 5 or parts[0] != b"B":
            return "block %d is neither zeros nor a block: %r" % (i, blk[:40])
        if int(parts[3]) != i:
            return "block %d holds the block written for %s (misplaced)" % (i, parts[3].decode())
        if b"%08x\n" % zlib.crc32(blk[:-9]) != blk[-9:]:
            return "block %d is torn" % i
    return None


_RECORD = re.compile(rb"R ([0-9]+) ([0-9]+) ([0-9a-f]{8}) ([a-z0-9]*)\n")


def check_log(data, complete, lenient=False):
    """Parse a log. Returns ({writer: [seq...]}, problem or None). ``complete``: no partial
    last record is allowed (the final check, when no append is in flight). ``lenient`` (a
    full store) finds whole records wherever they are and ignores torn ones."""
    seqs = {}
    if lenient:
        # A write cut short by a full disk (the kernel splits writes, a later part fails)
        # leaves half a record with the next record glued to it: find records anywhere.
        for m in _RECORD.finditer(data):
            w, seq, crc, payload = int(m.group(1)), int(m.group(2)), int(m.group(3), 16), \
                m.group(4)
            if zlib.crc32(payload) == crc:
                got = seqs.setdefault(w, [])
                if got and seq <= got[-1]:
                    return seqs, "writer %d: record %d after %d (reordered)" % (w, seq, got[-1])
                got.append(seq)
        return seqs, None
    lines = data.split(b"\n")
    tail = lines.pop()
    if tail and complete:
        return seqs, "log ends in a partial record (%d bytes)" % len(tail)
    for i, line in enumerate(lines):
        parts = line.split(b" ", 4)
        try:
            w, seq, crc, payload = int(parts[1]), int(parts[2]), int(parts[3], 16), parts[4]
            if parts[0] != b"R":
                raise ValueError
        except (ValueError, IndexError):
            return seqs, "line %d is not a record: %r" % (i, line[:60])
        if zlib.crc32(payload) != crc:
            return seqs, "record %d of writer %d is torn" % (seq, w)
        got = seqs.setdefault(w, [])
        if got and seq <= got[-1]:
            return seqs, "writer %d: record %d after %d (reordered)" % (w, seq, got[-1])
        got.append(seq)
    return seqs, None


# -- one worker -------------------------------------------------------------------------
class Worker:
    def __init__(self, wid, buckets, seconds, max_size, seed, lenient=False):
        self.id = wid
        self.lenient = lenient
        self.expected = RACY | ({errno.ENOSPC} if lenient else set())
        self.unconfirmed = {}  # log path -> [seq] appended, but the close reported an error
        self.buckets = buckets
        self.deadline = time.monotonic() + seconds
        self.max_size = max_size
        self.rnd = random.Random(seed * 1000 + wid)
        self.n = 0
        self.seq = 0
        self.ops = {}
        self.racy = {}
        self.failures = []
        self.appended = {}  # log path -> [seq]

    def d(self, bucket, k=None):
        return os.path.join(bucket, "load", "d%d" % (self.rnd.randrange(DIRS) if k is None else k))

    def fail(self, what):
        if len(self.failures) < 50:
            self.failures.append("worker %d: %s" % (self.id, what))

    def run(self):
        ops = [(self.write, 5), (self.append, 4), (self.blocks, 3), (self.read, 6),
               (self.resize, 1), (self.rename, 2), (self.delete, 2), (self.listing, 2),
               (self.scratch_dir, 1)]
        names = [f for f, w in ops for _ in range(w)]
        while time.monotonic() < self.deadline and len(self.failures) < 50:
            op = self.rnd.choice(names)
            bucket = self.rnd.choice(self.buckets)
            name = op.__name__
            self.ops[name] = self.ops.get(name, 0) + 1
            try:
                op(bucket)
            except OSError as exc:
                if exc.errno in self.expected:
                    key = "%s:%s" % (name, errno.errorcode[exc.errno])
                    self.racy[key] = self.racy.get(key, 0) + 1
                else:
                    self.fail("%s in %s: %s" % (name, os.path.basename(bucket), exc))
        return {"id": self.id, "ops": self.ops, "racy": self.racy, "failures": self.failures,
                "appended": self.appended, "unconfirmed": self.unconfirmed}

    def size(self):
        r = self.rnd.random()
        if r < 0.1:
            return 0
        if r < 0.9:
            return self.rnd.randint(1, 200 * 1024)
        return self.rnd.randint(200 * 1024, self.max_size)

    def write(self, bucket):
        self.n += 1
        data = make_file(self.id, self.n, self.size(), self.rnd.getrandbits(64))
        d = self.d(bucket)
        tmp = os.path.join(d, "tmp-w%d-%d" % (self.id, self.n))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        closed = False
        try:
            pieces = []
            pos = 0
            while pos < len(data):
                step = self.rnd.choice((4096, 65536, 100000, 131072, 1 << 20))
                pieces.append((pos, data[pos:pos + step]))
                pos += step
            if self.rnd.random() < 0.3:
                self.rnd.shuffle(pieces)
            for off, piece in pieces:
                done = os.pwrite(fd, piece, off)
                if done != len(piece):
                    # the kernel splits a write into requests and returns what the first
                    # ones stored when a later one fails: a full disk, as on a local one
                    if not self.lenient:
                        self.fail("short write to %s: %d of %d bytes" % (tmp, done, len(piece)))
                    raise OSError(errno.ENOSPC, "short write (%d of %d bytes)"
                                  % (done, len(piece)), tmp)
            if self.rnd.random() < 0.1:
                os.fsync(fd)
            closed = True
            os.close(fd)
        except OSError:
            if not closed:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.discard(tmp)
            raise
        if self.rnd.random() < 0.5:
            final = os.path.join(d, "f-w%d-%d" % (self.id, self.n))
        else:
            final = os.path.join(self.d(bucket), "shared-%d" % self.rnd.randrange(SHARED))
        try:
            os.rename(tmp, final)
        except OSError:
            self.discard(tmp)
            raise

    @staticmethod
    def discard(path):
        try:
            os.unlink(path)
        except OSError:
            pass

    def append(self, bucket):
        path = os.path.join(self.d(bucket, 0), "log-%d" % self.rnd.randrange(LOGS))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        done = []
        try:
            for _ in range(self.rnd.randint(1, 8)):
                self.seq += 1
                rec = make_record(self.id, self.seq, self.rnd)
                if os.write(fd, rec) != len(rec):
                    if not self.lenient:  # a full disk may cut a write short
                        self.fail("short append to %s" % path)
                    break
                done.append(self.seq)
        except OSError:
            self.unconfirmed.setdefault(path, []).extend(done)
            try:
                os.close(fd)
            except OSError:
                pass
            raise
        try:
            os.close(fd)
        except OSError:
            # acknowledged by write(2) but maybe not stored: close reported the failure
            self.unconfirmed.setdefault(path, []).extend(done)
            raise
        self.appended.setdefault(path, []).extend(done)

    def blocks(self, bucket):
        """Overwrite whole blocks in place in a shared file (several writers at once)."""
        path = os.path.join(self.d(bucket, 1), "blocks-%d" % self.rnd.randrange(BLOCK_FILES))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            first = self.rnd.randrange(BLOCKS)
            count = min(self.rnd.randint(1, 16), BLOCKS - first)
            self.seq += 1
            data = b"".join(make_block(self.id, self.seq, first + i, self.rnd)
                            for i in range(count))
            if os.pwrite(fd, data, first * BLOCK) != len(data):
                self.fail("short block write to %s" % path)
        finally:
            os.close(fd)

    def resize(self, bucket):
        """Truncate a shared block file (shrink or grow by whole blocks) under the writers."""
        path = os.path.join(self.d(bucket, 1), "blocks-%d" % self.rnd.randrange(BLOCK_FILES))
        os.truncate(path, self.rnd.randrange(BLOCKS + 1) * BLOCK)

    def entries(self, d):
        try:
            return [n for n in os.listdir(d) if not n.startswith("tmp-")]
        except FileNotFoundError:
            return []

    def read(self, bucket):
        d = self.d(bucket)
        names = self.entries(d)
        if not names:
            return
        name = self.rnd.choice(names)
        path = os.path.join(d, name)
        if name.startswith("sub-"):
            return
        with open(path, "rb") as f:
            data = f.read()
        if name.startswith("log-"):
            _, problem = check_log(data, complete=False, lenient=self.lenient)
        elif name.startswith("blocks-"):
            problem = check_blocks(data, complete=False, lenient=self.lenient)
        else:
            problem = check_file(data)
        if problem:
            self.fail("read %s: %s" % (path, problem))

    def rename(self, bucket):
        d = self.d(bucket)
        names = [n for n in self.entries(d) if n.startswith("f-")]
        if names:
            name = self.rnd.choice(names)
            # alternate between two names so that names never grow
            other = name[:-1] if name.endswith("r") else name + "r"
            os.rename(os.path.join(d, name), os.path.join(self.d(bucket), other))

    def delete(self, bucket):
        d = self.d(bucket)
        names = [n for n in self.entries(d) if n.startswith(("f-", "shared-"))]
        if names:
            os.unlink(os.path.join(d, self.rnd.choice(names)))

    def listing(self, bucket):
        d = self.d(bucket)
        for name in os.listdir(d):
            try:
                os.stat(os.path.join(d, name))
            except FileNotFoundError:
                pass

    def scratch_dir(self, bucket):
        d = self.d(bucket)
        if self.rnd.random() < 0.5:
            self.n += 1
            os.mkdir(os.path.join(d, "sub-w%d-%d" % (self.id, self.n)))
        else:
            subs = [n for n in self.entries(d) if n.startswith("sub-")]
            if subs:
                os.rmdir(os.path.join(d, self.rnd.choice(subs)))


# -- the whole run ------------------------------------------------------------------------
def prepare(buckets):
    for b in buckets:
        for k in range(DIRS):
            os.makedirs(os.path.join(b, "load", "d%d" % k), exist_ok=True)


def run_workers(buckets, workers, seconds, max_size, seed, watchdog, lenient=False):
    """Start the workers as processes; returns their results. Raises TimeoutError when one
    has not finished ``watchdog`` seconds after the load should have ended (a deadlock)."""
    procs = []
    for wid in range(workers):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(wid),
               "--seconds", str(seconds), "--max-size", str(max_size), "--seed", str(seed)]
        for b in buckets:
            cmd += ["--bucket", b]
        if lenient:
            cmd.append("--lenient")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL))
    deadline = time.monotonic() + seconds + watchdog
    results, stuck = [], []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stuck.append(p)
            continue
        if p.returncode != 0:
            results.append({"id": -1, "ops": {}, "racy": {}, "appended": {},
                            "failures": ["a worker crashed: %s" % err.decode()[-2000:]]})
        else:
            results.append(json.loads(out))
    if stuck:
        for p in stuck:
            p.kill()
        raise TimeoutError("%d of %d workers still running %ds after the end of the load: "
                           "deadlock?" % (len(stuck), workers, watchdog))
    return results


def verify(buckets, results, lenient=False):
    """Final check of every file and log (no worker running). Returns (problems, number of
    files, number of logs and block files). Every record whose append was confirmed by a
    successful close must be in its log; no record may be there that nobody appended.
    ``lenient``: writers were cut off (a full store, a daemon stopped under them): torn
    records and temporary files whose removal failed are allowed then."""
    problems = []
    confirmed, maybe = {}, {}
    for r in results:
        for path, seqs in r["appended"].items():
            confirmed.setdefault(path, {})[r["id"]] = set(seqs)
        for path, seqs in r.get("unconfirmed", {}).items():
            maybe.setdefault(path, {})[r["id"]] = set(seqs)
    files = logs = 0
    for b in buckets:
        for k in range(DIRS):
            d = os.path.join(b, "load", "d%d" % k)
            for name in sorted(os.listdir(d)):
                path = os.path.join(d, name)
                if name.startswith("sub-"):
                    continue
                if name.startswith("tmp-"):
                    if not lenient:
                        problems.append("%s: a temporary file survived its writer" % path)
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                if name.startswith("log-"):
                    logs += 1
                    seqs, problem = check_log(data, complete=True, lenient=lenient)
                    sure, may = confirmed.get(path, {}), maybe.get(path, {})
                    missing = unknown = 0
                    example = None
                    for w in set(seqs) | set(sure):
                        found = set(seqs.get(w, ()))
                        lost = sure.get(w, set()) - found
                        missing += len(lost)
                        unknown += len(found - sure.get(w, set()) - may.get(w, set()))
                        if lost and example is None:
                            example = "writer %d record %d" % (w, min(lost))
                    if problem:
                        problems.append("%s: %s" % (path, problem))
                    elif missing or unknown:
                        problems.append("%s: %d confirmed record(s) missing (%s), %d record(s) "
                                        "nobody appended" % (path, missing, example, unknown))
                elif name.startswith("blocks-"):
                    logs += 1
                    problem = check_blocks(data, complete=True, lenient=lenient)
                    if problem:
                        problems.append("%s: %s" % (path, problem))
                else:
                    files += 1
                    problem = check_file(data)
                    if problem:
                        problems.append("%s: %s" % (path, problem))
    for path in confirmed:
        if not os.path.exists(path):
            problems.append("%s: log vanished" % path)
    return problems, files, logs


def peak_rss(pid):
    """VmHWM of a process in bytes (0 if unknown)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def summarize(results):
    ops, racy, failures = {}, {}, []
    for r in results:
        for k, v in r["ops"].items():
            ops[k] = ops.get(k, 0) + v
        for k, v in r["racy"].items():
            racy[k] = racy.get(k, 0) + v
        failures += r["failures"]
    return ops, racy, failures


def drain(buckets, store, free_before):
    """After a load on a full store: delete everything, wait for the space to come back,
    and check that writing works again. Returns a list of problems."""
    problems = []
    for b in buckets:
        try:
            shutil.rmtree(os.path.join(b, "load"))
        except OSError as exc:
            problems.append("deleting %s on the full store: %s" % (b, exc))
    deadline = time.monotonic() + 60
    while free_space(store) < free_before * 0.8 and time.monotonic() < deadline:
        time.sleep(0.5)
    if free_space(store) < free_before * 0.8:
        usage = {}
        for root, _, names in os.walk(store):
            for n in names:
                part = os.path.relpath(root, store).split(os.sep)[0]
                key = n if part == "." else part
                usage[key] = usage.get(key, 0) + os.lstat(os.path.join(root, n)).st_size
        problems.append("space not given back after deleting everything: %d of %d MiB free "
                        "(store holds %s)" % (free_space(store) >> 20, free_before >> 20,
                                              ", ".join("%s %d KiB" % (k, v >> 10)
                                                        for k, v in sorted(usage.items()))))
    data = os.urandom(1 << 20)
    path = os.path.join(buckets[0], "after-drain")
    try:
        with open(path, "wb") as f:
            f.write(data)
        with open(path, "rb") as f:
            if f.read() != data:
                problems.append("%s: read back differs" % path)
        os.unlink(path)
    except OSError as exc:
        problems.append("writing after the drain: %s" % exc)
    return problems


def free_space(path):
    sv = os.statvfs(path)
    return sv.f_bavail * sv.f_frsize


def load(buckets, *, workers=16, seconds=30, max_size=2 << 20, seed=1, watchdog=120,
         full_store=None):
    """Prepare, run and verify one load. Returns (summary dict, worker results); the summary's
    ``ok`` says it all, the results let :func:`verify` check the same files again later.

    ``full_store``: the store directory of a mount whose store is meant to fill up; ENOSPC is
    then expected, verification is lenient, and afterwards everything is deleted and the
    space must come back (:func:`drain`)."""
    prepare(buckets)
    lenient = full_store is not None
    free_before = free_space(full_store) if lenient else 0
    t0 = time.monotonic()
    results = run_workers(buckets, workers, seconds, max_size, seed, watchdog, lenient)
    elapsed = time.monotonic() - t0
    ops, racy, failures = summarize(results)
    problems, files, logs = verify(buckets, results, lenient)
    if lenient:
        problems += drain(buckets, full_store, free_before)
    return {"ok": not failures and not problems, "workers": workers, "seconds": round(elapsed, 1),
            "ops": ops, "total_ops": sum(ops.values()), "racy_errors": racy,
            "failures": failures[:20], "problems": problems[:20], "files_verified": files,
            "logs_verified": logs}, results


# -- command line ----------------------------------------------------------------------------
def _mount_fresh(args):
    """Mount a store (fresh, or ``--config``); returns (mountpoint, daemon Popen, folder)."""
    folder = None
    if args.config:
        config = os.path.abspath(args.config)
    else:
        folder = tempfile.mkdtemp(prefix="cosfs-load-")
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, os.path.join(here, "..", "tests"))
        from conftest import write_config
        config = write_config(folder, chunk_size="64KiB", write_buffer="4MiB")
        if args.store_size:
            store = os.path.join(folder, "data")
            os.makedirs(store, mode=0o700)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % args.store_size,
                            "tmpfs", store], check=True)
    import yaml
    with open(config) as f:
        mnt = yaml.safe_load(f).get("mountpoint") or "./mnt"
    mnt = os.path.join(os.path.dirname(config), mnt)
    os.makedirs(mnt, exist_ok=True)
    log = open(os.path.join(os.path.dirname(config), "load-daemon.log"), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "cosfs.cli", "mount", config, "-f", "-v"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit("cosfs did not mount; see %s" % log.name)
        time.sleep(0.05)
    return mnt, proc, folder


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--max-size", type=int, default=8 << 20)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--config", help="mount this config instead of a fresh store")
    p.add_argument("--mount", help="use the buckets of this already mounted cosfs")
    p.add_argument("--keep", action="store_true", help="keep the temporary store")
    p.add_argument("--store-size", help="put the fresh store on a tmpfs of this size (e.g. "
                   "48m, needs root) so that it fills up: ENOSPC is expected, and afterwards "
                   "everything is deleted and the space must come back")
    p.add_argument("--lenient", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--bucket", action="append", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        w = Worker(args.worker, args.bucket, args.seconds, args.max_size, args.seed,
                   args.lenient)
        print(json.dumps(w.run()))
        return 0
    proc = folder = None
    if args.store_size and (args.mount or args.config):
        p.error("--store-size makes a fresh store: it goes without --mount and --config")
    if args.mount:
        mnt = args.mount
    else:
        mnt, proc, folder = _mount_fresh(args)
    store = os.path.join(folder, "data") if folder else None
    summary = {"ok": False}
    try:
        buckets = [os.path.join(mnt, b) for b in sorted(os.listdir(mnt))]
        summary, _ = load(buckets, workers=args.workers, seconds=args.seconds,
                          max_size=args.max_size, seed=args.seed,
                          full_store=store if args.store_size else None)
        if proc is not None:
            summary["daemon_peak_rss_mib"] = round(peak_rss(proc.pid) / 2 ** 20, 1)
        summary["seed"] = args.seed
    finally:
        if proc is not None:
            subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
                proc.kill()
                proc.wait()
            summary["daemon_exit_status"] = proc.returncode
            log = os.path.join(os.path.dirname(os.path.abspath(args.config)) if args.config
                               else folder, "load-daemon.log")
            with open(log, errors="replace") as f:
                errors = [line.rstrip() for line in f
                          if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]
            if args.store_size:  # a full store is what this run is about
                errors = [e for e in errors if "No space left" not in e]
            if folder:
                res = subprocess.run([sys.executable, "-m", "cosfs.cli", "fsck", "--config",
                                      os.path.join(folder, "cosfs.yaml")],
                                     capture_output=True, text=True)
                summary["fsck"] = res.stdout.strip().splitlines()
                if res.returncode != 0:
                    errors.append("fsck: " + (res.stdout + res.stderr).strip())
            if store and args.store_size:
                if subprocess.run(["umount", store], capture_output=True).returncode:
                    subprocess.run(["umount", "-l", store], capture_output=True)
            summary["daemon_log_errors"] = errors[:20]
            summary["ok"] = summary["ok"] and not errors and proc.returncode == 0
        print(json.dumps(summary, indent=2))
        if folder and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
