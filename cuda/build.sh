#!/usr/bin/env bash
# Builds the CUDA release binary on an x86-64 Linux machine with no GPU and no system CUDA
# toolkit, and packs it into dist/gptlab-cuda-<version>.tar.gz with a runner script.
#
# Where the toolkit comes from: NVIDIA's CUDA 13.0 wheels on PyPI, pinned to 13.0.x because
# PTX from a newer nvcc declares a PTX ISA that driver 580 (CUDA 13.0) refuses to load. They
# unpack into build/cuda/venv; build/cuda/root is the CUDA root dfdx's build script expects
# (include/, lib/ with unversioned symlinks and a libcuda stub, bin/nvidia-smi answering
# compute capability 9.0 = H100/H200). The stub only satisfies the linker: at run time the
# binary loads the driver's real libcuda.so.1.
#
# Usage: cuda/build.sh            (CUDA_COMPUTE_CAP=90 by default; set it for other GPUs)
set -euo pipefail
cd "$(dirname "$0")/.."

CAP="${CUDA_COMPUTE_CAP:-90}"
WORK="$PWD/build/cuda"
VENV="$WORK/venv"
ROOT="$WORK/root"
mkdir -p "$WORK"

[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
# Every piece pinned, the compiler's own dependencies (nvvm's cicc, crt headers) included: an
# unpinned nvvm resolves to the newest, whose PTX the 13.0 ptxas (and driver) reject.
"$VENV/bin/pip" install -q \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-nvrtc==13.0.88" \
    "nvidia-curand==10.4.0.35" "nvidia-cublas==13.0.2.14"
CU="$(echo "$VENV"/lib/python3*/site-packages/nvidia/cu13)"
[ -x "$CU/bin/nvcc" ] || { echo "nvcc not found under $CU/bin" >&2; exit 1; }

# The CUDA root: headers, unversioned library names, the driver stub, a stand-in nvidia-smi.
mkdir -p "$ROOT/lib" "$ROOT/bin"
ln -sfn "$CU/include" "$ROOT/include"
for lib in nvrtc curand cublas cublasLt cudart; do
    real="$(ls "$CU/lib/lib$lib.so."* 2>/dev/null | sort | head -1 || true)"
    [ -n "$real" ] && ln -sf "$real" "$ROOT/lib/lib$lib.so"
done
printf '#!/bin/sh\necho compute_cap\necho %s\n' "${CAP:0:1}.${CAP:1}" > "$ROOT/bin/nvidia-smi"
chmod +x "$ROOT/bin/nvidia-smi"

export CUDA_ROOT="$ROOT" CUDA_PATH="$ROOT" CUDA_COMPUTE_CAP="$CAP"
export PATH="$ROOT/bin:$CU/bin:$PATH"
export LIBRARY_PATH="$ROOT/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR="$PWD/target/cuda"

# libcuda stub: define every driver symbol the binary calls. The names come from the linker
# itself (a first link without the stub lists them as undefined), so the stub always matches
# the dfdx/cudarc versions in Cargo.lock.
STUB_C="$WORK/libcuda_stub.c"
if [ ! -f "$ROOT/lib/libcuda.so" ]; then
    echo "building once without libcuda to collect the driver symbols..." >&2
    printf 'void gptlab_cuda_stub(void) {}\n' > "$STUB_C"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/libcuda.so" "$STUB_C"
    set +e
    RUSTFLAGS="-C link-arg=-Wl,--error-limit=0" cargo build --release --locked --features cuda 2> "$WORK/link.log"
    set -e
    grep -o "undefined reference to \`cu[A-Za-z0-9_]*'" "$WORK/link.log" | sed "s/.*\`\(.*\)'/\1/" | sort -u > "$WORK/symbols.txt" || true
    grep -o "undefined symbol: cu[A-Za-z0-9_]*" "$WORK/link.log" | sed 's/undefined symbol: //' | sort -u >> "$WORK/symbols.txt" || true
    sort -u -o "$WORK/symbols.txt" "$WORK/symbols.txt"
    [ -s "$WORK/symbols.txt" ] || { echo "no driver symbols found; see $WORK/link.log" >&2; tail -30 "$WORK/link.log" >&2; exit 1; }
    { echo '/* Link-time stand-in for the NVIDIA driver library; never loaded at run time. */'
      echo '/* Error strings work, so a stubbed binary run here reports "no usable GPU" cleanly. */'
      echo 'int cuGetErrorString(int e, const char **s) { (void)e; *s = "libcuda stub: no NVIDIA driver"; return 0; }'
      echo 'int cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_ERROR_STUB"; return 0; }'
      grep -v -x -e cuGetErrorString -e cuGetErrorName "$WORK/symbols.txt" | while read -r s; do echo "int $s(void) { return 999; }"; done
    } > "$STUB_C"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/libcuda.so" "$STUB_C"
    echo "libcuda stub: $(wc -l < "$WORK/symbols.txt") driver symbols" >&2
fi

cargo build --release --locked --features cuda --bin gptlab
cargo build --release --locked --features cuda --bench step
TESTS="$(cargo test --release --locked --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)"

# The bundle: the binary, the step benchmark, a runner, and nothing the GPU machine already has
# (libcuda.so.1 from the driver, libnvrtc.so.13 and libcublas*.so.13 from its CUDA 13 toolkit).
VERSION="$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)"
DIST="dist/gptlab-cuda-$VERSION"
rm -rf "$DIST" && mkdir -p "$DIST/bin"
cp "$CARGO_TARGET_DIR/release/gptlab" "$DIST/bin/"
cp "$(ls -t "$CARGO_TARGET_DIR"/release/deps/step-* | grep -v '\.d$' | head -1)" "$DIST/bin/step-bench"
cp "$TESTS" "$DIST/bin/cuda-tests"
strip --strip-debug "$DIST"/bin/*
cat > "$DIST/run.sh" <<'RUN'
#!/bin/sh
# Runs the bundled gptlab; finds CUDA 13's libraries where the driver and toolkit put them.
HERE="$(cd "$(dirname "$0")" && pwd)"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
exec "$HERE/bin/${GPTLAB_BIN:-gptlab}" "$@"
RUN
chmod +x "$DIST/run.sh"
tar -C dist -czf "$DIST.tar.gz" "gptlab-cuda-$VERSION"
echo "needs at run time:" >&2
ldd "$DIST/bin/gptlab" | grep -E "cuda|nvrtc|cublas|curand" >&2 || true
ls -la "$DIST.tar.gz" >&2
echo "$DIST"
