#!/usr/bin/env bash
# Installs a persistence build tree into a temporary prefix, then configures,
# builds and runs the project in this directory against that prefix through
# find_package(persistence). tests/CMakeLists.txt registers it as a ctest test.
#
# Usage: run.sh CMAKE BUILD_DIR PUBLIC_HEADER_DIR [CMAKE_CONFIGURE_ARG...]
#   CMAKE              the cmake executable that configured BUILD_DIR
#   BUILD_DIR          the built persistence tree to install
#   PUBLIC_HEADER_DIR  include/persistence in the source tree, to compare with the install
#   remaining args     passed to the consumer's configure step (compiler, build type, ...)
#
# Every run uses a directory of its own from mktemp and removes it on exit,
# whether or not the run succeeds.
set -euo pipefail

if (( $# < 3 )); then
  echo "usage: $0 CMAKE BUILD_DIR PUBLIC_HEADER_DIR [CMAKE_CONFIGURE_ARG...]" >&2
  exit 2
fi
cmake=$1
build_dir=$2
public_header_dir=$3
shift 3

consumer_source=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work_dir=$(mktemp -d "${TMPDIR:-/tmp}/persistence-consumer.XXXXXX")
trap 'rm -rf "$work_dir"' EXIT
prefix=$work_dir/prefix

echo "== install $build_dir into $prefix"
"$cmake" --install "$build_dir" --prefix "$prefix"

# Only the public headers may be installed: internals under src/ stay private.
echo "== compare installed headers with $public_header_dir"
if ! diff <(cd "$public_header_dir" && ls) <(cd "$prefix/include/persistence" && ls); then
  echo "run.sh: the installed include/persistence differs from the public headers" \
       "(lines with < are missing from the install, > are extra)" >&2
  exit 1
fi

echo "== configure and build the consumer"
"$cmake" -S "$consumer_source" -B "$work_dir/build" -DCMAKE_PREFIX_PATH="$prefix" "$@"
"$cmake" --build "$work_dir/build"

# The binary must load the installed library, not the one in the build tree.
echo "== run the consumer"
app=$work_dir/build/app
loaded=$(ldd "$app" | grep 'libpersistence\.so' || true)
if [[ "$loaded" != *"$prefix/"* ]]; then
  echo "run.sh: expected $app to load libpersistence.so from $prefix, but ldd shows:" \
       "${loaded:-no libpersistence.so}" >&2
  exit 1
fi
"$app"
