#!/usr/bin/env bash
# Install everything, then run the embedded demo (pass --once for the headless version).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/campaign-pipeline demo "$@"
