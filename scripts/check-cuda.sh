#!/usr/bin/env bash
# The CUDA checks that need no GPU (run by .ci/run):
#   1. the kernel corpus: a test of the default build writes generated modules (every op, every
#      reduction, gradient formulas, every dtype, tiles in shared memory or not, both schemes'
#      kernels), and nvcc compiles each file to a cubin for sm_80 and sm_90, warnings as errors;
#   2. the per-pair instruction budget: a test writes the budget kernels, and
#      scripts/sass-budget.py (its self-test first) counts the SASS instructions per pair of
#      their main loops for sm_90 against cuda/sass-budget.txt and prints the table;
#   3. `cargo clippy --features cuda,mpi,nccl --all-targets -- -D warnings` (the CUDA-side Rust
#      code, the NCCL communicator and the MPI one beside it);
#   4. `cargo test --features cuda,mpi,nccl`: NVRTC compiling generated kernels for
#      compute_80/90 (no device needed), and the GPU suite (linked with libnccl), which says that
#      it skipped when there is no device;
#   5. every example of that build run with `--device cuda`: with the libcuda stub each stops
#      with one line saying there is no CUDA device.
# One feature set for all of them (`cuda,mpi,nccl`), so that the dependencies build once; the
# `mpi` feature needs an MPI library and libclang (.ci/run installs them).
# The toolchain (pinned CUDA 13 wheels, a libcuda stub) comes from scripts/cuda-toolchain.sh,
# the `cuda` build goes to its own target directory outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/cuda-toolchain.sh --env)"
command -v nvcc >/dev/null || { echo "check-cuda: nvcc is missing after the toolchain install" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lazy-kernels-target}"
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
echo "== kernel corpus (written by the default build's test)"
LK_CUDA_CORPUS="$corpus" cargo test --test cuda_codegen_tests corpus_of_generated_kernels_is_written -- --exact
shopt -s nullglob
files=("$corpus"/*.cu)
[[ ${#files[@]} -gt 0 ]] || { echo "check-cuda: the corpus test wrote no .cu file" >&2; exit 1; }
kernels=$(cat "${files[@]}" | grep -c '_main(' || true)
echo "== nvcc -cubin: ${#files[@]} files, $kernels kernels, sm_80 and sm_90"
printf '%s\n' "${files[@]}" | xargs -P 2 -I{} sh -c '
    for arch in 80 90; do
        nvcc -cubin -arch=sm_$arch -Werror all-warnings -o "{}.sm_$arch.cubin" "{}" ||
            { echo "check-cuda: nvcc failed on {} for sm_$arch" >&2; exit 255; }
    done'
cubins=("$corpus"/*.cubin)
[[ ${#cubins[@]} -eq $((2 * ${#files[@]})) ]] || { echo "check-cuda: expected $((2 * ${#files[@]})) cubins, got ${#cubins[@]}" >&2; exit 1; }
echo "compiled $kernels kernels for sm_80 and sm_90"
echo "== SASS instructions per pair against cuda/sass-budget.txt (sm_90)"
LK_SASS_CORPUS="$corpus/sass" cargo test --test sass_kernels_tests
scripts/sass-budget.py --self-test
scripts/sass-budget.py "$corpus/sass"

export CARGO_TARGET_DIR="${LK_CUDA_TARGET_DIR:-$HOME/.cache/lk-cuda-target}"
features=cuda,mpi,nccl
echo "== cargo clippy --features $features --all-targets -- -D warnings"
cargo clippy --features "$features" --all-targets -- -D warnings
echo "== NVRTC compiles generated kernels (no device needed)"
cargo test --features "$features" --lib backend::cuda::launch
echo "== GPU test suite, linked with libnccl (runs on device 0 when there is one)"
cargo test --features "$features" --test gpu_tests
echo "== every example of the --features $features build with --device cuda (libcuda stub): one clear line, exit 1"
cargo build --features "$features" --examples
if ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 '; then
    echo "(a real libcuda is installed: the examples' no-device check is skipped, run them on the GPU)"
else
    scripts/check-example-devices.sh "$CARGO_TARGET_DIR/debug/examples" "no CUDA device"
fi
