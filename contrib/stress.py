#!/usr/bin/env python3
"""Long runs of the differential, crash and power-cut tests (tests/t5_differential.py,
tests/t5_crash.py, tests/t5_powercut.py).

CI runs a few thousand operations and a few dozen kill points; this runs as
many as you ask for, over several seeds in parallel workers, each worker with
its own store and mount. Not run by CI. Needs /dev/fuse and fusermount3.

Examples::

    contrib/stress.py differential --ops 50000 --seed 1 --workers 4
    contrib/stress.py crash --kill-points 400 --seed 7 --workers 2 --mix writes,reencrypt
    contrib/stress.py both --ops 20000 --kill-points 200
    contrib/stress.py powercut --kill-points 300 --seed 3 --chunk-size 64KiB
    contrib/stress.py differential --ops 8000 --chunk-size 256KiB --write-buffer 512KiB \
        --max-size 1100KiB --workers 4     # partly held chunks (cosfs/chunkbuf.py)

Each worker uses seed ``SEED + worker number`` so a failure names the seed to
replay with ``--workers 1 --seed N``. Folders of failed workers are kept
(``--keep`` keeps all of them); they hold the op log or the crash journals
and the daemon log.
"""

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import conftest  # noqa: E402  (tests/ is not a package)
import t5_crash  # noqa: E402
import t5_differential  # noqa: E402
import t5_powercut  # noqa: E402  (adds the power-cut mixes to t5_crash.MIXES)

from cosfs.config import parse_size  # noqa: E402


def differential_worker(folder, seed, ops, bucket, chunk_size, remounts, write_buffer,
                        max_size):
    m = conftest.Mount(conftest.write_config(folder, chunk_size=chunk_size,
                                             write_buffer=write_buffer))
    m.start()
    try:
        root = os.path.join(m.mnt, conftest.ENC if bucket == "enc" else conftest.PLAIN, "t")
        ref = os.path.join(folder, "ref")
        os.mkdir(root)
        os.mkdir(ref)
        os.chmod(ref, os.stat(root).st_mode & 0o7777)
        d = t5_differential.Differential(seed, root, ref, restart=m.restart,
                                         log_path=os.path.join(folder, "oplog.txt"),
                                         max_size=max_size)
        marks = {ops * (i + 1) // (remounts + 1) for i in range(remounts)}
        d.run(ops, remount_at=marks)
    finally:
        m.stop()
    bad = m.unexpected_log_lines()
    if bad:
        raise AssertionError("unexpected errors in the daemon log:\n" + "\n".join(bad[:20]))
    return "%d operations on the %s bucket, write buffer %s, %d remounts" % (
        ops, bucket, write_buffer, len(marks))


def crash_worker(folder, seed, mix, rounds, chunk_size, max_delay, power=False):
    lines = []
    runner = t5_powercut.PowerCutRunner if power else t5_crash.CrashRunner
    t5_crash.run_rounds(folder, seed, mix, rounds, runner_class=runner, chunk_size=chunk_size,
                        max_delay=max_delay, report=lines.append)
    states = {}
    for line in lines:
        state = line.split(", state ")[1]
        kind = ("not journaled" if "not journaled" in state else
                state.split(" step")[0] if " step" in state else "before the round")
        states[kind] = states.get(kind, 0) + 1
    return "%d %s (%s), states after it: %s" % (rounds, "power cuts" if power else "kill points",
                                                 mix, states)


def run_job(job):
    kind, folder, seed, kw = job
    start = time.monotonic()
    try:
        fn = differential_worker if kind == "differential" else crash_worker
        summary = fn(folder, seed, **kw)
        return True, "%s seed %d: %s in %.0fs" % (kind, seed, summary, time.monotonic() - start)
    except BaseException:  # report and keep the others running
        return False, "%s seed %d FAILED (folder %s):\n%s" % (kind, seed, folder,
                                                             traceback.format_exc())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["differential", "crash", "both", "powercut"])
    p.add_argument("--ops", type=int, default=20000, help="differential operations per worker")
    p.add_argument("--kill-points", type=int, default=200,
                   help="crash kill points (or power cuts) in total, split over workers and "
                   "mixes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--bucket", choices=["plain", "enc", "both"], default="both",
                   help="differential: which bucket (both: alternate between workers)")
    p.add_argument("--remounts", type=int, default=3, help="differential remounts per worker")
    p.add_argument("--mix", default="all",
                   help="crash scenarios, comma separated: %s (all: every mix; for powercut "
                   "the power mixes and 'writes', 'many_files')" % ", ".join(t5_crash.MIXES))
    p.add_argument("--max-delay", type=float, default=1.5,
                   help="crash: kill after a random delay up to this many seconds")
    p.add_argument("--chunk-size", default="64KiB")
    p.add_argument("--write-buffer", help="differential: write buffer (default: alternate "
                   "16MiB and 128KiB, two chunks of the default size; give one at least "
                   "--chunk-size with larger chunks)")
    p.add_argument("--max-size", default="300KiB",
                   help="differential: largest file (files of several chunks of 256 KiB or "
                   "more exercise partly held chunks: try 1100KiB with --chunk-size 256KiB)")
    p.add_argument("--dir", help="where worker folders go (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the folders of passing workers")
    args = p.parse_args(argv)
    if not conftest.fuse_available():
        print("stress: needs /dev/fuse and fusermount3", file=sys.stderr)
        return 2

    base = args.dir or tempfile.mkdtemp(prefix="cosfs-stress-")
    os.makedirs(base, exist_ok=True)
    jobs = []
    if args.mode in ("differential", "both"):
        for w in range(args.workers):
            bucket = args.bucket if args.bucket != "both" else ("plain", "enc")[w % 2]
            seed = args.seed + w
            wb = args.write_buffer or ("16MiB", "128KiB")[(w + w // 2) % 2]
            jobs.append(("differential", os.path.join(base, "diff-%d" % seed), seed,
                         dict(ops=args.ops, bucket=bucket, chunk_size=args.chunk_size,
                              remounts=args.remounts, write_buffer=wb,
                              max_size=parse_size(args.max_size))))
    if args.mode in ("crash", "both", "powercut"):
        power = args.mode == "powercut"
        if args.mix != "all":
            mixes = args.mix.split(",")
        elif power:
            mixes = list(t5_powercut.POWER_MIXES) + ["writes", "many_files"]
        else:
            mixes = [m for m in t5_crash.MIXES if m not in t5_powercut.POWER_MIXES]
        unknown = set(mixes) - set(t5_crash.MIXES)
        if unknown:
            p.error("unknown mix: %s" % ", ".join(sorted(unknown)))
        slots = [(w, mix) for w in range(args.workers) for mix in mixes]
        for i, (w, mix) in enumerate(slots):
            rounds = args.kill_points // len(slots) + (i < args.kill_points % len(slots))
            if rounds:
                seed = args.seed + 1000 * w + i
                kind = "powercut" if power else "crash"
                jobs.append((kind, os.path.join(base, "%s-%s-%d" % (kind, mix, seed)), seed,
                             dict(mix=mix, rounds=rounds, chunk_size=args.chunk_size,
                                  max_delay=args.max_delay, power=power)))

    print("stress: %d job(s) in %s with %d worker(s)" % (len(jobs), base, args.workers))
    failed = 0
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.workers) as pool:
        for (kind, folder, seed, _), (ok, msg) in zip(jobs, pool.map(run_job, jobs)):
            print(msg, flush=True)
            if ok and not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
            failed += not ok
    if not failed and not args.keep and not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    print("stress: %d of %d job(s) failed" % (failed, len(jobs)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
