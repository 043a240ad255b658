#!/usr/bin/python3
"""Check that h5py reads datasets written from shards as the whole global tensors.

Usage: check_gathered.py STEP_FILE DATASET DTYPE SHAPE RAW [DATASET DTYPE SHAPE RAW ...]

For each dataset, DTYPE is the NumPy dtype h5py must return (for example
float32), SHAPE is the expected shape as comma-separated sizes ("" for a 0-d
dataset), and RAW is a file of the expected elements in C order, native byte
order. The dataset must match in dtype, shape and every byte. Exits with 0 when
all match and 1 otherwise, printing one line per mismatch.

Run it with HDF5_USE_FILE_LOCKING=FALSE when another process may hold the file.
"""

import sys

import h5py
import numpy as np


def parse_shape(text):
    return tuple(int(size) for size in text.split(",")) if text else ()


def check(file, dataset, dtype, shape, raw):
    """Return a description of the first difference, or None when the dataset matches."""
    if dataset not in file:
        return f"{dataset}: not found in the file"
    actual = file[dataset][()]
    actual = np.asarray(actual)
    if actual.dtype != np.dtype(dtype):
        return f"{dataset}: expected dtype {np.dtype(dtype)}, but h5py returned {actual.dtype}"
    if actual.shape != shape:
        return f"{dataset}: expected shape {shape}, but h5py returned {actual.shape}"
    expected = np.fromfile(raw, dtype=np.dtype(dtype))
    if expected.size != actual.size:
        return f"{dataset}: the expected file {raw} holds {expected.size} elements, but the shape needs {actual.size}"
    expected = expected.reshape(shape)
    actual_bytes = np.ascontiguousarray(actual).view(np.uint8).reshape(-1)
    expected_bytes = np.ascontiguousarray(expected).view(np.uint8).reshape(-1)
    if np.array_equal(actual_bytes, expected_bytes):
        return None
    differing = np.flatnonzero(actual.reshape(-1) != expected.reshape(-1))
    first = int(differing[0]) if differing.size else 0
    return (f"{dataset}: bytes differ, first at flat element {first}: expected "
            f"{expected.reshape(-1)[first]!r}, but h5py returned {actual.reshape(-1)[first]!r}")


def main(argv):
    if len(argv) < 6 or (len(argv) - 2) % 4 != 0:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    failures = []
    with h5py.File(argv[1], "r") as file:
        for i in range(2, len(argv), 4):
            dataset, dtype, shape, raw = argv[i:i + 4]
            problem = check(file, dataset, dtype, parse_shape(shape), raw)
            if problem:
                failures.append(problem)
    for problem in failures:
        print(problem)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
