#!/usr/bin/env bash
# Downloads, on a machine of this project (Debian 12, apt lists present), the
# packages that the GPU machine's image lacks: OpenBLAS (the CPU backend is
# the benchmark's and the tests' reference) and GoogleTest (the unit tests).
# They land in build-deps/ at the repository root (ignored by git, like every
# build-*/ folder); bench/gpu/run.sh unpacks them (dpkg-deb -x, into
# build-deps/root, never into /) only when the system has no OpenBLAS /
# GoogleTest of its own. About 13 MB.
#
#   bench/gpu/fetch-deps.sh
#   then carry "build-deps" in the device run (see bench/gpu/run.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$root/build-deps"
cd "$root/build-deps"
apt-get download libopenblas0-pthread libopenblas-pthread-dev libgfortran5 \
  libquadmath0 libgtest-dev
ls -l "$root/build-deps"
