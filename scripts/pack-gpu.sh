#!/usr/bin/env bash
# Builds every test binary and the bench_gpu example with `--features cuda --release`, strips
# them and packs them with a run.sh into a folder that runs on a GPU host with no Rust
# toolchain (it needs the host's CUDA 13 libraries and an R580+ driver).
#
#   scripts/pack-gpu.sh [DEST]          DEST defaults to gpu-pack/
#
# On the GPU host:   DEST/run.sh [TEST ...]    (see run.sh's header)
#
# The build needs a CUDA toolchain: CUDA_ROOT (default $HOME/.cache/lk-cuda/root) with bin/,
# include/, nvvm/ and lib/ (and lib/stubs/libcuda.so on a machine without a driver), as made by
# scripts/cuda-toolchain.sh, which is run when CUDA_ROOT has no nvcc. The binaries go into one
# tar.xz: they share most of their bytes (candle, its PTX), which xz's 64 MiB window stores once.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
DEST=${1:-gpu-pack}
CUDA_ROOT=${CUDA_ROOT:-$HOME/.cache/lk-cuda/root}

die() {
    echo "pack-gpu.sh: error: $*" >&2
    exit 1
}

if [[ ! -x $CUDA_ROOT/bin/nvcc ]]; then
    [[ -f scripts/cuda-toolchain.sh && $(basename "$CUDA_ROOT") == root ]] ||
        die "no nvcc in CUDA_ROOT=$CUDA_ROOT (set CUDA_ROOT to a CUDA 13 root with bin/include/nvvm/lib)"
    echo "pack-gpu.sh: no CUDA toolchain in $CUDA_ROOT: running scripts/cuda-toolchain.sh" >&2
    bash scripts/cuda-toolchain.sh "$(dirname "$CUDA_ROOT")" >/dev/null
fi
[[ -x $CUDA_ROOT/bin/nvcc ]] || die "still no nvcc in $CUDA_ROOT"
LIBS=$CUDA_ROOT/lib
[[ -d $CUDA_ROOT/lib/stubs ]] && LIBS=$LIBS:$CUDA_ROOT/lib/stubs
export PATH=$CUDA_ROOT/bin:$PATH CUDA_HOME=$CUDA_ROOT CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export LIBRARY_PATH=$LIBS${LIBRARY_PATH:+:$LIBRARY_PATH}

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin"

# Test targets declared with `harness = false` take no libtest flags.
python3 - >"$STAGE/plain.txt" <<'EOF'
import tomllib
with open("Cargo.toml", "rb") as f:
    toml = tomllib.load(f)
for t in toml.get("test", []):
    if t.get("harness", True) is False:
        print(t["name"])
EOF

# Executables of the JSON messages on stdin, as "kind name path" lines.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        t = m["target"]
        kind = "test" if m["profile"]["test"] else t["kind"][0]
        name = "lazy_kernels_unit" if kind == "test" and "lib" in t["kind"] else t["name"]
        print(kind, name, m["executable"])
'
}

echo "pack-gpu.sh: cargo test --release --features cuda --no-run (CUDA_ROOT=$CUDA_ROOT)" >&2
cargo test --release --features cuda --no-run --message-format=json-render-diagnostics |
    executables | awk '$1 == "test"' >"$STAGE/tests.txt"
cargo build --release --features cuda --example bench_gpu --message-format=json-render-diagnostics |
    executables | awk '$2 == "bench_gpu"' >"$STAGE/bench.txt"
[[ -s $STAGE/tests.txt ]] || die "cargo reported no test executables"
[[ -s $STAGE/bench.txt ]] || die "cargo reported no bench_gpu executable"

: >"$STAGE/bin/manifest.txt"
while read -r _ name exe; do
    strip -o "$STAGE/bin/$name" "$exe"
    if grep -qx "$name" "$STAGE/plain.txt"; then
        echo "$name plain" >>"$STAGE/bin/manifest.txt"
    else
        echo "$name harness" >>"$STAGE/bin/manifest.txt"
    fi
done <"$STAGE/tests.txt"
read -r _ _ bench <"$STAGE/bench.txt"
strip -o "$STAGE/bin/bench_gpu" "$bench"
git rev-parse HEAD >"$STAGE/bin/commit.txt" 2>/dev/null || true
git status --short >>"$STAGE/bin/commit.txt" 2>/dev/null || true

rm -rf "$DEST"
mkdir -p "$DEST"
tar -C "$STAGE" -cf - bin | xz -9 -T1 >"$DEST/bins.tar.xz"

cat >"$DEST/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the packed lazy-kernels test binaries, then bench_gpu, on a GPU host; no Rust needed.
#
#   ./run.sh                 every test binary, then bench_gpu
#   ./run.sh gpu_tests       only the named test binaries (then bench_gpu)
#   NO_BENCH=1 ./run.sh      tests only;  BENCH_ARGS="--quick" ./run.sh   bench options
#
# Finds the CUDA 13 libraries (ldconfig, /usr/local/cuda, python site-packages nvidia/cu13/lib),
# prints nvidia-smi and nvcc --version, tees everything into ${OUT:-.}/gpu-run-DATE.log and
# exits non-zero if a test binary (or bench_gpu) failed.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_DIR=${OUT:-.}
mkdir -p "$LOG_DIR"
LOG=$LOG_DIR/gpu-run-$(date -u +%Y%m%dT%H%M%SZ).log

cuda_lib_dirs() {
    local pat='lib(cudart|nvrtc|cublas|cublasLt|curand)\.so'
    {
        ldconfig -p 2>/dev/null | grep -E "$pat" | awk '{print $NF}' | xargs -r -n1 dirname
        for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/*-linux/lib; do
            ls "$d" 2>/dev/null | grep -qE "$pat" && echo "$d"
        done
        python3 -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null |
            while read -r s; do [[ -d $s/nvidia/cu13/lib ]] && echo "$s/nvidia/cu13/lib"; done
    } | awk '!seen[$0]++' | paste -sd: -
}

main() {
    echo "== lazy-kernels GPU run, $(date -u), host $(hostname)"
    local bin
    bin=$(mktemp -d)
    trap 'rm -rf "$bin"' EXIT
    if ! tar -C "$bin" -xJf "$HERE/bins.tar.xz" 2>/dev/null; then
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "$HERE/bins.tar.xz" "$bin" || { echo "cannot unpack bins.tar.xz (no xz, no python3)"; return 1; }
    fi
    bin=$bin/bin
    echo "== built from: $(paste -sd' ' "$bin/commit.txt" 2>/dev/null)"
    local dirs
    dirs=$(cuda_lib_dirs)
    export LD_LIBRARY_PATH=${dirs}${dirs:+${LD_LIBRARY_PATH:+:}}${LD_LIBRARY_PATH:-}
    echo "== LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "== nvidia-smi"
    nvidia-smi || echo "(nvidia-smi failed)"
    echo "== nvcc --version"
    { command -v nvcc >/dev/null && nvcc --version; } || /usr/local/cuda/bin/nvcc --version ||
        echo "(no nvcc; not needed to run)"
    local missing
    missing=$(ldd "$bin/bench_gpu" 2>/dev/null | grep "not found")
    [[ -z $missing ]] || echo "== WARNING: libraries not found:"$'\n'"$missing"

    local failed=() name kind rc
    while read -r name kind; do
        [[ $# -eq 0 || " $* " == *" $name "* ]] || continue
        echo "== test $name"
        SECONDS=0
        if [[ $kind == harness ]]; then
            (cd "$bin" && "./$name" --test-threads=2)
        else
            (cd "$bin" && "./$name")
        fi
        rc=$?
        echo "== test $name: exit $rc (${SECONDS}s)"
        [[ $rc -eq 0 ]] || failed+=("$name")
    done <"$bin/manifest.txt"
    if [[ -z ${NO_BENCH:-} ]]; then
        echo "== bench_gpu ${BENCH_ARGS:-}"
        # shellcheck disable=SC2086
        (cd "$bin" && ./bench_gpu ${BENCH_ARGS:-}) || failed+=("bench_gpu")
    fi
    echo "== summary: ${#failed[@]} failed${failed[*]:+: ${failed[*]}}; log $LOG"
    [[ ${#failed[@]} -eq 0 ]]
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
RUN
chmod +x "$DEST/run.sh"
echo "pack-gpu.sh: $DEST: $(du -sh "$DEST" | cut -f1) ($(wc -l <"$STAGE/bin/manifest.txt") test binaries + bench_gpu)" >&2
