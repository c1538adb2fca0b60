#!/usr/bin/env python3
"""Runs gptlab's step benchmark and the PyTorch reference (bench/torch_step.py) side by side,
alternating the two programs case by case, and prints gptlab/PyTorch for step time and peak
memory. Ends with `worst ratio: X.XX` (step time).

Usage: compare.py GPTLAB_BENCH_BINARY PYTHON [--rounds N] [--device cpu|cuda]
On the GPU machine: compare.py dist/gptlab-cuda-*/bin/step-bench python3 --device cuda
(the bundled benchmark, PyTorch with DEV=cuda). Memory columns are host peak RSS.
"""
import argparse, os, re, resource, subprocess, sys

# (name, B, T, kv heads, RoPE, vocabulary): benches/step.rs's cases.
CASES = [
    ("mha", 64, 128, 6, 0, 65),
    ("rope", 64, 128, 6, 1, 65),
    ("gqa2", 64, 128, 2, 1, 65),
    ("rope256", 64, 256, 6, 1, 65),
    ("gpt2", 16, 128, 6, 0, 50257),
]
HERE = os.path.dirname(os.path.abspath(__file__))


def measure(cmd, env=None):
    """(median step seconds, peak RSS MiB) of one run, in a fresh process."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)\n"
        "print('peak_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    median = float(re.search(r"median_step_s=([0-9.]+)", out.stdout).group(1))
    peak = int(re.search(r"peak_kib (\d+)", out.stdout).group(1)) / 1024
    return median, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench")
    ap.add_argument("python")
    ap.add_argument("rounds_pos", nargs="?", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = ap.parse_args()
    bench, python, device = a.bench, a.python, a.device
    rounds = a.rounds_pos or a.rounds
    rows = []
    for name, b, t, kv, rope, vocab in CASES:
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(measure([bench, name, "6" if device == "cpu" else "20", device]))
            steps = "6" if device == "cpu" else "20"
            env = dict(os.environ, B=str(b), T=str(t), KV=str(kv), ROPE=str(rope), V=str(vocab), STEPS=steps, DEV=device)
            theirs.append(measure([python, os.path.join(HERE, "torch_step.py")], env))
        g = sorted(o[0] for o in ours)[len(ours) // 2]
        p = sorted(o[0] for o in theirs)[len(theirs) // 2]
        gm = max(o[1] for o in ours)
        pm = max(o[1] for o in theirs)
        rows.append((name, b, t, kv, rope, vocab, g, p, g / p, gm, pm, gm / pm))
    print(f"{'case':<8} {'B':>3} {'T':>4} {'KV':>3} {'rope':>4} {'vocab':>6} {'gptlab s':>9} {'torch s':>8} {'ratio':>6} {'gptlab MiB':>10} {'torch MiB':>9} {'mem ratio':>9}")
    for r in rows:
        print(f"{r[0]:<8} {r[1]:>3} {r[2]:>4} {r[3]:>3} {r[4]:>4} {r[5]:>6} {r[6]:>9.3f} {r[7]:>8.3f} {r[8]:>6.2f} {r[9]:>10.0f} {r[10]:>9.0f} {r[11]:>9.2f}")
    if device == "cpu":
        print(f"threads: gptlab {os.cpu_count()} (rayon default), torch default")
    else:
        print("device: cuda (GPU 0) for both")
    # The reference moves between releases: say which one this table was measured against.
    version = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    print(f"pytorch: {version.stdout.strip() or 'unknown'}")
    print(f"worst ratio: {max(r[8] for r in rows):.2f}")


main()
