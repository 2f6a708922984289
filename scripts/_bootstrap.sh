# Sourced by scripts/run and scripts/test: a virtualenv in .venv with the project
# installed, on a fresh Debian machine with Python 3.11 as on a developer's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "herald: need root to run: $*" >&2; return 1; fi
}

apt_install() {
  echo "herald: installing Debian packages: $*" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi

# Reinstall only when the dependency list changed (keeps repeated runs fast).
install_project() {
  local extras="$1" stamp=".venv/.installed-$1"
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "herald: installing Python dependencies into .venv ($extras)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"
    echo "$want" >"$stamp"
  fi
}
