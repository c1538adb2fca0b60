#!/usr/bin/env bash
# Installs what `just test` needs beyond a Rust toolchain on a fresh Debian machine:
# rustfmt and clippy, and Chromium for the report test (it renders index.html headless).
set -euo pipefail
rustup component add rustfmt clippy >/dev/null 2>&1 || true
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    echo "installing chromium (the report test renders the page in a headless browser)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
