#!/usr/bin/env bash
# Sets up a development environment in .venv: system packages (when run as root on Debian or
# Ubuntu), then callray with its development tools. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(espeak-ng redis-server iproute2 util-linux)
# Best effort, each on its own: Debian's chromium drives tests/e2e (which skip without it);
# Ubuntu's apt has only a snap stub, which must not stop the setup. sip-tester (sipp) and
# baresip-core are the SIP peers of tests/sip (skipped without them, except under CI=true).
OPTIONAL_APT_PACKAGES=(chromium sip-tester baresip-core)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: not root, so not installing: ${missing[*]}"
    echo "setup: run 'sudo apt-get install ${missing[*]}' for the full feature set (speech uses a tone without espeak-ng)"
  fi
fi
for pkg in "${OPTIONAL_APT_PACKAGES[@]}"; do
  if ! dpkg -s "$pkg" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing $pkg (optional)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends "$pkg" >/dev/null; } \
        || echo "setup: could not install $pkg; the tests that need it will skip"
    else
      echo "setup: $pkg is not installed: the tests that need it will skip (sudo apt-get install $pkg)"
    fi
  fi
done

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: callray needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || {
    echo "setup: could not create a virtual environment; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 1
  }
fi

# Reinstall only when the project's dependencies changed.
stamp=.venv/.callray-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing callray and its tools into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c 'import services, openai, websockets' 
  echo "$want" > "$stamp"
fi
