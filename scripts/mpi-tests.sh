#!/usr/bin/env bash
# Builds tests/mpi_tests.rs (feature `mpi`) and runs it under `mpirun` on 1, 2 and 3 ranks,
# oversubscribed (this machine has 2 cores), one thread per rank. Fails loudly on any failure.
# Needs an MPI library with `mpirun` and libclang (Debian: libopenmpi-dev openmpi-bin
# libclang-dev); `.ci/run` installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mpirun >/dev/null || { echo "mpi-tests: mpirun not found (install openmpi-bin)" >&2; exit 1; }
bin=$(cargo test --features mpi --test mpi_tests --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "mpi_tests" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "mpi-tests: the test binary was not built" >&2; cargo test --features mpi --test mpi_tests --no-run; exit 1; }
# Root in CI containers: OpenMPI refuses root unless told.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export RAYON_NUM_THREADS=1
for p in ${MPI_RANKS:-1 2 3}; do
  echo "== mpirun -n $p $bin"
  start=$(date +%s)
  mpirun --oversubscribe --bind-to none -n "$p" "$bin"
  echo "== $p ranks: passed in $(( $(date +%s) - start )) s"
done
