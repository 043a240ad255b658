#!/usr/bin/env bash
# Builds the benchmarks in Release mode and runs the whole suite: persistence
# against dd, memcpy, torch.save/torch.load and hand-written h5py, at 1 and 2
# ranks, plus a rank sweep. Writes every measurement to build/bench/results.json,
# a throughput plot, and (full mode) the tables of BENCHMARKS.md.
#
#   scripts/bench.sh            full mode, meant for 15 minutes on an idle 2-core machine
#   scripts/bench.sh --quick    small sizes, meant for 2 minutes; leaves BENCHMARKS.md alone
#
# Options: --build-dir DIR (default build-bench), --out DIR (default build/bench),
# --scratch DIR (parent of the temporary checkpoint directory, default /tmp),
# --small-count N (tensors of workload 2, default 10000 in full mode),
# --no-build (use the programs already built). Dropping the page cache before
# loads needs root. Without root, loads read from memory, and the results record that.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=full
build_dir=$repo_root/build-bench
out_dir=$repo_root/build/bench
scratch_parent=${TMPDIR:-/tmp}
build=1
small_count_option=
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) mode=quick ;;
    --build-dir) build_dir=$2; shift ;;
    --out) out_dir=$2; shift ;;
    --scratch) scratch_parent=$2; shift ;;
    --small-count) small_count_option=$2; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench.sh: unknown option '$1'; see --help" >&2; exit 2 ;;
  esac
  shift
done

# Debian's python has torch, h5py and mpi4py, which a python on PATH may lack.
python=/usr/bin/python3
if [[ $mode == full ]]; then
  scale=1; runs=3; small_count=10000
  sweep_scale=0.5; sweep_ranks="1 2 4 8"; reshard_scale=0.5
else
  scale=0.0625; runs=3; small_count=2000
  sweep_scale=0.0625; sweep_ranks="1 2 4"; reshard_scale=0.0625
fi
small_count=${small_count_option:-$small_count}

if [[ $build == 1 ]]; then
  # Only the benchmark program is needed, so the test suites and examples stay out of this tree.
  cmake -S "$repo_root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DPERSISTENCE_BUILD_TESTS=OFF \
    -DPERSISTENCE_BUILD_EXAMPLES=OFF > /dev/null
  cmake --build "$build_dir" -j "$(nproc)" --target persistence_bench
fi
bench=$build_dir/bin/persistence_bench

mkdir -p "$out_dir"
scratch=$(mktemp -d "$scratch_parent/persistence-bench.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
results=$out_dir/results.jsonl
: > "$results"

cores=$(nproc)
mpi_flags=()
[[ $(id -u) == 0 ]] && mpi_flags+=(--allow-run-as-root)
# Ranks beyond the core count need --oversubscribe; no binding lets libtorch's
# threads and the I/O thread use both cores, as an unbound trainer would.
# Ranks that wait in MPI yield the core instead of spinning: on a machine that
# others share (or with more ranks than cores) spinning ranks starve the rank
# being waited for, which made collective saves up to 10 times slower here.
mpi() {
  local ranks=$1; shift
  local flags=("${mpi_flags[@]}" --bind-to none --mca mpi_yield_when_idle 1)
  (( ranks > cores )) && flags+=(--oversubscribe)
  mpiexec "${flags[@]}" -n "$ranks" "$@"
}

note_load() {
  read -r one five fifteen _ < /proc/loadavg
  echo "{\"record\": \"load\", \"when\": \"$1\", \"load1\": $one, \"load5\": $five, \"load15\": $fifteen}" >> "$results"
}

common=(--dir "$scratch" --out "$results" --runs "$runs" --mode "$mode")
note_load start
started=$(date +%s)
# The library the programs were built from, so the results can be traced to it.
commit=$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)
changed=$(git -C "$repo_root" status --porcelain -- src include CMakeLists.txt 2>/dev/null | wc -l)
echo "{\"record\": \"source\", \"commit\": \"$commit\", \"uncommitted_library_files\": $changed}" >> "$results"

"$bench" --workload describe --scale "$scale" --small-count "$small_count" --out "$scratch/spec.json"
reference() {  # reference <script> <ranks> <workload>
  mpi "$2" "$python" "$repo_root/bench/$1" --spec "$scratch/spec.json" --workload "$3" --scale "$scale" "${common[@]}"
}

for ranks in 1 2; do
  resume=()
  [[ $ranks == 2 ]] && resume=(--resume-scan)
  mpi "$ranks" "$bench" --workload transformer --scale "$scale" "${resume[@]}" "${common[@]}"
  reference torch_reference.py "$ranks" transformer
  reference h5py_reference.py "$ranks" transformer
  mpi "$ranks" "$bench" --workload small --small-count "$small_count" "${common[@]}"
  reference torch_reference.py "$ranks" small
  reference h5py_reference.py "$ranks" small
  mpi "$ranks" "$bench" --workload async --scale "$scale" "${common[@]}"
done
note_load middle

# The same byte count as the transformer checkpoint.
checkpoint_bytes=$("$python" -c "
import json, sys
sys.path.insert(0, '$repo_root/bench')
import reference_common as c
print(sum(c.spec_bytes(json.load(open('$scratch/spec.json'))['transformer'])))" 2>/dev/null)
"$python" "$repo_root/bench/dd_reference.py" --bytes "$checkpoint_bytes" --scale "$scale" \
  --dir "$scratch" --out "$results" --runs "$runs" --mode "$mode"

mpi 2 "$bench" --workload reshard-save --scale "$reshard_scale" "${common[@]}"
for ranks in 2 1 3; do
  mpi "$ranks" "$bench" --workload reshard-load --scale "$reshard_scale" --saved-ranks 2 "${common[@]}"
done
rm -rf "$scratch/reshard"

for ranks in $sweep_ranks; do
  mpi "$ranks" "$bench" --workload transformer --scale "$sweep_scale" --series sweep "${common[@]}"
done
note_load end

report=("$python" "$repo_root/bench/report.py" --jsonl "$results" --json "$out_dir/results.json"
        --plot "$out_dir/throughput.png" --mode "$mode" --seconds "$(( $(date +%s) - started ))")
if [[ $mode == full ]]; then
  report+=(--markdown "$repo_root/BENCHMARKS.md")
  "${report[@]}"
  cp "$out_dir/throughput.png" "$repo_root/bench/throughput.png"
else
  "${report[@]}"
fi
echo "Results: $out_dir/results.json, plot: $out_dir/throughput.png"
