# gptlab — `just --list` shows every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

bin := "target/release/gptlab"

# Build the release binary (CPU backend).
build:
    cargo build --release --locked

# Train every run of a spec: just run experiments/rope_vs_abs.toml [--set key=value ...]
run FILE *ARGS: build
    GPTLAB_RESUME="just run {{FILE}} {{ARGS}}" {{bin}} run {{FILE}} {{ARGS}}

# Train every point of a spec's [sweep] grid: just sweep experiments/gqa_heads.toml
sweep FILE *ARGS: build
    GPTLAB_RESUME="just sweep {{FILE}} {{ARGS}}" {{bin}} sweep {{FILE}} {{ARGS}}

# GPTLAB_RESUME in the recipes below is the command gptlab names when interrupted (the one typed);
# GPTLAB_ETA_ALSO names specs trained after this command, so the time left covers the study.

# The whole reference study: RoPE vs absolute (800 steps each), then the GQA sweep (4 × 600 steps).
study *ARGS: build
    GPTLAB_RESUME="just study {{ARGS}}" GPTLAB_ETA_ALSO=experiments/gqa_heads.toml {{bin}} run experiments/rope_vs_abs.toml {{ARGS}}
    GPTLAB_RESUME="just study {{ARGS}}" {{bin}} sweep experiments/gqa_heads.toml {{ARGS}}

# Redraw reports/<experiment>/ from the runs' metrics and checkpoints.
report FILE *ARGS: build
    {{bin}} report {{FILE}} {{ARGS}}

# Generate text from a checkpoint: just sample runs/smoke/rope/checkpoints/step_00000040 --prompt "ROMEO:"
sample CHECKPOINT *ARGS: build
    {{bin}} sample {{CHECKPOINT}} {{ARGS}}

# Seconds-long end-to-end run of the tiny smoke experiment.
smoke *ARGS: build
    GPTLAB_RESUME="just smoke {{ARGS}}" {{bin}} run experiments/smoke.toml {{ARGS}}

# List the specs under experiments/ (or DIR).
list DIR="experiments": build
    {{bin}} list {{DIR}}

# Check spec files without training.
validate +FILES: build
    {{bin}} validate {{FILES}}

# Show a spec's expanded runs.
plan FILE *ARGS: build
    {{bin}} plan {{FILE}} {{ARGS}}

# Time full gpt-mini training steps (release build): just bench [mha|rope|gqa2|rope256|gpt2|gemm|attention|all]; gemm: the matrix-product rates and the FLOP limit; attention: the fused attention alone
bench CASE="all":
    for c in $([ "{{CASE}}" = all ] && echo gemm attention mha rope gqa2 rope256 gpt2 || echo {{CASE}}); do cargo bench --locked --bench step -- $c; done

# gptlab vs PyTorch eager, alternating, same cases (makes .venv with torch): [--rounds N] [--device cuda]
bench-compare *ARGS:
    [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null || (python3 -m venv .venv && .venv/bin/pip install -q torch numpy)
    if [[ " {{ARGS}} " == *" cuda "* ]]; then \
        bin="$(ls -d dist/gptlab-cuda-*/bin/step-bench 2>/dev/null | head -1)"; \
        [ -n "$bin" ] || { echo "no CUDA bundle: run just build-cuda first" >&2; exit 1; }; \
    else \
        cargo bench --locked --bench step --no-run; \
        bin="$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)"; \
    fi; \
    python3 bench/compare.py "$bin" .venv/bin/python {{ARGS}}

# CUDA release build + bundle dist/gptlab-cuda-<version>.tar.gz (no GPU or toolkit needed; see cuda/build.sh)
build-cuda:
    bash cuda/build.sh

# The GPU test subset, CPU vs CUDA for every variant (on the GPU machine: GPTLAB_BIN=cuda-tests dist/*/run.sh)
test-cuda: build-cuda
    GPTLAB_BIN=cuda-tests "$(ls -d dist/gptlab-cuda-*/run.sh | head -1)" --test-threads 1

# `test` installs what it needs first (scripts/test-deps.sh: rustfmt, clippy, chromium, slurm-wlm and
# munge; tests/slurm.rs starts a one-node Slurm cluster of its own, as root). The tests
# are built with the test-only `fault-injection` feature, which the resume tests use to kill
# gptlab at chosen points.

# The test suite CI runs: fmt, clippy, every test (report page in headless Chromium), CUDA type-check.
test:
    bash scripts/test-deps.sh
    cargo fmt --check
    cargo clippy --locked --all-targets --features fault-injection -- -D warnings
    # Token caches of the tests' corpora go to target/tmp, not the user's ~/.cache.
    GPTLAB_CACHE_DIR="$PWD/target/tmp/token-cache" cargo test --locked --features fault-injection
    # The CUDA code path must keep compiling although CI has no GPU or toolkit.
    cargo check --locked --features cuda,ci-check --all-targets
