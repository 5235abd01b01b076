#!/usr/bin/env bash
# Runs whtunnel's whole test suite on a fresh machine: installs what the
# tests need that cargo does not (tmux for the real-terminal inspector test;
# systemd-analyze for the deploy unit; Pebble for the ACME test; nats-server
# for the relay-cluster tests; hadolint in the oracle venv; the official
# webhook libraries the signature tests check against, in a
# venv and an npm tree under target/oracles), then `cargo test --locked`.
# Extra arguments go to cargo test (e.g. ./test.sh --test held).
set -euo pipefail
cd "$(dirname "$0")"

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: please install: $* (or run as root)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need=()
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# The ACME test runs a real Pebble CA (and its mock DNS, pebble-challtestsrv).
command -v pebble >/dev/null 2>&1 || need+=(pebble)
# The cluster tests start their own NATS JetStream servers (tests/common/nats.rs).
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# tests/deploy.rs: systemd-analyze verify on deploy/whtunnel-relay.service.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  apt_install "${need[@]}"
fi

bash tests/oracles/setup.sh
exec cargo test --locked "$@"
