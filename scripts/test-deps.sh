#!/usr/bin/env bash
# Installs what `just test` needs beyond a Rust toolchain on a fresh Debian machine: rustfmt
# and clippy; Chromium for the report test (it renders index.html headless); Slurm and munge
# for the cluster test (tests/slurm.rs starts a one-node cluster of its own).
set -euo pipefail
rustup component add rustfmt clippy >/dev/null 2>&1 || true
missing=()
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    missing+=(chromium)
fi
for tool in slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || { missing+=(slurm-wlm); break; }
done
command -v munged >/dev/null || missing+=(munge)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (the report test renders the page in a headless browser; the cluster test runs a real Slurm)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Independent references in Python, in a virtual environment of its own (kept in target/ so
# `cargo clean` removes it; pip needs python3-venv on Debian): TensorBoard's own reader for
# tests/tensorboard.rs, Hugging Face's Python `tokenizers` trainer for tests/trained_tokenizer.rs.
if ! target/tb-venv/bin/python -c "import tensorboard, tokenizers" 2>/dev/null; then
    echo "installing tensorboard and tokenizers into target/tb-venv (tests/tensorboard.rs and tests/trained_tokenizer.rs check against them)" >&2
    python3 -m venv target/tb-venv 2>/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv target/tb-venv
    }
    target/tb-venv/bin/pip install -q tensorboard tokenizers==0.23.3
fi
