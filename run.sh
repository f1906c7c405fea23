#!/usr/bin/env bash
# Quick start: installs into .venv, then pretrains BYOL on the embedded synthetic images and
# compares its kNN and linear top-1 with a random encoder's (a few minutes on a laptop CPU).
# Flags go to `python -m byol.quickstart` (e.g. --checkpoint_root=/tmp/byol_quickstart).
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/install
exec .venv/bin/python -m byol.quickstart "$@"
