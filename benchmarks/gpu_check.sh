#!/usr/bin/env bash
# One-shot GPU check for a lent machine (no network): the fp16/fp32 precision gate of the CUDA
# engine, model-only throughput, and an end-to-end `codescan scan` of generated JPEGs.
#
#   .venv/bin/python benchmarks/gpu_prepare.py            # here, once: builds .gpucheck/ (git-ignored)
#   bash benchmarks/gpu_check.sh [--dry-run] [--count N] [--out DIR] [--prepared DIR]
#
# Writes DIR/gpu_check.json (rewritten after every step, so a run cut short still reports what it
# measured) and DIR/gpu_check.log; DIR defaults to $OUT. Exits 0 even when a step failed (the JSON
# says which); non-zero only when the script itself broke. PYTHON picks the interpreter (default:
# the machine's python3, whose torch has CUDA); gpu_check.py installs this tree's codescan for it.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

out="${OUT:-${TMPDIR:-/tmp}/gpu_check}"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do  # the log goes where gpu_check.py writes its JSON
    case "${args[i]}" in
        --out) out="${args[i + 1]:-$out}" ;;
        --out=*) out="${args[i]#--out=}" ;;
    esac
done
mkdir -p "$out"

cd "$root"
"$python" -u benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
