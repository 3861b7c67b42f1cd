#!/usr/bin/env bash
# Sets up .venv, then runs the whole check: lint, format, types, and every test tier.
# Extra arguments go to pytest (e.g. scripts/test.sh -k twilio).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"; ruff check services actors tests bench
echo "== ruff format"; ruff format --check services actors tests bench
echo "== mypy --strict"; mypy services actors
echo "== pytest"
set +e
pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests" >&2
fi
exit "$rc"
