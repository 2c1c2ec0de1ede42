# Sourced by the model benchmarks: repository root, the reference venv's python, offline HF.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "no .venv: run scripts/setup-reference-venv.sh" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
# The random SmolLM2-135M-shaped model both benchmarks use.
MODEL="$ROOT/target/bench-generate"
[ -f "$MODEL/model.safetensors" ] || { mkdir -p "$MODEL" && "$PY" scripts/bench_generate.py make "$MODEL"; }
