#!/usr/bin/env bash
# Idempotent set-up for medic: the Debian packages the lab needs and .venv/ with medic installed.
# The second run checks two stamps and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(prometheus prometheus-alertmanager prometheus-node-exporter openssh-server openssh-client
              haproxy postgresql prometheus-postgres-exporter python3 python3-venv procps iproute2)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The venv is rebuilt only when the lock or pyproject change.
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
stamp=".venv/.medic-stamp"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x .venv/bin/medic ]]; then
  exit 0
fi
echo "setup: creating .venv (pinned set from requirements.lock)"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.9"
# --compile-bytecode: uv writes no .pyc by default and this machine sets PYTHONDONTWRITEBYTECODE=1,
# so without it every medic start pays ~2 s compiling prefect.
.venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -r requirements.lock
.venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode --no-deps -e .
echo "$want" > "$stamp"
echo "setup: done"
