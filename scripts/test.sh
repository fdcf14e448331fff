#!/usr/bin/env bash
# Runs every Roost test on a Debian-like machine with a Rust toolchain: installs what the tests
# need when it is missing (mosquitto-clients, mosquitto, chromium, iproute2, curl), then checks formatting and lints, builds the
# binaries the end-to-end tests start, and runs all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
{ command -v mosquitto_pub && command -v mosquitto_sub; } >/dev/null 2>&1 || missing+=(mosquitto-clients)
# The witness tests and the benchmarks run Mosquitto brokers of their own on free ports.
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v stdbuf >/dev/null 2>&1 || missing+=(coreutils)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The partition test builds network namespaces (ip) and reads /health inside them (curl).
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing test dependencies: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian's mosquitto package may start its own broker on port 1883, which the test of the
  # no-argument defaults needs free.
  if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1 &&
    systemctl is-active --quiet mosquitto 2>/dev/null; then
    $sudo systemctl disable --now mosquitto
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked
