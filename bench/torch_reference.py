"""torch.save and torch.load of the benchmark workloads, as a user would
checkpoint by hand. Rank 0 saves the replicated parameters to one file, and
every rank saves its own optimizer shard to a file of its own. Every rank loads
the parameter file and its shard. Saves are timed with and without an fsync
of each file, because a persistence save is durable when it returns.

    mpiexec -n 2 /usr/bin/python3 bench/torch_reference.py --spec spec.json \
        --workload transformer --dir /tmp/scratch --out results.jsonl
"""

import argparse
import gc
import os
import time

import torch

import reference_common as common


def save_files(tensors_by_file):
    """Saves each file, then fsyncs it. Returns (seconds without fsync, seconds with fsync) on this rank."""
    start = time.perf_counter()
    for path, tensors in tensors_by_file.items():
        torch.save(tensors, path)
    written = time.perf_counter()
    for path in tensors_by_file:
        common.fsync_file(path)
    return written - start, time.perf_counter() - start


def files_of_rank(run_dir, model_tensors, optimizer_tensors):
    files = {}
    if common.RANK == 0:
        files[os.path.join(run_dir, "model.pt")] = model_tensors
    if optimizer_tensors:
        files[os.path.join(run_dir, f"optimizer_rank{common.RANK}.pt")] = optimizer_tensors
    return files


def load_files(run_dir, with_optimizer):
    loaded = [torch.load(os.path.join(run_dir, "model.pt"))]
    if with_optimizer:
        loaded.append(torch.load(os.path.join(run_dir, f"optimizer_rank{common.RANK}.pt")))
    return loaded


def run(arguments):
    spec = common.load_spec(arguments.spec, arguments.workload)
    recorder = common.Recorder(arguments.out, scale=arguments.scale, series=arguments.series, mode=arguments.mode)
    model_tensors = common.parameters(spec) if common.RANK == 0 else None
    optimizer_tensors = common.moment_shards(spec) if spec["moments"] else None
    total = sum(common.spec_bytes(spec))

    for run_index in range(arguments.runs):
        run_dir = os.path.join(arguments.dir, f"torch_{arguments.workload}_{run_index}")
        if common.RANK == 0:
            os.makedirs(run_dir, exist_ok=True)
        common.COMM.Barrier()

        start = common.synchronized_now()
        unsynced, synced = save_files(files_of_rank(run_dir, model_tensors, optimizer_tensors))
        seconds = common.synchronized_now() - start
        unsynced = common.COMM.allreduce(unsynced, op=common.MPI.MAX)
        recorder.record(workload=arguments.workload, system="torch.save", operation="save", run=run_index,
                        bytes=total, seconds=seconds, fsync=True)
        recorder.record(workload=arguments.workload, system="torch.save", operation="save_no_fsync",
                        run=run_index, bytes=total, seconds=unsynced, fsync=False)

        cold = (not arguments.keep_caches) and common.drop_page_cache()
        start = common.synchronized_now()
        loaded = load_files(run_dir, optimizer_tensors is not None)
        seconds = common.synchronized_now() - start
        recorder.record(workload=arguments.workload, system="torch.load", operation="load", run=run_index,
                        bytes=total, seconds=seconds, cold_cache=cold)
        del loaded
        gc.collect()

        common.COMM.Barrier()
        if common.RANK == 0:
            for name in os.listdir(run_dir):
                os.remove(os.path.join(run_dir, name))
            os.rmdir(run_dir)
        common.COMM.Barrier()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.common_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
