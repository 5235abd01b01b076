#!/usr/bin/env bash
# Installs the whtunnel binary from this checkout with cargo.
# Honours CARGO_INSTALL_ROOT (default: ~/.cargo, binary in ~/.cargo/bin).
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "install.sh: cargo is not installed. Install Rust with rustup (https://rustup.rs), open a new shell, then run ./install.sh again." >&2
  exit 1
fi

cd "$(dirname "$0")"
cargo install --path . --locked --force

root="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}"
bin="$root/bin/whtunnel"
echo "installed: $bin"
case ":$PATH:" in
  *":$root/bin:"*) echo "next: whtunnel listen 3000" ;;
  *) echo "note: $root/bin is not on your PATH; add it, or run $bin listen 3000" ;;
esac
