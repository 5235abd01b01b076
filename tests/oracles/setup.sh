#!/usr/bin/env bash
# Installs the independent oracles for tests/verify_oracles.rs: a Python venv
# with the official webhook libraries (and hadolint's binary, for
# tests/deploy.rs) and an npm tree with GitHub's, both under target/oracles. Idempotent: a second run with nothing changed only
# checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${CARGO_TARGET_DIR:-$root/target}/oracles"
mkdir -p "$dir"

if [ ! -x "$dir/venv/bin/python" ]; then
    python3 -m venv "$dir/venv"
fi
if ! cmp -s "$here/requirements.txt" "$dir/venv/.requirements.txt"; then
    "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$dir/venv/.requirements.txt"
fi

if ! cmp -s "$here/package.json" "$dir/package.json" || [ ! -d "$dir/node_modules/@octokit/webhooks-methods" ]; then
    cp "$here/package.json" "$dir/package.json"
    if [ -f "$here/package-lock.json" ]; then cp "$here/package-lock.json" "$dir/package-lock.json"; fi
    (cd "$dir" && npm install --silent --no-audit --no-fund >/dev/null)
fi
echo "oracles ready in $dir"
