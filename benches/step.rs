//! Times full gpt-mini training steps (forward, backward, clip, AdamW) after a warm-up.
//!
//! `cargo bench --bench step -- CASE [STEPS] [cpu|cuda]` with CASE one of `mha`, `rope`,
//! `gqa2`, `rope256`, `gpt2` (or `all`); prints one line per case: median and spread of the step time
//! and the process's peak resident memory. Run one case per process for a per-case peak.
//! `gemm` prints the matrix-product rates and the FLOP limit, `attention` the fused attention
//! alone (CPU).
//! `cuda` needs a CUDA build (`cuda/build.sh` bundles this benchmark as `step-bench`).

use std::time::Instant;

use dfdx::prelude::*;
use gptlab::data::Batch;
use gptlab::model::{Dims, Dropout, Gpt, HasParams, ModelConfig, Position, cpu_backward, cpu_forward};
use gptlab::seed::{Stream, stream};
use gptlab::train::{AdamW, train_step};
use rand::Rng;

/// One benchmark case: gpt-mini at batch `b`, length `t`, with `kv` key/value heads, a
/// position encoding and a vocabulary (65: tiny-shakespeare's characters; 50,257: GPT-2's).
struct Case {
    name: &'static str,
    b: usize,
    t: usize,
    kv: usize,
    position: Position,
    vocab: usize,
}

/// The cases of the speed issue (B = 64, characters), and a subword run's shape: GPT-2's
/// vocabulary at B = 16, where the head and the loss over 50,257 logits per token dominate.
const CASES: [Case; 5] = [
    Case {
        name: "mha",
        b: 64,
        t: 128,
        kv: 6,
        position: Position::Absolute,
        vocab: 65,
    },
    Case {
        name: "rope",
        b: 64,
        t: 128,
        kv: 6,
        position: Position::Rope,
        vocab: 65,
    },
    Case {
        name: "gqa2",
        b: 64,
        t: 128,
        kv: 2,
        position: Position::Rope,
        vocab: 65,
    },
    Case {
        name: "rope256",
        b: 64,
        t: 256,
        kv: 6,
        position: Position::Rope,
        vocab: 65,
    },
    Case {
        name: "gpt2",
        b: 16,
        t: 128,
        kv: 6,
        position: Position::Absolute,
        vocab: 50_257,
    },
];

/// Peak resident set size of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn bench<D: gptlab::model::Backend + Synchronize>(dev: &D, case: &Case, steps: usize) {
    let &Case {
        name,
        b,
        t,
        kv,
        position,
        vocab,
    } = case;
    // gpt-mini at block 256.
    let config = ModelConfig {
        block_size: 256,
        vocab_size: vocab,
        ..ModelConfig::gpt_mini()
    }
    .with(|a| {
        a.n_kv_head = Some(kv);
        a.position = position;
    });
    let mut model = Gpt::new(dev, &config, 0);
    let mut opt = AdamW::new(&model, 0.9, 0.95, 1e-8, 0.1);
    // Random tokens, as the PyTorch reference uses.
    let mut rng = stream(0, Stream::Batch, 0);
    let tokens: Vec<usize> = (0..b * (t + 1)).map(|_| rng.gen_range(0..vocab)).collect();
    let batch = Batch {
        b,
        t,
        inputs: tokens.chunks(t + 1).flat_map(|w| w[..t].to_vec()).collect(),
        targets: tokens.chunks(t + 1).flat_map(|w| w[1..].to_vec()).collect(),
    };
    let mut times = vec![];
    for step in 0..steps {
        let mut drop = Dropout::train(0.1, stream(0, Stream::Dropout, step as u64));
        let t0 = Instant::now();
        train_step(&mut model, &mut opt, &batch, 5e-4, 1.0, &mut drop);
        dev.synchronize();
        times.push(t0.elapsed().as_secs_f64());
    }
    let mut timed = times[1..].to_vec();
    timed.sort_by(f64::total_cmp);
    let median = timed[timed.len() / 2];
    // The mha step against its FLOP limit, with the product rate measured in this process
    // right after the steps: this machine's speed drifts too much between processes.
    let limit = (name == "mha" && D::isa().is_some()).then(|| {
        let limit = mha_flop_limit_s(best_gemm_gflops(false));
        format!(" flop_limit_s={limit:.4} limit_ratio={:.2}", median / limit)
    });
    println!(
        "case={name} device={} isa={} B={b} T={t} KV={kv} position={position} vocab={vocab} threads={} median_step_s={median:.4} min_s={:.4} max_s={:.4} steps={} peak_rss_mib={:.0}{}",
        std::any::type_name::<D>().rsplit("::").next().unwrap_or("?"),
        D::isa().map_or("-", gptlab::isa::Isa::name),
        rayon::current_num_threads(),
        timed[0],
        timed[timed.len() - 1],
        timed.len(),
        peak_rss_mib(),
        limit.unwrap_or_default()
    );
}

/// gpt-mini's matrix products at B = 64, T = 128 (N = 8192 rows, C = 192): the forward
/// `x·W` of the attention (`3C`, `C`) and MLP (`4C`, then back to `C`) weights, and the
/// backward `gy·Wᵀ` and `xᵀ·gy` of the widest, as `(label, m, n, k, lhs_t, rhs_t)`.
const GEMM_SHAPES: [(&str, usize, usize, usize, bool, bool); 6] = [
    ("x·Wqkv", 8192, 576, 192, false, false),
    ("x·Wo", 8192, 192, 192, false, false),
    ("x·W1", 8192, 768, 192, false, false),
    ("h·W2", 8192, 192, 768, false, false),
    ("gy·W1ᵀ", 8192, 192, 768, false, true),
    ("xᵀ·gy", 192, 768, 8192, true, false),
];

/// The best matrix-product rate over [`GEMM_SHAPES`] in GFLOP/s (best of 20 each), printing
/// each shape's rate when `print`.
fn best_gemm_gflops(print: bool) -> f64 {
    let mut best: f64 = 0.0;
    for (label, m, n, k, lhs_t, rhs_t) in GEMM_SHAPES {
        let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3).collect();
        let mut dst = vec![0.0; m * n];
        let fastest = (0..20)
            .map(|_| {
                let t0 = Instant::now();
                gptlab::model::matmul(m, n, k, &mut dst, &lhs, lhs_t, &rhs, rhs_t);
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let gflops = 2.0 * (m * n * k) as f64 / fastest / 1e9;
        best = best.max(gflops);
        if print {
            println!("gemm {label} {m}x{k}·{k}x{n} gflops={gflops:.0}");
        }
    }
    best
}

/// The FLOP limit of the mha case's step at a product rate of `gflops`: the time the step
/// would take if every FLOP ran at that rate.
fn mha_flop_limit_s(gflops: f64) -> f64 {
    step_flops(&ModelConfig::gpt_mini(), 64, 128) / (gflops * 1e9)
}

/// The matrix-product rate on each of [`GEMM_SHAPES`], the best of them, and the mha case's
/// step arithmetic over it (the FLOP limit the step is compared with).
fn gemm_rates() {
    let best = best_gemm_gflops(true);
    println!(
        "gemm best_gflops={best:.0} isa={} mha_step_flops={:.3e} flop_limit_s={:.4}",
        gptlab::isa::current(),
        step_flops(&ModelConfig::gpt_mini(), 64, 128),
        mha_flop_limit_s(best)
    );
}

/// The fused causal attention alone at the mha case's shapes (B 64, T 128, six heads of 32,
/// dropout 0.1): forward and backward of one layer, 20 calls, as milliseconds for a step's
/// six layers, and the rate of its products (seven per head: `QKᵀ` and `PV` forward; `QKᵀ`
/// again, `dV`, `dP`, `dQ`, `dK` backward) over the causal scores.
fn attention_time() {
    let d = Dims {
        b: 64,
        t: 128,
        h: 6,
        hkv: 6,
        hd: 32,
        alibi: false,
        p: 0.1,
        seed: 7,
        first_window: 0,
    };
    let n = d.b * d.t * d.h * d.hd;
    let values = |salt: usize| -> Vec<f32> { (0..n).map(|i| ((i * salt) % 1000) as f32 * 1e-3 - 0.5).collect() };
    let (q, k, v, gy) = (values(7919), values(104_729), values(1_299_709), values(15_485_863));
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            let t0 = Instant::now();
            let (_, lse) = cpu_forward(&d, &q, &k, &v);
            cpu_backward(&d, [&q, &k, &v], &lse, &gy, [&mut dq, &mut dk, &mut dv]);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let layers = ModelConfig::gpt_mini().arch.n_layer as f64;
    // Score elements per head the attention must compute: the causal ones, T(T+1)/2 (its tiles
    // compute a few more right of the diagonal, counted as overhead).
    let scores = d.t * (d.t + 1) / 2;
    let flops = (7 * 2 * d.hd * scores * d.b * d.h) as f64;
    println!(
        "attention isa={} B={} T={} H={} hd={} p={} fastest_ms_per_step={:.1} median_ms_per_step={:.1} gflops={:.0}",
        gptlab::isa::current(),
        d.b,
        d.t,
        d.h,
        d.hd,
        d.p,
        times[0] * layers * 1e3,
        times[times.len() / 2] * layers * 1e3,
        flops / times[0] / 1e9
    );
}

/// FLOPs of one training step's matrix products at batch `b`, length `t`: the forward's
/// `2·tokens` per weight that decays (AdamW decays exactly the matrix weights, head included)
/// plus `QKᵀ` and `PV` over the causal scores per head (a token attends to `(T+1)/2` keys on
/// average; the attention's tiles compute only those and a few more), and a backward of twice
/// the forward. (Before 2026-12-03's eighth sitting the attention computed, and this counted,
/// the whole `T×T`: limit ratios of earlier sittings are over a limit about 5% higher.)
fn step_flops(config: &ModelConfig, b: usize, t: usize) -> f64 {
    let model = Gpt::new(&Cpu::default(), config, 0);
    let mut weights = 0usize;
    model.visit(&mut |p| {
        if p.decay {
            weights += p.numel();
        }
    });
    let attn = config.attn_shape();
    let attention =
        config.arch.n_layer as f64 * 2.0 * 2.0 * (t + 1) as f64 / 2.0 * (attn.n_head * attn.head_dim()) as f64;
    let forward = 2.0 * weights as f64 + attention;
    3.0 * forward * (b * t) as f64
}

fn main() {
    gptlab::alloc::keep_freed_memory();
    // Inside a pool, as training runs each run (`train::jobs`): called from outside one, every
    // parallel operation hands its work to the pool's threads and puts the caller to sleep
    // until they finish, two wake-ups per operation that a run never pays.
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .expect("starting the thread pool");
    pool.install(run_cases);
}

/// Runs the cases the command line names.
fn run_cases() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let case = args.first().map(String::as_str).unwrap_or("all");
    let steps = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(6usize).max(2);
    let device = args.get(2).map(String::as_str).unwrap_or("cpu");
    let mut ran = false;
    if case == "gemm" || case == "all" {
        gemm_rates();
        ran = true;
    }
    if case == "attention" || case == "all" {
        attention_time();
        ran = true;
    }
    for c in &CASES {
        if case == "all" || case == c.name {
            match device {
                "cpu" => bench(&Cpu::default(), c, steps),
                #[cfg(feature = "cuda")]
                "cuda" => bench(&gptlab::device::open_cuda().expect("opening the GPU"), c, steps),
                other => {
                    eprintln!(
                        "device `{other}` is not available in this build (cpu{})",
                        if gptlab::device::HAS_CUDA { ", cuda" } else { "" }
                    );
                    std::process::exit(2);
                }
            }
            ran = true;
        }
    }
    if !ran {
        eprintln!("unknown case `{case}`: one of mha, rope, gqa2, rope256, gpt2, gemm, attention, all");
        std::process::exit(2);
    }
}
