#!/usr/bin/env bash
# Install a CUDA 13.0 build toolchain from PyPI wheels so that `--features cuda` builds, links
# and starts on a machine without a GPU or a CUDA install (CI), nvcc can check kernels and
# cuobjdump can show their SASS (scripts/sass-budget.py).
#
#   scripts/cuda-toolchain.sh [DIR]          install (or check) and print the export line
#   eval "$(scripts/cuda-toolchain.sh --env [DIR])"
#                                            same, then set the variables in the calling shell
#                                            (only the export line goes to stdout)
#
# DIR defaults to ${LK_CUDA_DIR:-$HOME/.cache/lk-cuda}. Needs python3 with pip, gcc, and the
# cargo registry sources of cudarc (`cargo fetch` is run when they are missing). A stamp file
# makes a second run take well under a second; changing a pin below redoes the install.
#
# Layout:
#   DIR/py                 pip install --target of the pinned wheels (nvidia/cu13/...)
#   DIR/root/{bin,include,nvvm} -> DIR/py/nvidia/cu13/...        (CUDA_HOME=DIR/root)
#   DIR/root/lib           links to every file of nvidia/cu13/lib, plus unversioned
#                          libX.so links for the linker (cudart, nvrtc, cublas, cublasLt, curand)
#   DIR/root/lib/stubs     libcuda.so / libcuda.so.1: a stub driver built here (no libcuda on
#                          PyPI). Every cu* function that cudarc declares returns 34
#                          (CUDA_ERROR_STUB_LIBRARY), so `Device::new_cuda(0)` gives an error
#                          (cuGetErrorString/cuGetErrorName succeed, with a message saying so).
#
# The stub directory goes on LD_LIBRARY_PATH only when no real libcuda.so.1 is visible
# (ldconfig), so that on a GPU host the real driver is used (LK_CUDA_STUB=1 or 0 forces it).
set -euo pipefail

# Pinned CUDA 13.0 wheels (13.0 Update 1/2 component versions). cudarc 0.19.10 knows CUDA up
# to 13.4; nvcc pulls in an unpinned nvidia-nvvm unless it is pinned too; cccl is needed by
# cuda_fp16.h; nvrtc/cublas/curand are what candle links (cudarc's dynamic-linking).
# cuobjdump and nvdisasm (scripts/sass-budget.py reads the SASS of nvcc's cubins; cuobjdump
# runs nvdisasm) have no 13.0 builds on PyPI: 13.2 reads 13.0's sm_90 cubins.
# NCCL 2.30 (cudarc's `nccl` feature binds 2.30's API) for `--features nccl`: the real library,
# linked by the nccl builds and loaded only where a GPU runs them (it lives in nvidia/nccl/lib).
PINS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
    nvidia-cuda-cuobjdump==13.2.86
    nvidia-cuda-nvdisasm==13.2.86
    nvidia-nccl-cu13==2.30.7
)
# Bump when the layout or the stub recipe below changes (forces a redo).
LAYOUT=3
# Libraries the link step of `--features cuda` binaries asks for (besides libcuda).
LINK_LIBS=(cudart nvrtc cublas cublasLt curand)

MODE=install
if [[ ${1:-} == --env ]]; then
    MODE=env
    shift
elif [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
if [[ $# -gt 1 ]]; then
    echo "usage: $0 [--env] [DIR]" >&2
    exit 2
fi

if [[ $MODE == env ]]; then
    # Only the export line goes to the caller's eval; on failure it gets a `false`, so that
    # `eval "$(scripts/cuda-toolchain.sh --env)"` fails too instead of silently doing nothing.
    exec 3>&1 1>&2
    trap 'rc=$?; if [[ $rc -ne 0 ]]; then echo "echo \"cuda-toolchain.sh failed (exit $rc), see above\" >&2; false" >&3; fi' EXIT
else
    exec 3>&1
fi

die() {
    echo "cuda-toolchain.sh: error: $*" >&2
    exit 1
}
trap 'echo "cuda-toolchain.sh: error: command failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-${LK_CUDA_DIR:-$HOME/.cache/lk-cuda}}
mkdir -p "$DIR" || die "cannot create $DIR"
DIR=$(cd "$DIR" && pwd)
# One run at a time per DIR (parallel CI jobs sharing a cache).
if command -v flock >/dev/null; then
    exec 9>"$DIR/.lock"
    flock 9 || die "cannot lock $DIR/.lock"
fi
PY=${PYTHON:-python3}
CC_BIN=${CC:-gcc}
T0=$(date +%s)

# ---- the cu* symbols the stub must define: cudarc's declarations (dynamic-linking mode) ----
CUDARC_VERSION=$(awk '/^name = "cudarc"$/ { getline; sub(/^version = "/, ""); sub(/"$/, ""); print; exit }' "$REPO/Cargo.lock")
[[ -n $CUDARC_VERSION ]] || die "no cudarc entry in $REPO/Cargo.lock"
CARGO_HOME_DIR=${CARGO_HOME:-$HOME/.cargo}
find_cudarc() {
    compgen -G "$CARGO_HOME_DIR/registry/src/*/cudarc-$CUDARC_VERSION/src/driver/sys/mod.rs" | head -n 1 || true
}
CUDARC_SYS=$(find_cudarc)
if [[ -z $CUDARC_SYS ]]; then
    echo "cuda-toolchain.sh: cudarc $CUDARC_VERSION sources not in $CARGO_HOME_DIR/registry; running cargo fetch" >&2
    command -v cargo >/dev/null || die "cargo is missing: cannot fetch cudarc $CUDARC_VERSION (needed for the libcuda stub)"
    (cd "$REPO" && cargo fetch --locked) || die "cargo fetch failed"
    CUDARC_SYS=$(find_cudarc)
    [[ -n $CUDARC_SYS ]] || die "cudarc $CUDARC_VERSION sources still missing after cargo fetch"
fi
# In the sys bindings every driver function is `pub unsafe fn cuX(..)` wrapping an
# `extern "C" { fn cuX(..); }`; the indented `fn cu...(` lines are the extern declarations.
SYMBOLS=$(grep -oE '^[[:space:]]+fn cu[A-Za-z0-9_]+\(' "$CUDARC_SYS" | sed -E 's/^[[:space:]]+fn //; s/\($//' | LC_ALL=C sort -u)
NSYM=$(printf '%s\n' "$SYMBOLS" | grep -c . || true)
[[ $NSYM -gt 100 ]] || die "found only $NSYM cu* declarations in $CUDARC_SYS (format changed?)"
for s in cuInit cuDeviceGet cuCtxCreate_v4 cuModuleLoadData cuLaunchKernel; do
    grep -qx "$s" <<<"$SYMBOLS" || die "$s is not among cudarc's declarations in $CUDARC_SYS (format changed?)"
done
SYM_HASH=$(printf '%s\n' "$SYMBOLS" | sha256sum | cut -c1-16)

STAMP_FILE=$DIR/.lk-cuda-stamp
STAMP="layout=$LAYOUT pins=${PINS[*]} stub=cudarc-$CUDARC_VERSION:$NSYM:$SYM_HASH"
ROOT=$DIR/root
CU=$DIR/py/nvidia/cu13

stub_on_runtime_path() {
    case ${LK_CUDA_STUB:-auto} in
        1) return 0 ;;
        0) return 1 ;;
    esac
    local d
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-}; do
        [[ -n $d && $d != "$ROOT/lib" && $d != "$ROOT/lib/stubs" && -e $d/libcuda.so.1 ]] && return 1
    done
    local cache
    cache=$(ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true)
    [[ $cache == *"libcuda.so.1 "* ]] && return 1
    return 0
}

print_env() {
    local ld="$ROOT/lib"
    if stub_on_runtime_path; then
        ld="$ld:$ROOT/lib/stubs"
    else
        echo "cuda-toolchain.sh: the libcuda stub stays off LD_LIBRARY_PATH (a libcuda.so.1 driver is present, or LK_CUDA_STUB=0)" >&2
    fi
    echo "export PATH=\"$ROOT/bin:\$PATH\" CUDA_HOME=\"$ROOT\" CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-80}\" LIBRARY_PATH=\"$ROOT/lib:$ROOT/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}\" LD_LIBRARY_PATH=\"$ld\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"" >&3
}

installed_ok() {
    [[ -f $STAMP_FILE && "$(cat "$STAMP_FILE")" == "$STAMP" ]] || return 1
    [[ -x $ROOT/bin/nvcc && -f $ROOT/include/cuda_fp16.h && -d $ROOT/nvvm/bin ]] || return 1
    [[ -x $ROOT/bin/cuobjdump && -x $ROOT/bin/nvdisasm ]] || return 1
    local l
    for l in "${LINK_LIBS[@]}" nccl; do [[ -e $ROOT/lib/lib$l.so ]] || return 1; done
    [[ -e $ROOT/lib/stubs/libcuda.so.1 && -e $ROOT/lib/stubs/libcuda.so ]]
}

if installed_ok; then
    echo "cuda-toolchain.sh: CUDA toolchain in $DIR is up to date" >&2
    print_env
    exit 0
fi
rm -f "$STAMP_FILE"

# ---- wheels ----
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY -m pip does not work (need Python 3 with pip)"
command -v "$CC_BIN" >/dev/null || die "$CC_BIN is missing (needed to build the libcuda stub)"

if [[ -f $DIR/py/.lk-pins && "$(cat "$DIR/py/.lk-pins")" == "${PINS[*]}" ]]; then
    echo "cuda-toolchain.sh: wheels in $DIR/py already match the pins" >&2
else
    echo "cuda-toolchain.sh: installing ${PINS[*]} into $DIR/py" >&2
    rm -rf "$DIR/py.new"
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --disable-pip-version-check --no-input --progress-bar off \
        --only-binary :all: --target "$DIR/py.new" "${PINS[@]}" >&2 ||
        die "pip install of the CUDA wheels failed (network? PyPI? see above)"
    # Exactly the pinned distributions, nothing resolved on the side.
    want=$(for p in "${PINS[@]}"; do echo "${p%%==*}==${p#*==}"; done | tr - _ | LC_ALL=C sort)
    got=$(cd "$DIR/py.new" && for d in *.dist-info; do d=${d%.dist-info}; echo "${d%-*}==${d##*-}"; done | tr - _ | LC_ALL=C sort)
    [[ $want == "$got" ]] || die "pip installed other distributions than the pins:"$'\n'"want: $want"$'\n'"got:  $got"
    for b in nvcc cuobjdump nvdisasm; do
        [[ -x $DIR/py.new/nvidia/cu13/bin/$b ]] || die "no nvidia/cu13/bin/$b in the installed wheels"
    done
    echo "${PINS[*]}" >"$DIR/py.new/.lk-pins"
    # Swap in the new tree (also replaces an older install in place).
    rm -rf "$DIR/py.old"
    if [[ -e $DIR/py ]]; then mv "$DIR/py" "$DIR/py.old"; fi
    mv "$DIR/py.new" "$DIR/py"
    rm -rf "$DIR/py.old"
fi

# ---- CUDA_HOME layout (relative links: DIR can be moved or restored from a cache) ----
rm -rf "$ROOT" # removes the links only, never what they point to
mkdir -p "$ROOT/lib/stubs"
for d in bin include nvvm; do
    [[ -d $CU/$d ]] || die "missing $CU/$d in the installed wheels"
    ln -s "../py/nvidia/cu13/$d" "$ROOT/$d"
done
[[ -d $CU/lib ]] || die "missing $CU/lib in the installed wheels"
for f in "$CU"/lib/*; do
    ln -s "../../py/nvidia/cu13/lib/${f##*/}" "$ROOT/lib/${f##*/}"
done
for l in "${LINK_LIBS[@]}"; do
    versioned=$(cd "$CU/lib" && compgen -G "lib$l.so.*" | LC_ALL=C sort | head -n 1 || true)
    [[ -n $versioned ]] || die "no lib$l.so.* in $CU/lib (missing wheel?)"
    [[ -e $ROOT/lib/lib$l.so ]] || ln -s "$versioned" "$ROOT/lib/lib$l.so"
done

# NCCL, outside cu13/.
nccl=$(cd "$DIR/py/nvidia/nccl/lib" 2>/dev/null && compgen -G "libnccl.so.*" | LC_ALL=C sort | head -n 1 || true)
[[ -n $nccl ]] || die "no libnccl.so.* in $DIR/py/nvidia/nccl/lib (missing nvidia-nccl wheel?)"
ln -s "../../py/nvidia/nccl/lib/$nccl" "$ROOT/lib/$nccl"
ln -s "$nccl" "$ROOT/lib/libnccl.so"

# ---- libcuda stub ----
mkdir -p "$DIR/stub"
{
    echo "/* Generated by scripts/cuda-toolchain.sh from $CUDARC_SYS: the $NSYM driver"
    echo "   functions cudarc declares. Not a driver: every call returns 34 (CUDA_ERROR_STUB_LIBRARY),"
    echo "   except that cuGetErrorString/cuGetErrorName explain it, so errors read well. */"
    echo '#define API __attribute__((visibility("default")))'
    echo '#define STUB(name) API int name(void) { return 34; }'
    echo 'static const char *lk_msg(int e) {'
    echo '    return e == 34 ? "libcuda stub from scripts/cuda-toolchain.sh: no NVIDIA driver here (put the real libcuda.so.1 first on LD_LIBRARY_PATH)"'
    echo '                   : "unknown error (libcuda stub from scripts/cuda-toolchain.sh)";'
    echo '}'
    echo 'API int cuGetErrorString(int e, const char **s) { if (!s) return 1; *s = lk_msg(e); return 0; }'
    echo 'API int cuGetErrorName(int e, const char **s) { if (!s) return 1; *s = e == 34 ? "CUDA_ERROR_STUB_LIBRARY" : "CUDA_ERROR_UNKNOWN"; return 0; }'
    while read -r s; do
        case $s in cuGetErrorString | cuGetErrorName) ;; *) echo "STUB($s)" ;; esac
    done <<<"$SYMBOLS"
} >"$DIR/stub/libcuda_stub.c"
"$CC_BIN" -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/stubs/libcuda.so.1" "$DIR/stub/libcuda_stub.c" ||
    die "building the libcuda stub with $CC_BIN failed"
ln -s libcuda.so.1 "$ROOT/lib/stubs/libcuda.so"

# ---- checks ----
"$ROOT/bin/nvcc" --version >"$DIR/stub/nvcc-version.txt" 2>&1 || {
    cat "$DIR/stub/nvcc-version.txt" >&2
    die "nvcc --version fails"
}
nvcc_pin=${PINS[0]#nvidia-cuda-nvcc==}
release=${nvcc_pin%.*}
grep -q "release $release, V$nvcc_pin" "$DIR/stub/nvcc-version.txt" ||
    die "nvcc is not release $release (V$nvcc_pin): $(cat "$DIR/stub/nvcc-version.txt")"
for l in "${LINK_LIBS[@]}" nccl; do
    [[ -e $ROOT/lib/lib$l.so ]] || die "dangling link $ROOT/lib/lib$l.so"
done
for b in cuobjdump nvdisasm; do
    "$ROOT/bin/$b" --version >/dev/null 2>&1 || die "$ROOT/bin/$b --version fails"
done
exported=$(nm -D --defined-only "$ROOT/lib/stubs/libcuda.so.1" | grep -c ' T cu' || true)
[[ $exported -eq $NSYM ]] || die "the stub exports $exported cu* functions, expected $NSYM"

echo "$STAMP" >"$STAMP_FILE"
echo "cuda-toolchain.sh: CUDA $release toolchain ready in $DIR ($(($(date +%s) - T0)) s; stub: $NSYM cu* functions from cudarc $CUDARC_VERSION)" >&2
print_env
