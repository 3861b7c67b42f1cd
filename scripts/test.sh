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
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null \
    && unshare -n true 2>/dev/null; then
  # A network namespace with only loopback: Ray and aiortc then bind 127.0.0.1, and no test
  # traffic can reach any other address.
  echo "(in a loopback-only network namespace)"
  unshare -n sh -c 'ip link set lo up && exec "$@"' sh pytest "$@"
else
  echo "(not root or no unshare: Ray tests use this machine's own address)"
  pytest "$@"
fi
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests" >&2
fi
exit "$rc"
