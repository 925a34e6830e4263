"""Crash tests: kill -9 the daemon while a writer works, then check what survived.

Each test runs several *rounds* on one store. In a round a writer subprocess
executes a seeded list of steps on the mount (create, overwrite in place,
rewrite through O_TRUNC, append, write+fsync on a handle kept open, truncate,
rename, unlink, unlink-while-open, re-encryption through the SSE xattr,
bucket default encryption changes) and appends ``done N`` to a journal after
each step returned. After a seeded delay the daemon is killed with SIGKILL.
Then, on the dead store:

1. ``cosfs fsck --verify`` must exit 0 and report nothing but orphans,
   released blobs and unlinked inodes; a second fsck must find nothing;
2. the store is mounted again and its tree must equal the model after the
   last journaled step, after the step in flight, or one of the in-between
   states that step allows (a created file may exist empty; an O_TRUNC
   rewrite may read empty). Every object must read without error; content
   is compared byte by byte, and so are the encryption xattrs of objects and
   the plain bucket's default encryption.

The state that matched becomes the start of the next round. A failure names
the seed, the round and the journal. ``run_rounds`` is reused by
``contrib/stress.py`` for hundreds of kill points.
"""

import errno
import json
import os
import random
import subprocess
import sys
import time

import pytest

from conftest import ENC, PLAIN, Mount, needs_fuse, write_config

SSE = "user.cos.server-side-encryption"
BUCKET_ENC = "user.cos.bucket-encryption"
ABSENT = "-"
KiB = 1024
MiB = 1024 * KiB
PIECE = 256 * KiB  # the writer's write(2) size


def content(seed, n):
    return random.Random(seed).randbytes(n)


# -- the model --------------------------------------------------------------------
class Model:
    """Expected state: files {path: bytes}, their SSE overrides, the plain bucket's default."""

    def __init__(self, files=None, override=None, enc=None, plain_default=None):
        self.files = dict(files or {})
        self.override = dict(override or {})  # path -> "AES256" (explicit request)
        self.enc = dict(enc or {})  # path -> expected SSE xattr value, ABSENT, or None (unknown)
        self.plain_default = plain_default

    def copy(self):
        return Model(self.files, self.override, self.enc, self.plain_default)

    def default_of(self, path):
        return "AES256" if path.startswith(ENC) else self.plain_default

    def resolved(self, path):
        return self.override.get(path) or self.default_of(path) or ABSENT

    def changed(self, path, data):
        self.files[path] = data
        self.enc[path] = self.resolved(path)

    def drop(self, path):
        self.files.pop(path, None)
        self.override.pop(path, None)
        self.enc.pop(path, None)

    def key(self):
        return (self.files, {p: e for p, e in self.enc.items() if e is not None},
                self.plain_default)


def apply_step(model, step):
    """(model after the step, [models the step may leave when interrupted])."""
    op, path = step["op"], step.get("path")
    new = model.copy()
    between = []
    if op == "create":
        data = content(step["seed"], step["size"])
        half = model.copy()
        half.files[path] = b""
        half.enc[path] = None
        between.append(half)
        new.changed(path, data)
    elif op == "overwrite":
        if model.files[path]:  # writing no bytes commits nothing, the encryption stays
            new.changed(path, content(step["seed"], len(model.files[path])))
    elif op == "rewrite_trunc":
        half = model.copy()
        half.files[path] = b""
        half.enc[path] = None
        between.append(half)
        new.changed(path, content(step["seed"], step["size"]))
    elif op == "append":
        new.changed(path, model.files[path] + content(step["seed"], step["size"]))
    elif op == "pwrite_fsync_hold":
        old = model.files[path]
        data = content(step["seed"], step["size"])
        off = step["offset"]
        buf = bytearray(old)
        if len(buf) < off:
            buf.extend(bytes(off - len(buf)))
        buf[off:off + len(data)] = data
        new.changed(path, bytes(buf))
    elif op == "truncate":
        old = model.files[path]
        n = step["size"]
        new.changed(path, old[:n] + bytes(max(0, n - len(old))))
    elif op == "rename":
        dst = step["dst"]
        new.drop(dst)
        new.files[dst] = model.files[path]
        if path in model.override:
            new.override[dst] = model.override[path]
        new.enc[dst] = model.enc.get(path)
        new.drop(path)
    elif op == "unlink":
        new.drop(path)
    elif op == "hold_unlinked":
        half = model.copy()
        half.files[path] = b""
        half.enc[path] = None
        between.append(half)
    elif op == "sse_set":
        new.override[path] = "AES256"
        new.enc[path] = "AES256"
    elif op == "sse_remove":
        new.override.pop(path, None)
        new.enc[path] = new.resolved(path)
    elif op == "bucket_put":
        new.plain_default = "AES256"
    elif op == "bucket_delete":
        new.plain_default = None
    elif op in ("fsync", "fsync_dir"):
        pass
    else:
        raise AssertionError(op)
    return new, between


class Shape:
    """What the planner tracks instead of a Model: sizes, SSE overrides, the plain default."""

    def __init__(self, model):
        self.sizes = {p: len(d) for p, d in model.files.items()}
        self.overrides = set(model.override)
        self.plain_default = model.plain_default is not None

    def track(self, step):
        op, path, sizes = step["op"], step["path"], self.sizes
        if op in ("create", "rewrite_trunc"):
            sizes[path] = step["size"]
        elif op == "append":
            sizes[path] += step["size"]
        elif op == "pwrite_fsync_hold":
            sizes[path] = max(sizes[path], step["offset"] + step["size"])
        elif op == "truncate":
            sizes[path] = step["size"]
        elif op == "rename":
            sizes[step["dst"]] = sizes.pop(path)
            self.overrides.discard(step["dst"])
            if path in self.overrides:
                self.overrides.discard(path)
                self.overrides.add(step["dst"])
        elif op == "unlink":
            del sizes[path]
            self.overrides.discard(path)
        elif op == "sse_set":
            self.overrides.add(path)
        elif op == "sse_remove":
            self.overrides.discard(path)
        elif op == "bucket_put":
            self.plain_default = True
        elif op == "bucket_delete":
            self.plain_default = False


MIXES = {
    "writes": {"create": 6, "overwrite": 3, "rewrite_trunc": 2, "append": 3,
               "pwrite_fsync_hold": 3, "unlink": 2, "hold_unlinked": 1, "truncate": 1,
               "rename": 1},
    "renames_truncates": {"create": 2, "rename": 6, "truncate": 6, "unlink": 1,
                          "overwrite": 1},
    "reencrypt": {"create": 1, "sse_set": 5, "sse_remove": 4, "overwrite": 1},
    "bucket_config": {"create": 4, "overwrite": 3, "rewrite_trunc": 1, "bucket_put": 3,
                      "bucket_delete": 3, "sse_set": 1, "sse_remove": 1, "truncate": 1},
}
MIXES["many_files"] = {"create": 10, "unlink": 2, "rename": 1, "overwrite": 1}
#: (small, big) size ranges of created content per mix; "huge" files far beyond the write
#: buffer appear now and then in the "writes" mix
SIZES = {"reencrypt": ((1, 200 * KiB), (2 * MiB, 6 * MiB)),
         "many_files": ((0, 4 * KiB), (4 * KiB, 64 * KiB))}
HUGE = {"writes": (8 * MiB, 24 * MiB)}
BUCKETS = {"reencrypt": [PLAIN, PLAIN, PLAIN, ENC]}
MAX_FILES = {"many_files": 400}


class Planner:
    """Seeded generator of step lists over a model."""

    def __init__(self, seed, mix):
        self.rng = random.Random(seed)
        self.mix = MIXES[mix]
        self.small, self.big = SIZES.get(mix, ((1, 200 * KiB), (1 * MiB, 4 * MiB)))
        self.huge = HUGE.get(mix)
        self.buckets = BUCKETS.get(mix, [PLAIN, ENC])
        self.max_files = MAX_FILES.get(mix, 14)
        self.counter = 0

    def size(self):
        r = self.rng.random()
        if r < 0.1:
            return 0
        if r < 0.4:
            return self.rng.randint(*self.small)
        if r < 0.6 and self.big[1] > MiB:
            return self.rng.randint(1, 16) * 64 * KiB + self.rng.randint(-2, 2)
        if r < 0.63 and self.huge:
            return self.rng.randint(*self.huge)
        return self.rng.randint(*self.big)

    def new_path(self):
        self.counter += 1
        bucket = self.rng.choice(self.buckets)
        sub = self.rng.choice(["crash", "crash", "crash/sub"])
        return "%s/%s/f%d-%d" % (bucket, sub, self.counter, self.rng.randint(0, 999))

    def plan(self, model, n):
        """``n`` steps starting from ``model``; only sizes are tracked (content comes later)."""
        shape = Shape(model)
        steps = []
        for _ in range(n):
            step = self.one(shape)
            shape.track(step)
            steps.append(step)
        return steps

    def one(self, shape):
        """One valid step: every step must succeed when the daemon is alive."""
        rng = self.rng
        sizes = shape.sizes
        files = sorted(sizes)
        kinds = [k for k, w in self.mix.items() for _ in range(w)]
        while True:
            op = rng.choice(kinds)
            needs_file = op not in ("create", "hold_unlinked", "bucket_put", "bucket_delete",
                                    "fsync_dir")
            pool = files
            if op == "sse_remove":
                pool = sorted(shape.overrides)
            elif op == "sse_set":  # a real change of state, so there is work to interrupt
                pool = [p for p in files if p not in shape.overrides]
            if needs_file and not pool:
                continue
            if op == "create" and len(files) >= self.max_files:
                continue
            if op == "bucket_delete" and not shape.plain_default:
                continue
            break
        if op == "fsync_dir":
            path = "%s/%s" % (rng.choice(self.buckets), rng.choice(["crash", "crash/sub"]))
        else:
            path = rng.choice(pool) if needs_file else self.new_path()
        step = {"op": op, "path": path, "seed": rng.getrandbits(48)}
        if op in ("create", "rewrite_trunc", "hold_unlinked"):
            step["size"] = self.size()
        elif op == "append":
            step["size"] = rng.randint(1, 300 * KiB)
        elif op == "pwrite_fsync_hold":
            step["size"] = rng.randint(1, 300 * KiB)
            step["offset"] = rng.randint(0, sizes[path] + 100 * KiB)
        elif op == "truncate":
            cur = sizes[path]
            step["size"] = rng.choice([0, cur // 2, max(0, cur - rng.randint(1, 70 * KiB)),
                                       cur + rng.randint(1, 200 * KiB),
                                       rng.randint(0, 64) * 64 * KiB])
        elif op == "rename":
            bucket = path.split("/")[0]
            same = [p for p in files if p.startswith(bucket + "/") and p != path]
            if same and rng.random() < 0.5:
                step["dst"] = rng.choice(same)  # over an existing object
            else:
                sub = rng.choice(["crash", "crash/sub"])
                self.counter += 1
                step["dst"] = "%s/%s/r%d" % (bucket, sub, self.counter)
        return step


# -- the writer subprocess -----------------------------------------------------------
def _write_all(fd, data, offset=None):
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        piece = view[pos:pos + PIECE]
        if offset is None:
            n = os.write(fd, piece)
        else:
            n = os.pwrite(fd, piece, offset + pos)
        pos += n


def execute(mnt, step, held):
    op = step["op"]
    p = os.path.join(mnt, step["path"]) if step.get("path") else None
    if op == "create":
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, content(step["seed"], step["size"]))
        finally:
            os.close(fd)
    elif op == "overwrite":
        fd = os.open(p, os.O_WRONLY)
        try:
            _write_all(fd, content(step["seed"], os.fstat(fd).st_size), 0)
        finally:
            os.close(fd)
    elif op == "rewrite_trunc":
        fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, content(step["seed"], step["size"]))
        finally:
            os.close(fd)
    elif op == "append":
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            _write_all(fd, content(step["seed"], step["size"]))
        finally:
            os.close(fd)
    elif op == "pwrite_fsync_hold":
        fd = os.open(p, os.O_RDWR)
        held.append(fd)
        _write_all(fd, content(step["seed"], step["size"]), step["offset"])
        os.fsync(fd)
    elif op == "truncate":
        os.truncate(p, step["size"])
    elif op == "rename":
        os.rename(p, os.path.join(mnt, step["dst"]))
    elif op == "unlink":
        os.unlink(p)
    elif op == "hold_unlinked":
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        held.append(fd)
        os.unlink(p)
        _write_all(fd, content(step["seed"], step["size"]))
        os.fsync(fd)
    elif op == "sse_set":
        os.setxattr(p, SSE, b"AES256")
    elif op == "sse_remove":
        os.removexattr(p, SSE)
    elif op == "bucket_put":
        os.setxattr(os.path.join(mnt, PLAIN), BUCKET_ENC, b"AES256")
    elif op == "bucket_delete":
        os.removexattr(os.path.join(mnt, PLAIN), BUCKET_ENC)
    elif op == "fsync":
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    elif op == "fsync_dir":
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        raise AssertionError(op)


def writer_main(steps_file, journal, mnt):
    with open(steps_file) as f:
        steps = json.load(f)
    jfd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(jfd, b"start\n")
    held = []
    for i, step in enumerate(steps):
        try:
            execute(mnt, step, held)
        except OSError as exc:
            # the time tells the test whether the error came after the kill (the
            # clock is CLOCK_MONOTONIC, the same for every process)
            code = errno.errorcode.get(exc.errno, str(exc.errno))
            os.write(jfd, ("error %d %s %s %.6f\n" % (i, step["op"], code,
                                                       time.monotonic())).encode())
            return 3
        os.write(jfd, b"done %d\n" % i)
    os.write(jfd, b"finished\n")
    for fd in held:
        os.close(fd)
    return 0


# -- observing the mount --------------------------------------------------------------
def read_tree(mnt):
    """({path: bytes}, {path: SSE value or ABSENT}, plain default) of the crash folders."""
    files, enc = {}, {}
    for bucket in (PLAIN, ENC):
        top = os.path.join(mnt, bucket, "crash")
        for dirpath, dirnames, filenames in os.walk(top):
            for name in filenames:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, mnt)
                try:
                    with open(path, "rb") as f:
                        files[rel] = f.read()
                except OSError as exc:  # read(2) errors carry no path: fail with it
                    raise OSError(exc.errno, exc.strerror, path) from exc
                try:
                    enc[rel] = os.getxattr(path, SSE).decode()
                except OSError as exc:
                    if exc.errno != errno.ENODATA:
                        raise
                    enc[rel] = ABSENT
    try:
        doc = os.getxattr(os.path.join(mnt, PLAIN), BUCKET_ENC)
        plain_default = "AES256" if b"AES256" in doc else doc.decode(errors="replace")
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        plain_default = None
    return files, enc, plain_default


def read_requests(store_dir, paths):
    """{path: enc_request} straight from the catalog of an unmounted store.

    The override request is not visible through the mount (the xattr shows the
    actual state), yet it decides how the next write is encrypted, so it must
    survive a crash together with the state it produced.
    """
    import sqlite3
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(store_dir, "catalog.db"), uri=True)
    try:
        out = {}
        for path in paths:
            parts = path.split("/")
            row = db.execute("SELECT inode FROM buckets WHERE name=?", (parts[0],)).fetchone()
            for name in parts[1:]:
                if row is None:
                    break
                row = db.execute("SELECT inode FROM dentries WHERE parent=? AND name=?",
                                 (row[0], name.encode())).fetchone()
            if row is not None:
                req = db.execute("SELECT enc_request FROM inodes WHERE id=?", (row[0],))
                out[path] = req.fetchone()[0]
        return out
    finally:
        db.close()


def matches(model, observed):
    files, enc, plain_default = observed[:3]
    if files != model.files or plain_default != model.plain_default:
        return False
    if len(observed) > 3 and {p: r for p, r in observed[3].items() if r} != model.override:
        return False
    return all(e is None or enc.get(p) == e for p, e in model.enc.items())


def describe_difference(model, observed):
    files, enc, plain_default = observed[:3]
    out = []
    for p in sorted(set(files) | set(model.files)):
        a, b = files.get(p), model.files.get(p)
        if a != b:
            out.append("%s: found %s, expected %s" % (
                p, "absent" if a is None else "%d bytes" % len(a),
                "absent" if b is None else "%d bytes" % len(b)))
            if a is not None and b is not None:
                n = min(len(a), len(b))
                first = next((i for i in range(n) if a[i] != b[i]), n)
                out[-1] += " (first difference at byte %d)" % first
        elif model.enc.get(p) is not None and enc.get(p) != model.enc[p]:
            out.append("%s: encryption %s, expected %s" % (p, enc.get(p), model.enc[p]))
    if plain_default != model.plain_default:
        out.append("plain bucket default %r, expected %r" % (plain_default, model.plain_default))
    if len(observed) > 3:
        requests = {p: r for p, r in observed[3].items() if r}
        if requests != model.override:
            out.append("override requests %r, expected %r" % (requests, model.override))
    return "; ".join(out) or "no difference"


def fsck_counts(lines):
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("removed", "found") and parts[1].isdigit():
            counts[" ".join(parts[2:])] = int(parts[1])
    return counts


class CrashRunner:
    """Rounds of write-and-kill over one store; see the module docstring."""

    def __init__(self, folder, seed, mix, *, chunk_size="64KiB", write_buffer="1MiB",
                 steps=1500, max_delay=1.2, report=print):
        self.folder = folder
        self.seed = seed
        self.mix = mix
        self.rng = random.Random(seed)
        self.planner = Planner(self.rng.getrandbits(32), mix)
        self.steps = steps
        self.max_delay = max_delay
        self.report = report
        self.mount = Mount(self.make_config(folder, chunk_size, write_buffer))
        self.model = Model()
        self.round = 0

    # -- what a power-cut runner changes (tests/t5_powercut.py) --
    what = "crash test"

    def make_config(self, folder, chunk_size, write_buffer):
        return write_config(folder, chunk_size=chunk_size, write_buffer=write_buffer)

    def after_kill(self):
        """Called once the daemon is dead and the writer stopped."""

    def first_allowed(self, steps, k):
        """Index of the earliest model state the store may show after the kill when ``k``
        steps were journaled: after a kill, everything closed survives."""
        return k

    def fail(self, what, journal=None):
        raise AssertionError("%s %s, seed %r, round %d: %s%s%s" % (
            self.what, self.mix, self.seed, self.round, what,
            "" if journal is None else "\njournal %s:\n%s" % (journal, _tail(journal)),
            self.logs()))

    def logs(self):
        """The daemon's log from its first error on, if any: the test's folder (and the log
        in it) is removed after a failure, and an EIO names its cause only there."""
        bad = self.mount.unexpected_log_lines()
        if not bad:
            return ""
        lines = self.mount.log_text().splitlines()
        first = lines.index(bad[0])  # the first error, with its traceback
        return "\ndaemon log %s (from its first error):\n%s" % (
            self.mount.log, "\n".join(lines[first:first + 40]))

    def setup(self):
        self.mount.start()
        for bucket in (PLAIN, ENC):
            os.makedirs(os.path.join(self.mount.mnt, bucket, "crash", "sub"))

    def run_round(self):
        self.round += 1
        m = self.mount
        steps = self.planner.plan(self.model, self.steps)
        base = os.path.join(self.folder, "round%d" % self.round)
        with open(base + ".steps.json", "w") as f:
            json.dump(steps, f)
        journal = base + ".journal"
        with open(base + ".writer.err", "wb") as err:
            writer = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--writer", base + ".steps.json",
                 journal, m.mnt], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err, cwd=self.folder)
        deadline = time.monotonic() + 30
        while not (os.path.exists(journal) and os.path.getsize(journal)):
            if writer.poll() is not None or time.monotonic() > deadline:
                self.fail("the writer did not start", base + ".writer.err")
            time.sleep(0.01)
        time.sleep(self.rng.uniform(0, self.max_delay))
        killed_at = time.monotonic()
        m.kill9()
        try:
            writer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
        done = -1
        with open(journal) as f:
            for line in f:
                if line.startswith("done "):
                    done = int(line.split()[1])
                elif line.startswith("error "):
                    # A request in flight at the kill fails with ENOTCONN/ECONNABORTED; once
                    # the dead mount is detached, paths below it give ENOENT. Any error
                    # before the kill is a real failure.
                    _, _, _, code, when = line.split()
                    if code not in ("ENOTCONN", "ECONNABORTED") and float(when) < killed_at:
                        self.fail("a step failed while the daemon was alive: " + line, journal)
        self.after_kill()
        k = done + 1
        models, between = [self.model], []
        for step in steps[:k + 1]:
            new, mid = apply_step(models[-1], step)
            between.append(mid)
            models.append(new)

        # fsck on the crashed store: only orphans/garbage/unlinked, then a clean second run
        res = m.cli("fsck", "--config", m.config, "--verify", check=False)
        if res.returncode != 0 or "DAMAGED" in res.stdout:
            self.fail("fsck after the kill exited %d:\n%s%s" % (res.returncode, res.stdout,
                                                               res.stderr), journal)
        first = fsck_counts(res.stdout.splitlines())
        res = m.cli("fsck", "--config", m.config, check=False)
        again = fsck_counts(res.stdout.splitlines())
        if res.returncode != 0 or any(again.values()) or not again:
            self.fail("second fsck is not clean (exit %d):\n%s%s" % (res.returncode, res.stdout,
                                                                   res.stderr), journal)

        first = self.first_allowed(steps, k)
        # every path of every allowed state: the one that matches may be any of them
        requests = read_requests(m.store, sorted(set().union(*(mod.files
                                                               for mod in models[first:]))))
        m.start()
        try:
            observed = read_tree(m.mnt)
        except OSError as exc:
            self.fail("reading the tree after the crash: %s" % exc, journal)
        observed += (requests,)
        candidates = []
        for j in range(first, k + 1):
            candidates.append(("after step %d" % (j - 1) if j else "before the round",
                               models[j]))
            if j < len(steps):
                candidates += [("inside step %d (%s)" % (j, steps[j]["op"]), mid)
                               for mid in between[j]]
        if k < len(steps):
            candidates.append(("completed step %d (%s) not journaled" % (k, steps[k]["op"]),
                               models[k + 1]))
        for label, model in candidates:
            if matches(model, observed):
                break
        else:
            self.fail("state after the crash (%d steps journaled, step in flight: %s, earliest "
                      "allowed state: after step %d) matches no allowed state:\n  vs last "
                      "journaled: %s\n  vs earliest allowed: %s" % (
                          k, steps[k] if k < len(steps) else None, first - 1,
                          describe_difference(models[k], observed),
                          describe_difference(models[first], observed)), journal)
        # what was observed (not the in-flight guess) is where the next round starts
        self.model = model.copy()
        self.report("round %d: %d/%d steps journaled, state %s, fsck %s" % (
            self.round, k, len(steps), label, first))
        return label

    def abort(self):
        """Leave nothing mounted or running after a failure."""
        self.mount.kill9()

    def finish(self):
        m = self.mount
        m.stop()
        res = m.cli("fsck", "--config", m.config, "--verify", check=False)
        counts = fsck_counts(res.stdout.splitlines())
        if res.returncode != 0 or any(counts.values()):
            self.fail("fsck after a clean unmount is not clean:\n%s%s" % (res.stdout, res.stderr))
        bad = m.unexpected_log_lines()
        if bad:
            self.fail("unexpected errors in the daemon log:\n" + "\n".join(bad[:20]))


def _tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(none)"


def run_rounds(folder, seed, mix, rounds, runner_class=CrashRunner, **kw):
    runner = runner_class(folder, seed, mix, **kw)
    runner.setup()
    try:
        for _ in range(rounds):
            runner.run_round()
    except BaseException:
        runner.abort()
        raise
    runner.finish()
    return runner


#: kill points per scenario in CI (contrib/stress.py runs hundreds)
ROUNDS = int(os.environ.get("COSFS_CRASH_ROUNDS", "8"))


@needs_fuse
@pytest.mark.parametrize("mix,seed,max_delay", [
    ("writes", 101, 1.5),
    ("renames_truncates", 202, 1.0),
    ("reencrypt", 303, 2.0),
    ("bucket_config", 404, 1.0),
    ("many_files", 505, 1.0),
])
def test_crash(tmp_path, mix, seed, max_delay):
    run_rounds(str(tmp_path / "fs"), seed, mix, ROUNDS, max_delay=max_delay)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--writer":
    sys.exit(writer_main(*sys.argv[2:]))
