#!/usr/bin/env bash
# Sets up a virtual environment in .venv, installs the package and runs the test suite, which
# includes short end-to-end pretraining runs on generated data (ImageNet itself: see README.md).
set -euo pipefail
exec bash "$(dirname "$0")/.ci/run"
