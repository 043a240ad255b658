"""Helpers shared by the Python reference benchmarks (torch.save and h5py).

The tensor shapes come from the JSON description that
`persistence_bench --workload describe` writes, so the references move exactly
the bytes that the persistence benchmarks move. Run with /usr/bin/python3
under mpiexec; mpi4py initialises MPI on import.
"""

import json
import os
import time

import torch
from mpi4py import MPI

COMM = MPI.COMM_WORLD
RANK = COMM.Get_rank()
SIZE = COMM.Get_size()
SEED = 20240601


def load_spec(path, workload):
    with open(path) as handle:
        return json.load(handle)[workload]


def numel(shape):
    count = 1
    for size in shape:
        count *= size
    return count


def even_share(count, rank=RANK, size=SIZE):
    """Returns the elements [begin, end) that rank owns when a tensor is split evenly."""
    return count * rank // size, count * (rank + 1) // size


def parameters(spec):
    """Returns float32 parameters of the described shapes, the same on every rank."""
    generator = torch.Generator().manual_seed(SEED)
    return {item["name"]: torch.rand(item["shape"], generator=generator) for item in spec["parameters"]}


def moment_shards(spec):
    """Returns this rank's flat piece of every moment and the scalar step, keyed as persistence keys them."""
    generator = torch.Generator().manual_seed(SEED + 1 + RANK)
    states = {}
    for item in spec["parameters"]:
        begin, end = even_share(numel(item["shape"]))
        for moment in spec["moments"]:
            states[item["name"] + "/" + moment] = torch.rand(end - begin, generator=generator)
        for scalar in spec["scalar_states"]:
            states[item["name"] + "/" + scalar] = torch.tensor(1000.0)
    return states


def spec_bytes(spec):
    """Returns the global bytes of the workload: (parameters, moments at full size plus scalars)."""
    parameter_bytes = sum(4 * numel(item["shape"]) for item in spec["parameters"])
    moment_bytes = len(spec["moments"]) * parameter_bytes
    scalar_bytes = 4 * len(spec["scalar_states"]) * len(spec["parameters"])
    return parameter_bytes, moment_bytes + scalar_bytes


def drop_page_cache():
    """Collective. Drops the page cache on rank 0, which needs root. Returns whether it worked, on every rank."""
    dropped = False
    if RANK == 0:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as control:
                control.write("3\n")
            dropped = True
        except OSError:
            dropped = False
    return COMM.bcast(dropped, root=0)


def synchronized_now():
    COMM.Barrier()
    return time.perf_counter()


def fsync_file(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Recorder:
    """Appends measurements as JSON lines on rank 0, with the common fields."""

    def __init__(self, path, **common):
        self.path = path
        self.common = dict(common, ranks=SIZE)

    def record(self, **fields):
        if RANK != 0:
            return
        record = dict(self.common)
        record.update(fields)
        with open(self.path, "a") as out:
            out.write(json.dumps(record) + "\n")
        gib = record["bytes"] / 2**30
        seconds = record["seconds"]
        print(
            f"{record['workload']:<12} {record['system']:<12} {record['operation']:<22} np={SIZE:<2d} "
            f"run={record['run']:<2d} {seconds:8.3f} s {gib:8.3f} GiB {gib / seconds if seconds else 0:8.3f} GiB/s",
            flush=True,
        )


def common_arguments(parser):
    parser.add_argument("--spec", required=True, help="JSON written by persistence_bench --workload describe")
    parser.add_argument("--workload", choices=["transformer", "small"], required=True)
    parser.add_argument("--dir", required=True, help="scratch directory")
    parser.add_argument("--out", required=True, help="JSON-lines result file")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--series", default="default")
    parser.add_argument("--mode", default="full")
    parser.add_argument("--keep-caches", action="store_true", help="do not drop the page cache before loads")
