#!/usr/bin/env bash
# Create /work/main/.venv (repo-root .venv, git-ignored) with the pinned Python
# reference stack used to regenerate the render, encode and model fixtures
# (tests/fixtures/render/render_parity.json, tests/fixtures/encode/encode_parity.json,
# tests/fixtures/model/). Not used by CI. Needs Python 3.11 and PyPI access
# (torch is the CPU/CUDA wheel pip picks; the model fixtures run on the CPU). Idempotent.
set -euo pipefail

TRANSFORMERS_VERSION=5.24.0
TOKENIZERS_VERSION=0.23.3
JINJA2_VERSION=3.1.6
TORCH_VERSION=2.15.0
PEFT_VERSION=0.21.2

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi

want="transformers==$TRANSFORMERS_VERSION tokenizers==$TOKENIZERS_VERSION jinja2==$JINJA2_VERSION torch==$TORCH_VERSION peft==$PEFT_VERSION"
have="$("$VENV/bin/python" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
# torch may carry a local version suffix (2.15.0+cpu); compare the public part.
print(" ".join(f"{p}=={m.version(p).split('+')[0]}" for p in ("transformers", "tokenizers", "jinja2", "torch", "peft")))
PY
)"
if [ "$have" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "transformers==$TRANSFORMERS_VERSION" \
    "tokenizers==$TOKENIZERS_VERSION" \
    "jinja2==$JINJA2_VERSION" \
    "torch==$TORCH_VERSION" \
    "peft==$PEFT_VERSION"
fi
echo "reference venv ready at $VENV: $("$VENV/bin/python" -c 'import transformers, tokenizers, jinja2, torch, peft; print("transformers", transformers.__version__, "tokenizers", tokenizers.__version__, "jinja2", jinja2.__version__, "torch", torch.__version__, "peft", peft.__version__)')"
