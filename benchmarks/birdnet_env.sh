#!/usr/bin/env bash
# Creates .venv-birdnet at the repository root (BirdNET V2.4 in its own Python 3.11
# environment). The script itself ships with the package: birdnet_tf/distill/birdnet_env.sh.
#
#   bash benchmarks/birdnet_env.sh            # idempotent: a stamp file records success
#   PYTHON=/path/to/python3.11 bash benchmarks/birdnet_env.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIRDNET_ENV="${BIRDNET_ENV:-$REPO/.venv-birdnet}" exec bash "$REPO/birdnet_tf/distill/birdnet_env.sh" "$@"
