#!/usr/bin/env bash
# Sets up .venv, then runs callray on embedded defaults. Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/callray up "$@"
