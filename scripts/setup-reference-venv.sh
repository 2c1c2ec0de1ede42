#!/usr/bin/env bash
# Create /work/main/.venv (repo-root .venv, git-ignored) with the pinned Python
# reference stack used to regenerate tests/fixtures/render/render_parity.json.
# Not used by CI. Needs Python 3.11 and PyPI access. Idempotent.
set -euo pipefail

TRANSFORMERS_VERSION=5.24.0
TOKENIZERS_VERSION=0.23.3
JINJA2_VERSION=3.1.6

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi

want="transformers==$TRANSFORMERS_VERSION tokenizers==$TOKENIZERS_VERSION jinja2==$JINJA2_VERSION"
have="$("$VENV/bin/python" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
print(" ".join(f"{p}=={m.version(p)}" for p in ("transformers", "tokenizers", "jinja2")))
PY
)"
if [ "$have" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "transformers==$TRANSFORMERS_VERSION" \
    "tokenizers==$TOKENIZERS_VERSION" \
    "jinja2==$JINJA2_VERSION"
fi
echo "reference venv ready at $VENV: $("$VENV/bin/python" -c 'import transformers, tokenizers, jinja2; print("transformers", transformers.__version__, "tokenizers", tokenizers.__version__, "jinja2", jinja2.__version__)')"
