#!/usr/bin/env bash
# Installs the dependencies, builds persistence into build/ and runs every
# test with ctest. Arguments are passed on to ctest, for example
#   scripts/test.sh -R public_headers
#   scripts/test.sh -L mpi
# Exits with the status of the first step that fails, else with ctest's. Works
# from any directory.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

bash scripts/setup.sh

jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"

# MPI tests declare PROCESSORS, so ctest -j keeps the ranks it starts at once
# within the core count. --no-tests=error fails a filter that matches no test.
ctest --test-dir build --output-on-failure --no-tests=error -j "$jobs" "$@"
