#!/usr/bin/env bash
# Leave-one-generator-out on the labeled corpus: codescan train + codescan eval per held-out
# generator, against a metadata-only shortcut baseline on the same splits. Not run in CI.
#
#   benchmarks/train_labeled.sh --dry-run               # manifests + baseline only, seconds
#   benchmarks/train_labeled.sh --work /tmp/logo        # full run; budget knob: --epochs N
#
# Arguments go to benchmarks/logo.py (--help lists them). PYTHON picks the interpreter
# (default: the checkout's .venv), whose codescan executable is the one run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
exec "$python" "$root/benchmarks/logo.py" "$@"
