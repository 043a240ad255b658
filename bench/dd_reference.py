"""The disk's sequential bandwidth with dd, for the same byte count as a
checkpoint: a buffered write of a new file ending in fsync (conv=fsync), then
a read of it after the page cache is dropped; then the same with O_DIRECT
(oflag=direct, iflag=direct), which skips the page cache as persistence does
for large datasets. No MPI.

    /usr/bin/python3 bench/dd_reference.py --bytes 3221225472 --dir /tmp/scratch --out results.jsonl
"""

import argparse
import json
import os
import subprocess
import time

BLOCK = 1 << 20
DIRECT_BLOCK = 16 << 20  # larger requests keep more of the disk busy without the page cache


def drop_page_cache():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
        return True
    except OSError:
        return False


def timed_dd(*arguments):
    start = time.perf_counter()
    subprocess.run(["dd", *arguments], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def record(out, fields):
    with open(out, "a") as handle:
        handle.write(json.dumps(fields) + "\n")
    gib = fields["bytes"] / 2**30
    print(f"{fields['workload']:<12} {fields['system']:<12} {fields['operation']:<22} np=-  run={fields['run']:<2d} "
          f"{fields['seconds']:8.3f} s {gib:8.3f} GiB {gib / fields['seconds']:8.3f} GiB/s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, required=True, help="bytes to write and read (rounded up to MiB)")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workload", default="transformer")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--mode", default="full")
    arguments = parser.parse_args()

    blocks = -(-arguments.bytes // DIRECT_BLOCK) * 16  # a multiple of both block sizes
    path = os.path.join(arguments.dir, "dd_reference.bin")
    common = {"workload": arguments.workload, "ranks": 1, "scale": arguments.scale, "series": "default",
              "mode": arguments.mode, "bytes": blocks * BLOCK}
    for run in range(arguments.runs):
        # A new file each run, as every checkpoint step is a new file.
        if os.path.exists(path):
            os.remove(path)
        os.sync()
        seconds = timed_dd("if=/dev/zero", f"of={path}", f"bs={BLOCK}", f"count={blocks}", "conv=fsync")
        record(arguments.out, dict(common, system="dd", operation="write_fsync", run=run, seconds=seconds))
        cold = drop_page_cache()
        seconds = timed_dd(f"if={path}", "of=/dev/null", f"bs={BLOCK}")
        record(arguments.out, dict(common, system="dd", operation="read", run=run, seconds=seconds, cold_cache=cold))
        os.remove(path)
        os.sync()
        seconds = timed_dd("if=/dev/zero", f"of={path}", f"bs={DIRECT_BLOCK}", f"count={blocks // 16}",
                           "oflag=direct", "conv=fsync")
        record(arguments.out, dict(common, system="dd", operation="write_direct", run=run, seconds=seconds))
        seconds = timed_dd(f"if={path}", "of=/dev/null", f"bs={DIRECT_BLOCK}", "iflag=direct")
        record(arguments.out, dict(common, system="dd", operation="read_direct", run=run, seconds=seconds))
    os.remove(path)


if __name__ == "__main__":
    main()
