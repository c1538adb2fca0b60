//! The model's maths against independent facts: parameter counts, the loss at
//! initialisation, RoPE's relative-position property, attention against a scalar
//! reference, causality, and gradients against finite differences.

// Index loops mirror the formulas (positions m, parameters pi) more plainly than iterators.
#![allow(clippy::needless_range_loop)]
use dfdx::prelude::*;
use gptlab::data::{Batch, Corpus};
mod common;

use gptlab::model::{
    AttnShape, CausalSelfAttention, Dropout, Gpt, HasParams, ModelConfig, ModelOptions, Position, Positions, Rope,
};
use gptlab::params::Arch;
use gptlab::seed::{Stream, stream};
use gptlab::train::loss_and_grads;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gpt_mini(position: Position, block_size: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: 65,
        block_size,
        arch: ModelOptions {
            n_layer: 6,
            n_embd: 192,
            n_head: 6,
            n_kv_head: Some(6),
            position,
            dropout: 0.1,
            rope_base: 10_000.0,
            ..ModelOptions::default()
        },
    }
}

fn tiny(position: Position, n_head: usize, n_kv_head: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: 7,
        block_size: 8,
        arch: ModelOptions {
            n_layer: 2,
            n_embd: 8,
            n_head,
            n_kv_head: Some(n_kv_head),
            position,
            dropout: 0.0,
            rope_base: 10_000.0,
            ..ModelOptions::default()
        },
    }
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn gpt_mini_has_2_719_104_parameters_with_absolute_positions_at_block_128() {
    let dev = Cpu::default();
    let config = gpt_mini(Position::Absolute, 128);
    let model = Gpt::new(&dev, &config, 0);
    assert_eq!(model.num_params(), 2_719_104);
    assert_eq!(Arch::from_model(&config).breakdown().total, 2_719_104);
}

#[test]
fn rope_has_no_position_table() {
    let dev = Cpu::default();
    let model = Gpt::new(&dev, &gpt_mini(Position::Rope, 128), 0);
    assert!(model.positions.table().is_none());
    assert_eq!(model.num_params(), 2_719_104 - 128 * 192);
    let mut names = vec![];
    model.visit(&mut |p| names.push(p.name.clone()));
    assert!(!names.iter().any(|n| n.starts_with("wpe")));
}

#[test]
fn analytic_count_matches_instantiated_for_gqa_and_mqa() {
    let dev = Cpu::default();
    for (h, kv, pos) in [
        (6, 3, Position::Rope),
        (6, 1, Position::Absolute),
        (4, 2, Position::None),
    ] {
        let config = gpt_mini(pos, 64).with(|a| {
            a.n_head = h;
            a.n_kv_head = Some(kv);
        });
        let counted = Arch::from_model(&config).breakdown().total as usize;
        assert_eq!(Gpt::new(&dev, &config, 1).num_params(), counted, "{h}/{kv}");
    }
}

#[test]
fn loss_at_initialisation_is_close_to_ln_vocab() {
    let dev = Cpu::default();
    let corpus = Corpus::from_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare.txt").as_ref(),
        0.1,
    )
    .unwrap();
    assert_eq!(corpus.tokenizer.vocab_size(), 65);
    for position in [Position::Absolute, Position::Rope] {
        let model = Gpt::new(&dev, &gpt_mini(position, 128), 3407);
        let batch = gptlab::data::sample_batch(&corpus.train, 4, 128, &mut stream(1, Stream::Batch, 1));
        let logits = model.eval_logits(&batch.inputs, batch.b, batch.t);
        let loss = model.loss(logits, &batch.targets).as_vec()[0];
        assert!(
            (loss - 65f32.ln()).abs() < 0.1,
            "{position}: loss {loss} vs ln 65 = {}",
            65f32.ln()
        );
    }
}

/// Rotates one head vector by hand: pair (i, i + d/2) turns by m·base^(-2i/d).
fn rotate_by_hand(x: &[f32], m: usize, base: f64) -> Vec<f32> {
    let d = x.len();
    let h = d / 2;
    let mut out = vec![0.0; d];
    for i in 0..h {
        let angle = m as f64 * base.powf(-2.0 * i as f64 / d as f64);
        let (s, c) = angle.sin_cos();
        out[i] = (x[i] as f64 * c - x[i + h] as f64 * s) as f32;
        out[i + h] = (x[i + h] as f64 * c + x[i] as f64 * s) as f32;
    }
    out
}

/// Applies `rope` to `vectors` placed at positions 0..n (one batch, one head).
fn rope_positions(rope: &Rope, vectors: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let dev = Cpu::default();
    let (n, d) = (vectors.len(), vectors[0].len());
    let x = dev.tensor_from_vec(vectors.concat(), (1, n, 1, d));
    let y = rope.apply(x, 0).as_vec();
    y.chunks(d).map(|c| c.to_vec()).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn rope_keeps_norms_matches_the_formula_and_depends_only_on_offsets() {
    let (d, n) = (16, 48);
    let rope = Rope::new(d, n, 10_000.0);
    let mut r = rng(5);
    let q: Vec<f32> = (0..d).map(|_| r.gen_range(-1.0..1.0)).collect();
    let k: Vec<f32> = (0..d).map(|_| r.gen_range(-1.0..1.0)).collect();
    let qs = rope_positions(&rope, &vec![q.clone(); n]);
    let ks = rope_positions(&rope, &vec![k.clone(); n]);
    for m in 0..n {
        assert!((dot(&qs[m], &qs[m]) - dot(&q, &q)).abs() < 1e-4, "norm changed at {m}");
        for (a, b) in qs[m].iter().zip(rotate_by_hand(&q, m, 10_000.0)) {
            assert!((a - b).abs() < 1e-5, "position {m}: {a} vs {b}");
        }
    }
    for offset in [0usize, 1, 3, 17] {
        let reference = dot(&qs[offset], &ks[0]);
        for m in [offset + 5, offset + 11, n - 1] {
            let got = dot(&qs[m], &ks[m - offset]);
            assert!(
                (got - reference).abs() < 1e-4,
                "offset {offset} at {m}: {got} vs {reference}"
            );
        }
    }
    // The offset matters: otherwise the check above would hold trivially.
    assert!((dot(&qs[3], &ks[0]) - dot(&qs[0], &ks[0])).abs() > 1e-3);
}

/// ALiBi slopes written out by hand from Press et al. (2022): 4 heads start at 2^(-8/4) = 1/4
/// with ratio 1/4; 6 heads take the 4-head slopes, then slopes 1 and 3 of the 8-head sequence
/// (1/2, 1/4, …, 1/256), i.e. 1/2 and 1/8.
fn alibi_slopes_by_hand(h: usize) -> Vec<f32> {
    match h {
        1 => vec![1.0 / 256.0],
        2 => vec![1.0 / 16.0, 1.0 / 256.0],
        // The 2-head slopes, then slope 0 of the 4-head sequence.
        3 => vec![1.0 / 16.0, 1.0 / 256.0, 0.25],
        4 => vec![0.25, 0.0625, 0.015625, 0.00390625],
        6 => vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125],
        _ => panic!("no hand-computed slopes for {h} heads"),
    }
}

/// Causal attention with explicit loops: query head h reads key/value head h / (H / Hkv); with
/// `alibi`, score (i, s) gets −m_h·(i − s) with the hand-computed slopes.
fn attention_by_hand(
    attn: &CausalSelfAttention<Cpu>,
    x: &[f32],
    b: usize,
    t: usize,
    rope: Option<&Rope>,
    alibi: bool,
) -> Vec<f32> {
    let grouped_sum = attn.kind == gptlab::model::AttentionKind::GroupedSum;
    let AttnShape {
        n_embd: c,
        n_head: h,
        n_kv_head: hkv,
        ..
    } = attn.shape;
    let hd = c / h;
    let linear = |l: &gptlab::model::Linear<Cpu>, x: &[f32], d_out: usize| -> Vec<f32> {
        let w = l.weight.value.as_vec();
        let bias = l.bias.as_ref().map(|b| b.value.as_vec()).unwrap_or(vec![0.0; d_out]);
        let d_in = w.len() / d_out;
        x.chunks(d_in)
            .flat_map(|row| {
                (0..d_out)
                    .map(|o| bias[o] + (0..d_in).map(|i| row[i] * w[i * d_out + o]).sum::<f32>())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let q = linear(&attn.wq, x, c);
    let k = linear(&attn.wk, x, hkv * hd);
    let v = linear(&attn.wv, x, hkv * hd);
    let head = |m: &[f32], width: usize, bi: usize, ti: usize, hi: usize| -> Vec<f32> {
        let row = &m[(bi * t + ti) * width + hi * hd..][..hd];
        match rope {
            Some(_) => rotate_by_hand(row, ti, 10_000.0),
            None => row.to_vec(),
        }
    };
    let mut y = vec![0.0; b * t * c];
    for bi in 0..b {
        for hi in 0..h {
            let kvh = hi / (h / hkv);
            for ti in 0..t {
                // grouped_sum: every head of the group uses the sum of the group's queries.
                let qv = if grouped_sum {
                    let g = h / hkv;
                    (0..g)
                        .map(|i| head(&q, c, bi, ti, kvh * g + i))
                        .fold(vec![0.0; hd], |a, v| a.iter().zip(&v).map(|(x, y)| x + y).collect())
                } else {
                    head(&q, c, bi, ti, hi)
                };
                // grouped_sum has one score matrix per key/value head, each with its own slope.
                let slope = match (alibi, grouped_sum) {
                    (false, _) => 0.0,
                    (true, false) => alibi_slopes_by_hand(h)[hi],
                    (true, true) => alibi_slopes_by_hand(hkv)[kvh],
                };
                let scores: Vec<f32> = (0..=ti)
                    .map(|s| dot(&qv, &head(&k, hkv * hd, bi, s, kvh)) / (hd as f32).sqrt() - slope * (ti - s) as f32)
                    .collect();
                let max = scores.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f32 = e.iter().sum();
                for (s, es) in e.iter().enumerate() {
                    let vrow = &v[(bi * t + s) * hkv * hd + kvh * hd..][..hd];
                    for j in 0..hd {
                        y[(bi * t + ti) * c + hi * hd + j] += es / z * vrow[j];
                    }
                }
            }
        }
    }
    linear(&attn.wo, &y, c)
}

#[test]
fn attention_equals_the_scalar_reference_for_mha_gqa_and_mqa() {
    let dev = Cpu::default();
    let (b, t, c) = (2, 5, 24);
    for (h, hkv) in [(4, 4), (4, 2), (4, 1), (6, 3)] {
        for (with_rope, alibi) in [(false, false), (true, false), (false, true)] {
            let shape = AttnShape {
                n_embd: c,
                n_head: h,
                n_kv_head: hkv,
                head_dim: None,
            };
            let mut r = rng(11);
            let mut attn = CausalSelfAttention::new(&dev, &mut r, "a", shape, 0.02);
            // Larger weights and biases than at init, so the softmax is far from uniform.
            attn.visit_mut(&mut |p| {
                let vals: Vec<f32> = (0..p.numel()).map(|_| r.gen_range(-0.5..0.5)).collect();
                p.value.copy_from(&vals);
            });
            let x: Vec<f32> = (0..b * t * c).map(|_| r.gen_range(-1.0..1.0)).collect();
            let positions = match (with_rope, alibi) {
                (true, _) => Positions::Rope(Rope::new(c / h, t, 10_000.0)),
                (false, true) => Positions::Alibi,
                (false, false) => Positions::None,
            };
            let got = attn
                .forward(
                    dev.tensor_from_vec(x.clone(), (b * t, c)),
                    b,
                    t,
                    &positions,
                    &mut Dropout::eval(),
                    None,
                )
                .as_vec();
            let want = attention_by_hand(&attn, &x, b, t, positions.rope(), alibi);
            let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max);
            assert!(
                err < 1e-4,
                "H={h} Hkv={hkv} rope={with_rope} alibi={alibi}: max error {err}"
            );
        }
    }
}

#[test]
fn multi_query_shares_one_key_value_head() {
    let dev = Cpu::default();
    let shape = AttnShape {
        n_embd: 12,
        n_head: 4,
        n_kv_head: 1,
        head_dim: None,
    };
    let attn = CausalSelfAttention::new(&dev, &mut rng(2), "a", shape, 0.02);
    assert_eq!(attn.wk.weight.shape, vec![12, 3]);
    assert_eq!(attn.wv.weight.shape, vec![12, 3]);
}

#[test]
fn changing_a_later_token_never_changes_an_earlier_output() {
    let dev = Cpu::default();
    for position in [Position::Absolute, Position::Rope, Position::None, Position::Alibi] {
        let model = Gpt::new(
            &dev,
            &ModelConfig {
                block_size: 10,
                ..tiny(position, 2, 1)
            },
            4,
        );
        let a: Vec<usize> = vec![1, 2, 3, 4, 5, 6, 0, 1, 2, 3];
        let mut b = a.clone();
        b[6] = 5;
        let la = model.eval_logits(&a, 1, 10).as_vec();
        let lb = model.eval_logits(&b, 1, 10).as_vec();
        let v = 7;
        assert_eq!(la[..6 * v], lb[..6 * v], "{position}: positions before 6 changed");
        assert_ne!(
            la[6 * v..7 * v],
            lb[6 * v..7 * v],
            "{position}: position 6 did not change"
        );
    }
}

#[test]
fn gradients_agree_with_finite_differences() {
    let dev = Cpu::default();
    use gptlab::model::AttentionKind::{GroupedSum, Standard};
    for (position, h, hkv, kind) in [
        (Position::Absolute, 2, 2, Standard),
        (Position::Rope, 2, 1, Standard),
        (Position::None, 4, 2, Standard),
        (Position::Rope, 4, 2, GroupedSum),
        (Position::Alibi, 4, 2, Standard),
        (Position::Alibi, 4, 2, GroupedSum),
        (Position::Rope, 4, 2, Standard),
    ] {
        // The last case is a LLaMA-style block: RMSNorm, SwiGLU, no biases, GQA, RoPE.
        let llama = h == 4 && kind == Standard && position == Position::Rope;
        let mut config = tiny(position, h, hkv);
        config.arch.attention = kind;
        if llama {
            config.arch = ModelOptions {
                mlp_multiple_of: 4,
                ..common::llama_style(config.arch, 4)
            };
        }
        let mut model = Gpt::new(&dev, &config, 9);
        // Move away from the symmetric initial point so every gradient is sizeable.
        let mut r = rng(10);
        model.visit_mut(&mut |p| {
            let vals: Vec<f32> = p.value.as_vec().iter().map(|v| v + r.gen_range(-0.3..0.3)).collect();
            p.value.copy_from(&vals);
        });
        let (b, t) = (2, 6);
        let inputs: Vec<usize> = (0..b * t).map(|_| r.gen_range(0..7)).collect();
        let targets: Vec<usize> = (0..b * t).map(|_| r.gen_range(0..7)).collect();
        let batch = Batch { b, t, inputs, targets };
        let (_, grads) = loss_and_grads(&model, &batch, &mut Dropout::eval());
        let loss_at = |m: &Gpt<Cpu>| -> f64 {
            let logits = m.eval_logits(&batch.inputs, b, t);
            m.loss(logits, &batch.targets).as_vec()[0] as f64
        };
        let n_params = grads.len();
        let mut checked = 0;
        for pi in 0..n_params {
            let numel = grads[pi].len();
            for j in [0, numel / 2, numel - 1] {
                let eps = 1e-2f32;
                let mut at = |delta: f32| {
                    let mut i = 0;
                    let mut original = 0.0;
                    model.visit_mut(&mut |p| {
                        if i == pi {
                            let mut v = p.value.as_vec();
                            original = v[j];
                            v[j] += delta;
                            p.value.copy_from(&v);
                        }
                        i += 1;
                    });
                    let l = loss_at(&model);
                    let mut i = 0;
                    model.visit_mut(&mut |p| {
                        if i == pi {
                            let mut v = p.value.as_vec();
                            v[j] = original;
                            p.value.copy_from(&v);
                        }
                        i += 1;
                    });
                    l
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                let analytic = grads[pi][j] as f64;
                assert!(
                    (numeric - analytic).abs() <= 2e-3 + 3e-2 * analytic.abs(),
                    "{position} param {pi}[{j}]: finite difference {numeric} vs backward {analytic}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 3 * 20, "checked only {checked} entries");
    }
}

#[test]
fn grouped_sum_is_multi_head_attention_at_g_1_and_sums_the_group_queries_otherwise() {
    use gptlab::model::AttentionKind;
    let dev = Cpu::default();
    let (b, t, c) = (2, 6, 24);
    for (h, hkv) in [(4, 4), (4, 2), (6, 1), (6, 3)] {
        let shape = AttnShape {
            n_embd: c,
            n_head: h,
            n_kv_head: hkv,
            head_dim: None,
        };
        let standard = CausalSelfAttention::new(&dev, &mut rng(12), "a", shape, 0.3);
        let grouped =
            CausalSelfAttention::new(&dev, &mut rng(12), "a", shape, 0.3).with_kind(AttentionKind::GroupedSum);
        let mut r = rng(13);
        let x: Vec<f32> = (0..b * t * c).map(|_| r.gen_range(-1.0..1.0)).collect();
        let rope = Rope::new(c / h, t, 10_000.0);
        let run = |a: &CausalSelfAttention<Cpu>, positions: &Positions<Cpu>| {
            a.forward(
                dev.tensor_from_vec(x.clone(), (b * t, c)),
                b,
                t,
                positions,
                &mut Dropout::eval(),
                None,
            )
            .as_vec()
        };
        let got = run(&grouped, &Positions::Rope(rope.clone()));
        let want = attention_by_hand(&grouped, &x, b, t, Some(&rope), false);
        let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max);
        assert!(err < 1e-4, "H={h} Hkv={hkv}: grouped_sum vs reference, max error {err}");
        let want = attention_by_hand(&grouped, &x, b, t, None, true);
        let err = run(&grouped, &Positions::Alibi)
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f32::max);
        assert!(
            err < 1e-4,
            "H={h} Hkv={hkv}: grouped_sum with ALiBi vs reference, max error {err}"
        );
        let diff = got
            .iter()
            .zip(run(&standard, &Positions::Rope(rope.clone())))
            .map(|(g, s)| (g - s).abs())
            .fold(0.0, f32::max);
        if h == hkv {
            assert!(
                diff < 1e-6,
                "g = 1: grouped_sum should be multi-head attention, differs by {diff}"
            );
        } else {
            assert!(
                diff > 1e-4,
                "H={h} Hkv={hkv}: grouped_sum should differ from standard GQA"
            );
        }
    }
}

#[test]
fn alibi_slopes_follow_the_paper_for_powers_of_two_and_other_head_counts() {
    let eight = gptlab::model::alibi_slopes(8);
    let want: Vec<f64> = (1..=8).map(|i| 1.0 / f64::from(1u32 << i)).collect(); // 1/2, 1/4, …, 1/256
    assert_eq!(eight, want);
    for h in [1, 2, 3, 4, 6] {
        let got: Vec<f32> = gptlab::model::alibi_slopes(h).iter().map(|&m| m as f32).collect();
        assert_eq!(got, alibi_slopes_by_hand(h), "{h} heads");
    }
}

#[test]
fn alibi_bias_matrix_equals_a_scalar_loop() {
    let dev = Cpu::default();
    let (h, t) = (6, 9);
    let mask = gptlab::model::alibi_mask(&dev, h, t).as_vec();
    let slopes = alibi_slopes_by_hand(h);
    for hi in 0..h {
        for i in 0..t {
            for j in 0..t {
                let got = mask[(hi * t + i) * t + j];
                if j > i {
                    assert_eq!(got, f32::NEG_INFINITY, "head {hi} ({i}, {j}) must be masked");
                } else {
                    let want = -slopes[hi] * (i - j) as f32;
                    assert!((got - want).abs() < 1e-6, "head {hi} ({i}, {j}): {got} vs {want}");
                }
            }
        }
    }
}
