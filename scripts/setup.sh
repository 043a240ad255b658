#!/usr/bin/env bash
# Installs with apt every Debian 12 package that building, testing and
# inspecting persistence needs. When all of them are present it installs
# nothing, skips `apt-get update` and prints one line, so scripts/test.sh can
# run it before every build.
#
# Runs apt as root, through sudo when the caller is not root.
set -euo pipefail

packages=(
  # Toolchain.
  build-essential cmake pkg-config
  # MPI and parallel HDF5, with h5dump and h5ls for inspecting step files.
  libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
  # Libraries the library and its tools link.
  libtorch-dev libyaml-cpp-dev libcurl4-openssl-dev nlohmann-json3-dev
  libspdlog-dev libxxhash-dev libcli11-dev
  # Tests and benchmarks.
  libgtest-dev libgmock-dev libbenchmark-dev
  # Python clients that tests use to read step files, and plotting for benchmarks.
  python3-h5py python3-h5py-mpi python3-mpi4py python3-torch python3-yaml python3-numpy python3-matplotlib
  # Text corpus that the demo trainer learns from.
  fortunes-min fortunes
)

# Prints the packages of "$@" that dpkg does not report as installed.
missing_packages() {
  local -A installed=()
  local name status
  # dpkg-query exits non-zero when a name matches no package, so such names count as missing.
  while read -r name status; do
    if [[ "$status" == installed ]]; then
      installed[$name]=1
    fi
  done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true)

  for name in "$@"; do
    if [[ -z "${installed[$name]:-}" ]]; then
      echo "$name"
    fi
  done
}

mapfile -t missing < <(missing_packages "${packages[@]}")
if (( ${#missing[@]} == 0 )); then
  echo "setup.sh: all ${#packages[@]} required packages are installed"
  exit 0
fi

as_root=()
if (( EUID != 0 )); then
  if ! command -v sudo >/dev/null; then
    echo "setup.sh: installing packages needs root, and sudo is not available." \
         "Run this script as root, or install: ${missing[*]}" >&2
    exit 1
  fi
  as_root=(sudo)
fi

echo "setup.sh: installing ${#missing[@]} missing packages: ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"

mapfile -t still_missing < <(missing_packages "${packages[@]}")
if (( ${#still_missing[@]} > 0 )); then
  echo "setup.sh: apt-get finished, but these packages are still not installed:" \
       "${still_missing[*]}. Check the apt output above." >&2
  exit 1
fi
echo "setup.sh: installed ${missing[*]}"
