#!/usr/bin/env bash
# Builds every test binary and every example with `--features cuda --release`, strips them and
# packs them, with the data files the examples read and a run.sh, into a folder that runs on a
# GPU host with no Rust toolchain (it needs the host's CUDA 13 libraries and an R580+ driver).
#
#   scripts/pack-gpu.sh [DEST]          DEST defaults to gpu-pack/
#
# On the GPU host:   DEST/run.sh [TEST ...]               tests, then bench_gpu
#                    DEST/run.sh --examples               every example with --device cuda
#                    DEST/run.sh --example NAME [ARGS]    one example   (see run.sh's header)
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
echo "pack-gpu.sh: cargo build --release --features cuda --examples" >&2
cargo build --release --features cuda --examples --message-format=json-render-diagnostics |
    executables | awk '$1 == "example"' >"$STAGE/examples.txt"
[[ -s $STAGE/tests.txt ]] || die "cargo reported no test executables"
grep -q ' bench_gpu ' "$STAGE/examples.txt" || die "cargo reported no bench_gpu executable"
# Every example of examples/*.rs must have been built (run.sh --examples runs the list).
for f in examples/*.rs; do
    name=$(basename "$f" .rs)
    grep -q " $name " "$STAGE/examples.txt" || die "cargo reported no executable for example $name"
done

: >"$STAGE/bin/manifest.txt"
while read -r _ name exe; do
    strip -o "$STAGE/bin/$name" "$exe"
    if grep -qx "$name" "$STAGE/plain.txt"; then
        echo "$name plain" >>"$STAGE/bin/manifest.txt"
    else
        echo "$name harness" >>"$STAGE/bin/manifest.txt"
    fi
done <"$STAGE/tests.txt"
# Examples next to the tests in the same tar (xz's window then stores candle's bytes once),
# their names in examples.txt, the data files they read in data/ (run.sh points LK_DATA_DIR
# there).
: >"$STAGE/bin/examples.txt"
while read -r _ name exe; do
    strip -o "$STAGE/bin/$name" "$exe"
    echo "$name" >>"$STAGE/bin/examples.txt"
done <"$STAGE/examples.txt"
mkdir -p "$STAGE/bin/data"
cp examples/data/*.csv examples/data/README.md "$STAGE/bin/data/"
git rev-parse HEAD >"$STAGE/bin/commit.txt" 2>/dev/null || true
git status --short >>"$STAGE/bin/commit.txt" 2>/dev/null || true

rm -rf "$DEST"
mkdir -p "$DEST"
tar -C "$STAGE" -cf - bin | xz -9 -T1 >"$DEST/bins.tar.xz"

cat >"$DEST/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the packed lazy-kernels test binaries, then bench_gpu, or the examples, on a GPU host;
# no Rust needed.
#
#   ./run.sh                 every test binary, then bench_gpu
#   ./run.sh gpu_tests       only the named test binaries (then bench_gpu)
#   NO_BENCH=1 ./run.sh      tests only;  BENCH_ARGS="--quick" ./run.sh   bench options
#   ./run.sh --examples      every example with --device cuda and small/quick arguments, each
#                            with its exit code and time, a summary at the end
#                            (EXAMPLES="demo bench_solve" ./run.sh --examples: only those;
#                            EXAMPLE_DEVICE=cuda:1 picks another GPU; EXAMPLE_TIMEOUT=S,
#                            default 900 s per example)
#   ./run.sh --example NAME [ARGS...]
#                            one example: NAME --device cuda ARGS (its own defaults when no
#                            ARGS; a --device among ARGS replaces cuda)
#   ./run.sh --list          the packed test binaries and examples, with the quick arguments
#
# Finds the CUDA 13 libraries (ldconfig, /usr/local/cuda, python site-packages nvidia/cu13/lib),
# prints nvidia-smi and nvcc --version, tees everything into ${OUT:-.}/gpu-run-DATE.log and
# exits non-zero if a test binary, bench_gpu or an example failed. Examples run in ${OUT:-.}
# (their figures go to ${OUT:-.}/figures/) with LK_DATA_DIR pointing at the packed data files.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_DIR=${OUT:-.}
mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)
LOG=$LOG_DIR/gpu-run-$(date -u +%Y%m%dT%H%M%SZ).log

# The order of `--examples` (examples not named here follow, with their own defaults).
ORDER="kernel_interpolation demo learn_bandwidth gp_regression mauna_loa"
ORDER+=" bench_solve bench_grad bench_gp bench_table bench_gpu"

# The arguments `--examples` gives each example (besides --device): sizes that take seconds to
# a minute on a GPU. bench_gpu is CUDA-only (its --device defaults to cuda).
quick_args() {
    case $1 in
        kernel_interpolation) echo "--n 10000" ;;
        demo) echo "--n 20000" ;;
        learn_bandwidth) echo "--n 2000" ;;
        gp_regression) echo "--steps 50" ;;
        mauna_loa) echo "--monthly --steps 30" ;;
        bench_solve) echo "--sizes 10000 --budget 10" ;;
        bench_grad) echo "--sizes 10000,100000" ;;
        bench_gp) echo "--sizes 5000 --runs 1" ;;
        bench_table) echo "--quick" ;;
        bench_gpu) echo "--quick" ;;
        *) echo "" ;;
    esac
}

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

# Unpacks the binaries into $bin (removed at exit).
unpack() {
    bin=$(mktemp -d)
    trap 'rm -rf "$bin"' EXIT
    if ! tar -C "$bin" -xJf "$HERE/bins.tar.xz" 2>/dev/null; then
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "$HERE/bins.tar.xz" "$bin" || { echo "cannot unpack bins.tar.xz (no xz, no python3)"; return 1; }
    fi
    bin=$bin/bin
}

# Prints the host's CUDA setup and puts its CUDA libraries on LD_LIBRARY_PATH.
setup() {
    echo "== lazy-kernels GPU run, $(date -u), host $(hostname)"
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
}

run_tests() {
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

# Runs example $1 with the arguments that follow (plus --device, unless given or bench_gpu) in
# $LOG_DIR; prints its exit code and time; returns its exit code.
run_example() {
    local name=$1
    shift
    last_secs=-
    if ! grep -qx "$name" "$bin/examples.txt"; then
        echo "== example $name: not in the pack (examples: $(paste -sd' ' "$bin/examples.txt"))"
        return 127
    fi
    local args=("$@")
    if [[ $name != bench_gpu && " ${args[*]-} " != *" --device "* && " ${args[*]-} " != *" --device="* ]]; then
        args=(--device "${EXAMPLE_DEVICE:-cuda}" ${args[@]+"${args[@]}"})
    fi
    local limit=(env)
    command -v timeout >/dev/null && limit=(timeout "${EXAMPLE_TIMEOUT:-900}")
    echo "== example $name ${args[*]-}"
    local t0 rc
    t0=$(date +%s.%N)
    # (`${a[@]+"${a[@]}"}`: an empty array under `set -u` in bash < 4.4)
    (cd "$LOG_DIR" && LK_DATA_DIR=$bin/data "${limit[@]}" "$bin/$name" ${args[@]+"${args[@]}"})
    rc=$?
    last_secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "== example $name: exit $rc (${last_secs}s)"
    return $rc
}

run_examples() {
    local names=() name rc failed=() summary=()
    if [[ -n ${EXAMPLES:-} ]]; then
        read -ra names <<<"$EXAMPLES"
    else
        # The packed examples, those of ORDER first in its order.
        for name in $ORDER; do grep -qx "$name" "$bin/examples.txt" && names+=("$name"); done
        while read -r name; do
            [[ " $ORDER " == *" $name "* ]] || names+=("$name")
        done <"$bin/examples.txt"
    fi
    for name in "${names[@]}"; do
        # shellcheck disable=SC2046
        run_example "$name" $(quick_args "$name")
        rc=$?
        summary+=("$(printf '%-22s exit %3d  %8ss' "$name" "$rc" "${last_secs:-?}")")
        [[ $rc -eq 0 ]] || failed+=("$name")
    done
    echo "== examples summary (device ${EXAMPLE_DEVICE:-cuda}):"
    printf '   %s\n' "${summary[@]}"
    echo "== summary: ${#failed[@]} of ${#names[@]} examples failed${failed[*]:+: ${failed[*]}}; log $LOG"
    [[ ${#failed[@]} -eq 0 ]]
}

list() {
    echo "test binaries:"
    awk '{print "   " $1}' "$bin/manifest.txt"
    echo "examples (run.sh --examples arguments):"
    local name
    while read -r name; do
        printf '   %-22s %s\n' "$name" "$(quick_args "$name")"
    done < <(LC_ALL=C sort "$bin/examples.txt")
}

main() {
    unpack || return 1
    [[ ${1:-} == --list ]] || setup
    case ${1:-} in
        --examples) run_examples ;;
        --example)
            [[ $# -ge 2 ]] || { echo "usage: run.sh --example NAME [ARGS...]"; return 2; }
            shift
            run_example "$@"
            ;;
        --list) list ;;
        -*) echo "unknown option $1 (run.sh [TEST ...] | --examples | --example NAME [ARGS...] | --list)"; return 2 ;;
        *) run_tests "$@" ;;
    esac
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
RUN
chmod +x "$DEST/run.sh"
echo "pack-gpu.sh: $DEST: $(du -sh "$DEST" | cut -f1) ($(wc -l <"$STAGE/bin/manifest.txt") test binaries, $(wc -l <"$STAGE/bin/examples.txt") examples, $(du -sh "$STAGE/bin" | cut -f1) unpacked)" >&2
