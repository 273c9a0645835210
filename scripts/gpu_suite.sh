#!/usr/bin/env bash
# The default test suite on a machine with a CUDA device, then every test that failed there again with the GPU
# hidden: a test that fails only in the first run breaks on GPUs. Each result is written as it happens
# (pytest -v under xdist), so a run cut off by a time limit still names its failures.
#
#   bash scripts/gpu_suite.sh [MINUTES [TEST PATHS...]]   # default 6; needs pytest-xdist; writes to $OUT (or runs/gpu_suite)
#
# Packages missing on that machine can travel as wheels in .whl/ (installed into /tmp/site first).
set -u
minutes=${1:-6}; shift || true
paths=("${@:-tests}")
out=${OUT:-runs/gpu_suite}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 DISTILL_HOME=${DISTILL_HOME:-/tmp/distill_home} \
  HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
timeout $(( minutes * 60 )) python3 -m pytest -v -n "$workers" -p no:cacheprovider "${paths[@]}" 2>&1 \
  | grep -E "(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" >"$out/gpu_results.txt"
grep -E " (FAILED|ERROR) " "$out/gpu_results.txt" | sed -E 's/.* (FAILED|ERROR) //; s/ .*//' | sort -u >"$out/gpu_failed.txt"
echo "$(grep -c ' PASSED ' "$out/gpu_results.txt") passed, $(wc -l <"$out/gpu_failed.txt") failed with the GPU visible"
[ -s "$out/gpu_failed.txt" ] || exit 0
echo "=== the failures again, GPU hidden (FAILED here too: not a GPU problem)"
CUDA_VISIBLE_DEVICES= timeout 180 python3 -m pytest -q -rA -n "$workers" -p no:cacheprovider \
  $(cat "$out/gpu_failed.txt") 2>&1 | grep -E "^(PASSED|FAILED|ERROR) |passed|failed" | tee "$out/cpu_rerun.txt"
