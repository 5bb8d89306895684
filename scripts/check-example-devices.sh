#!/usr/bin/env bash
# Runs every example binary in DIR with `--device cuda` and checks that it stops at once with
# one line on stderr containing EXPECT and exit code 1 (what a user without CUDA support, or
# without a device, must see). Called by .ci/run (default build: "no CUDA support") and by
# scripts/check-cuda.sh (`--features cuda` with the libcuda stub: "no CUDA device").
#
#   scripts/check-example-devices.sh DIR EXPECT
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: $0 DIR EXPECT" >&2; exit 2; }
dir=$1
expect=$2
failed=0
count=0
for src in examples/*.rs; do
    name=$(basename "$src" .rs)
    exe=$dir/$name
    if [[ ! -x $exe ]]; then
        echo "check-example-devices: $exe is missing (build the examples first)" >&2
        exit 1
    fi
    count=$((count + 1))
    set +e
    err=$(timeout 120 "$exe" --device cuda 2>&1 >/dev/null)
    rc=$?
    set -e
    lines=$(printf '%s\n' "$err" | grep -c . || true)
    if [[ $rc -eq 1 && $lines -eq 1 && $err == *"$expect"* ]]; then
        echo "ok     $name: $err"
    else
        echo "FAILED $name: exit $rc, $lines line(s) on stderr, expected one containing \"$expect\":" >&2
        printf '%s\n' "$err" | head -5 >&2
        failed=$((failed + 1))
    fi
done
[[ $count -gt 0 ]] || { echo "check-example-devices: no example found" >&2; exit 1; }
if [[ $failed -gt 0 ]]; then
    echo "check-example-devices: $failed of $count examples failed" >&2
    exit 1
fi
echo "check-example-devices: all $count examples stop with one clear line"
