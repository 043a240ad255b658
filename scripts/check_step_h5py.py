#!/usr/bin/python3
"""Check a persistence step file with h5py against expectations in JSON.

Usage: /usr/bin/python3 scripts/check_step_h5py.py STEP_FILE EXPECTATIONS_JSON

The checks use h5py only (serial build, file locking off), so they test what any
h5py user gets. Each failed check prints one line naming the dataset or
attribute; the exit status is 1 when any check failed and 0 otherwise.

Expectation keys, all optional:
  root_attributes          {name: value} compared after decoding bytes
  root_attributes_present  [name, ...] that must exist
  yaml_strings             {dataset path: value} where the dataset is a string
                           dataset whose YAML text parses (yaml.safe_load) to value
  tensor_groups            {group path: {"exact_keys": bool, "tensors": {key: tensor}}}
                           where datasets are found by their `key` attribute, so the
                           check does not depend on how names are escaped
  datasets                 {dataset path: tensor}
A tensor expectation holds torch_dtype, numpy_dtypes (accepted numpy dtype
names), shape, values (flattened) and optionally key.
"""

import json
import os
import re
import sys

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import h5py  # noqa: E402  (the variable above must be set before HDF5 loads)
import numpy  # noqa: E402
import yaml  # noqa: E402


class Checker:
    def __init__(self, path):
        self.path = path
        self.failures = []

    def fail(self, subject, message):
        self.failures.append(f"{subject}: {message}")

    def check_root_attributes(self, f, expected, present):
        for name, value in expected.items():
            if name not in f.attrs:
                self.fail(f"root attribute {name}", "missing")
                continue
            actual = decode(f.attrs[name])
            if isinstance(actual, numpy.generic):
                actual = actual.item()
            if actual != value:
                self.fail(f"root attribute {name}", f"expected {value!r}, but got {actual!r}")
        for name in present:
            if name not in f.attrs:
                self.fail(f"root attribute {name}", "missing")
        if "created" in f.attrs:
            created = decode(f.attrs["created"])
            if not re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", str(created)):
                self.fail("root attribute created", f"expected an ISO 8601 time, but got {created!r}")

    def check_yaml_string(self, f, path, expected):
        if path not in f:
            self.fail(path, "missing")
            return
        dataset = f[path]
        if dataset.dtype.kind not in ("S", "O"):
            self.fail(path, f"expected a string dataset, but got dtype {dataset.dtype}")
            return
        try:
            text = dataset.asstr()[()]
        except (UnicodeDecodeError, TypeError, ValueError) as error:
            self.fail(path, f"asstr() failed: {error}")
            return
        actual = yaml.safe_load(text)
        if actual != expected:
            self.fail(path, f"YAML expected {expected!r}, but got {actual!r} from text {text!r}")

    def check_tensor(self, dataset, expected, subject):
        attrs = dataset.attrs
        for name in ("torch_dtype", "checksum"):
            if name not in attrs:
                self.fail(subject, f"attribute {name} missing")
        if "torch_dtype" in attrs and decode(attrs["torch_dtype"]) != expected["torch_dtype"]:
            self.fail(subject, f"torch_dtype expected {expected['torch_dtype']!r}, but got "
                               f"{decode(attrs['torch_dtype'])!r}")
        if "key" in expected and decode(attrs.get("key", "")) != expected["key"]:
            self.fail(subject, f"key attribute expected {expected['key']!r}, but got {decode(attrs.get('key'))!r}")
        if list(dataset.shape) != expected["shape"]:
            self.fail(subject, f"shape expected {expected['shape']}, but got {list(dataset.shape)}")
            return
        if dataset.dtype.name not in expected["numpy_dtypes"]:
            self.fail(subject, f"h5py dtype expected one of {expected['numpy_dtypes']}, but got {dataset.dtype.name}")
        values = numpy.asarray(dataset[()]).ravel()
        want = expected["values"]
        if values.dtype.kind == "f":
            same = numpy.array_equal(values.astype(numpy.float64), numpy.array(want, dtype=numpy.float64))
        else:
            same = [int(v) for v in values.tolist()] == [int(v) for v in want]
        if not same:
            self.fail(subject, f"values expected {want}, but got {values.tolist()}")

    def check_tensor_group(self, f, path, expected):
        if path not in f:
            self.fail(path, "group missing")
            return
        by_key = {}
        for name, item in f[path].items():
            if not isinstance(item, h5py.Dataset):
                self.fail(f"{path}/{name}", "expected a dataset, but got a group")
                continue
            key = decode(item.attrs.get("key", name))
            if key in by_key:
                self.fail(f"{path}/{name}", f"key attribute {key!r} also on {by_key[key].name}")
            by_key[key] = item
        tensors = expected["tensors"]
        for key, tensor in tensors.items():
            if key not in by_key:
                self.fail(f"{path} key {key!r}", f"no dataset with this key; keys present: {sorted(by_key)}")
                continue
            self.check_tensor(by_key[key], tensor, f"{path} key {key!r} ({by_key[key].name})")
        if expected.get("exact_keys"):
            extra = sorted(set(by_key) - set(tensors))
            if extra:
                self.fail(path, f"unexpected keys {extra}")

    def run(self, expectations):
        with h5py.File(self.path, "r") as f:
            self.check_root_attributes(f, expectations.get("root_attributes", {}),
                                       expectations.get("root_attributes_present", []))
            for path, value in expectations.get("yaml_strings", {}).items():
                self.check_yaml_string(f, path, value)
            for path, group in expectations.get("tensor_groups", {}).items():
                self.check_tensor_group(f, path, group)
            for path, tensor in expectations.get("datasets", {}).items():
                if path not in f:
                    self.fail(path, "missing")
                else:
                    self.check_tensor(f[path], tensor, path)
        return self.failures


def decode(value):
    """Returns str for bytes and numpy string scalars, value otherwise."""
    if isinstance(value, (bytes, numpy.bytes_)):
        return value.decode("utf-8")
    if isinstance(value, numpy.ndarray) and value.shape == ():
        return decode(value[()])
    return value


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as stream:
        expectations = json.load(stream)
    failures = Checker(argv[1]).run(expectations)
    for failure in failures:
        print(f"{argv[1]}: {failure}")
    if not failures:
        print(f"{argv[1]}: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
