"""h5py with MPI-IO, written the way a user would checkpoint by hand. The file
has one dataset per tensor, created collectively. Every tensor is written
collectively: each rank writes an even share of the rows of a parameter, and
its own flat range of a moment (moments are stored flat). Loading reads every
parameter in full on every rank, and each rank's own moment range. Saves end
with a flush, a close and an fsync, so they are durable like a persistence save.

    mpiexec -n 2 /usr/bin/python3 bench/h5py_reference.py --spec spec.json \
        --workload transformer --dir /tmp/scratch --out results.jsonl
"""

import argparse
import os

import numpy as np

import reference_common as common

os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")
import h5py  # noqa: E402  (the environment above selects the MPI build)


def row_share(shape):
    """Returns this rank's rows of a tensor split evenly along its first dimension."""
    return common.even_share(shape[0]) if shape else (0, 0)


def write_parameters(handle, spec, parameters):
    for item in spec["parameters"]:
        dataset = handle.create_dataset("model/" + item["name"], shape=tuple(item["shape"]), dtype="<f4")
        begin, end = row_share(item["shape"])
        with dataset.collective:
            dataset[begin:end] = parameters[item["name"]][begin:end].numpy()


def write_moments(handle, spec, shards):
    for item in spec["parameters"]:
        count = common.numel(item["shape"])
        begin, end = common.even_share(count)
        for moment in spec["moments"]:
            dataset = handle.create_dataset(f"optimizer/{item['name']}/{moment}", shape=(count,), dtype="<f4")
            with dataset.collective:
                dataset[begin:end] = shards[item["name"] + "/" + moment].numpy()
        for scalar in spec["scalar_states"]:
            dataset = handle.create_dataset(f"optimizer/{item['name']}/{scalar}", shape=(), dtype="<f4")
            with dataset.collective:
                dataset[()] = shards[item["name"] + "/" + scalar].numpy()


def save(path, spec, parameters, shards):
    with h5py.File(path, "w", driver="mpio", comm=common.COMM) as handle:
        write_parameters(handle, spec, parameters)
        if spec["moments"]:
            write_moments(handle, spec, shards)
        handle.flush()
    if common.RANK == 0:
        common.fsync_file(path)


def load(path, spec):
    loaded = {}
    with h5py.File(path, "r", driver="mpio", comm=common.COMM) as handle:
        for item in spec["parameters"]:
            dataset = handle["model/" + item["name"]]
            target = np.empty(tuple(item["shape"]), dtype="<f4")
            with dataset.collective:
                dataset.read_direct(target)
            loaded[item["name"]] = target
        for item in spec["parameters"]:
            begin, end = common.even_share(common.numel(item["shape"]))
            for moment in spec["moments"]:
                dataset = handle[f"optimizer/{item['name']}/{moment}"]
                target = np.empty(end - begin, dtype="<f4")
                with dataset.collective:
                    dataset.read_direct(target, np.s_[begin:end])
                loaded[item["name"] + "/" + moment] = target
            for scalar in spec["scalar_states"]:
                loaded[item["name"] + "/" + scalar] = handle[f"optimizer/{item['name']}/{scalar}"][()]
    return loaded


def run(arguments):
    if not h5py.get_config().mpi:
        raise SystemExit("h5py was loaded without MPI support; run /usr/bin/python3 under mpiexec")
    spec = common.load_spec(arguments.spec, arguments.workload)
    recorder = common.Recorder(arguments.out, scale=arguments.scale, series=arguments.series, mode=arguments.mode)
    parameters = common.parameters(spec)
    shards = common.moment_shards(spec) if spec["moments"] else {}
    total = sum(common.spec_bytes(spec))

    for run_index in range(arguments.runs):
        path = os.path.join(arguments.dir, f"h5py_{arguments.workload}_{run_index}.h5")
        start = common.synchronized_now()
        save(path, spec, parameters, shards)
        seconds = common.synchronized_now() - start
        recorder.record(workload=arguments.workload, system="h5py", operation="save", run=run_index, bytes=total,
                        seconds=seconds)

        cold = (not arguments.keep_caches) and common.drop_page_cache()
        start = common.synchronized_now()
        loaded = load(path, spec)
        seconds = common.synchronized_now() - start
        recorder.record(workload=arguments.workload, system="h5py", operation="load", run=run_index, bytes=total,
                        seconds=seconds, cold_cache=cold)
        del loaded

        common.COMM.Barrier()
        if common.RANK == 0:
            os.remove(path)
        common.COMM.Barrier()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.common_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
