//! The CPU's fused operations against the plain dfdx composition of the same maths.
//! Attention:
//! values and gradients for MHA, GQA and MQA over several shapes (odd sizes, T = 1), and
//! gradients with dropout against finite differences.

mod common;

use common::fused::{assert_bits, assert_close, random};
use dfdx::prelude::*;
use gptlab::model::{
    ATTENTION_TILE, Backend, Dims, Dropout, cpu_backward, cpu_forward, reference_attention, reference_rotary,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A traced `(B, T, heads, hd)` tensor.
type Heads4 = Tensor<(usize, usize, usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>;

/// `Σ y ⊙ w` and its gradients with respect to q, k and v, through `attend`.
fn grads_through(
    attend: impl Fn(
        Tensor<(usize, usize, usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>,
        Tensor<(usize, usize, usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>,
        Tensor<(usize, usize, usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>,
    ) -> Tensor<(usize, usize, usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>,
    q: &Tensor<(usize, usize, usize, usize), f32, Cpu>,
    k: &Tensor<(usize, usize, usize, usize), f32, Cpu>,
    v: &Tensor<(usize, usize, usize, usize), f32, Cpu>,
    w: &Tensor<(usize, usize, usize, usize), f32, Cpu>,
) -> (Vec<f32>, [Vec<f32>; 3]) {
    let (_, tape) = q.clone().leaky_traced().split_tape();
    let qt = q.clone().put_tape(tape);
    let kt = k.retaped::<OwnedTape<f32, Cpu>>();
    let vt = v.retaped::<OwnedTape<f32, Cpu>>();
    let y = attend(qt, kt, vt);
    let values = y.retaped::<NoneTape>().as_vec();
    let grads = (y * w.clone()).sum().backward();
    (
        values,
        [grads.get(q).as_vec(), grads.get(k).as_vec(), grads.get(v).as_vec()],
    )
}

#[test]
fn fused_equals_the_composition_in_values_and_gradients() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(7);
    for (b, t, h, hkv, hd) in [
        (2, 7, 4, 4, 8),
        (3, 13, 6, 2, 4),
        (1, 1, 3, 1, 5),
        (2, 33, 6, 3, 6),
        (1, 9, 4, 1, 3),
        // Several of the widest column chunks of the attention's tiles, on and off their
        // boundary, and heads as wide as one chunk, or a chunk, an 8 and 3 more.
        (1, 4 * ATTENTION_TILE, 2, 1, 8),
        (2, 4 * ATTENTION_TILE + 1, 4, 2, ATTENTION_TILE),
        (1, 4 * ATTENTION_TILE + 22, 2, 2, ATTENTION_TILE + 11),
    ] {
        let q = dev.tensor_from_vec(random(&mut r, b * t * h * hd), (b, t, h, hd));
        let k = dev.tensor_from_vec(random(&mut r, b * t * hkv * hd), (b, t, hkv, hd));
        let v = dev.tensor_from_vec(random(&mut r, b * t * hkv * hd), (b, t, hkv, hd));
        let w = dev.tensor_from_vec(random(&mut r, b * t * h * hd), (b, t, h, hd));
        for alibi in [false, true] {
            let (fused_y, fused_g) = grads_through(
                |q, k, v| Cpu::causal_attention(q, k, v, alibi, &mut Dropout::eval()),
                &q,
                &k,
                &v,
                &w,
            );
            let (ref_y, ref_g) = grads_through(
                |q, k, v| reference_attention(q, k, v, alibi, &mut Dropout::eval()),
                &q,
                &k,
                &v,
                &w,
            );
            let case = format!("attention (B={b} T={t} H={h} Hkv={hkv} hd={hd} alibi={alibi})");
            let got = [vec![fused_y], fused_g.to_vec()].concat();
            let want = [vec![ref_y], ref_g.to_vec()].concat();
            assert_close(&case, &["y", "dq", "dk", "dv"], &got, &want, 1e-5, 0.0);
            // `q` read again after the attention: its gradient exists when the attention's
            // backward pass runs, which must add into it (otherwise it writes the first).
            let then_q = |attend: &dyn Fn(Heads4, Heads4, Heads4) -> Heads4| {
                grads_through(|q, k, v| q.retaped() + attend(q, k, v), &q, &k, &v, &w).1
            };
            let fused_g = then_q(&|q, k, v| Cpu::causal_attention(q, k, v, alibi, &mut Dropout::eval()));
            let ref_g = then_q(&|q, k, v| reference_attention(q, k, v, alibi, &mut Dropout::eval()));
            let case = format!("{case}, q read again");
            assert_close(&case, &["dq", "dk", "dv"], &fused_g, &ref_g, 1e-5, 0.0);
        }
    }
}

#[test]
fn fused_gradients_with_dropout_agree_with_finite_differences() {
    // T crosses a boundary of the attention's column chunks (and of its 6- and 8-row tiles);
    // with and without ALiBi.
    for alibi in [false, true] {
        let d = Dims {
            b: 2,
            t: ATTENTION_TILE + 6,
            h: 4,
            hkv: 2,
            hd: 4,
            alibi,
            p: 0.3,
            seed: 11,
            first_window: 0,
        };
        check_fused_gradients(&d);
    }
}

/// The fused attention's gradients of `Σ y ⊙ w` against central finite differences, at `d`.
fn check_fused_gradients(d: &Dims) {
    let mut r = ChaCha8Rng::seed_from_u64(3);
    let d = *d;
    let q = random(&mut r, d.b * d.t * d.h * d.hd);
    let k = random(&mut r, d.b * d.t * d.hkv * d.hd);
    let v = random(&mut r, d.b * d.t * d.hkv * d.hd);
    let w = random(&mut r, q.len());
    let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
        cpu_forward(&d, q, k, v)
            .0
            .iter()
            .zip(&w)
            .map(|(y, w)| (*y as f64) * (*w as f64))
            .sum()
    };
    let (_, lse) = cpu_forward(&d, &q, &k, &v);
    // The backward pass adds into the buffers it is given: start them away from zero.
    let base = 0.25f32;
    let (mut dq, mut dk, mut dv) = (vec![base; q.len()], vec![base; k.len()], vec![base; v.len()]);
    cpu_backward(&d, [&q, &k, &v], &lse, &w, [&mut dq, &mut dk, &mut dv]);
    let eps = 1e-2f32;
    for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
        for idx in (0..grad.len()).step_by(5) {
            let mut inputs = [q.clone(), k.clone(), v.clone()];
            inputs[which][idx] += eps;
            let up = loss(&inputs[0], &inputs[1], &inputs[2]);
            inputs[which][idx] -= 2.0 * eps;
            let down = loss(&inputs[0], &inputs[1], &inputs[2]);
            let numeric = (up - down) / (2.0 * eps as f64);
            let analytic = (grad[idx] - base) as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                "alibi={} input {which}[{idx}]: {numeric} vs {analytic}",
                d.alibi
            );
        }
    }
    // Dropout zeroes about p of the weights: the output differs from p = 0.
    let no_drop = Dims { p: 0.0, ..d };
    assert_ne!(cpu_forward(&d, &q, &k, &v).0, cpu_forward(&no_drop, &q, &k, &v).0);
}

#[test]
fn fused_gelu_equals_dfdx_fast_gelu_in_values_and_gradients() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(5);
    for n in [1usize, 7, 16_384, 16_384 * 2 + 3] {
        let mut x = random(&mut r, n);
        x.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v *= 1.0 + (i % 4) as f32 * 2.0);
        if n > 3 {
            x[0] = 0.0;
            x[1] = 30.0;
            x[2] = -30.0;
        }
        let w = random(&mut r, n);
        let xt = dev.tensor_from_vec(x.clone(), (n,));
        let wt = dev.tensor_from_vec(w, (n,));
        let run = |fused: bool| {
            let traced = xt.clone().leaky_traced();
            let y = if fused { Cpu::gelu(traced) } else { traced.fast_gelu() };
            let values = y.retaped::<NoneTape>().as_vec();
            let g = (y * wt.clone()).sum().backward();
            (values, g.get(&xt).as_vec())
        };
        let ((fy, fg), (ry, rg)) = (run(true), run(false));
        assert_close(&format!("gelu (n={n})"), &["y", "dx"], &[fy, fg], &[ry, rg], 2e-6, 2e-5);
    }
}

/// Values and gradients of `Σ f(x, a, b) ⊙ w` with respect to `x (N, C)`, `a (C,)`, `b (C,)`.
fn row_op_grads(
    f: impl Fn(
        Tensor<(usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>,
        Tensor<(usize,), f32, Cpu, OwnedTape<f32, Cpu>>,
        Tensor<(usize,), f32, Cpu, OwnedTape<f32, Cpu>>,
    ) -> Tensor<(usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>,
    x: &Tensor<(usize, usize), f32, Cpu>,
    a: &Tensor<(usize,), f32, Cpu>,
    b: &Tensor<(usize,), f32, Cpu>,
    w: &Tensor<(usize, usize), f32, Cpu>,
) -> Vec<Vec<f32>> {
    let (_, tape) = x.clone().leaky_traced().split_tape();
    let y = f(x.clone().put_tape(tape), a.retaped(), b.retaped());
    let values = y.retaped::<NoneTape>().as_vec();
    let g = (y * w.clone()).sum().backward();
    vec![values, g.get(x).as_vec(), g.get(a).as_vec(), g.get(b).as_vec()]
}

#[test]
fn fused_layer_norm_and_bias_equal_the_composition() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(8);
    for (n, c) in [(1, 1), (3, 7), (130, 192), (5, 1), (600, 33)] {
        let mut xv = random(&mut r, n * c);
        xv.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = *v * 3.0 + (i % c) as f32 * 0.5);
        let x = dev.tensor_from_vec(xv, (n, c));
        let a = dev.tensor_from_vec(random(&mut r, c), (c,));
        let b = dev.tensor_from_vec(random(&mut r, c), (c,));
        let w = dev.tensor_from_vec(random(&mut r, n * c), (n, c));
        let fused = row_op_grads(|x, a, b| Cpu::layer_norm(x, a, b, 1e-5), &x, &a, &b, &w);
        let reference = row_op_grads(
            |x, a, b| {
                let s = *x.shape();
                x.normalize::<Axis<1>>(1e-5) * a.broadcast_like::<_, Axis<0>>(&s) + b.broadcast_like::<_, Axis<0>>(&s)
            },
            &x,
            &a,
            &b,
            &w,
        );
        let biased = row_op_grads(|x, a, b| Cpu::add_bias(Cpu::add_bias(x, a), b), &x, &a, &b, &w);
        let biased_ref = row_op_grads(
            |x, a, b| {
                let s = *x.shape();
                x + a.broadcast_like::<_, Axis<0>>(&s) + b.broadcast_like::<_, Axis<0>>(&s)
            },
            &x,
            &a,
            &b,
            &w,
        );
        for (what, (f, rf)) in [
            ("layer_norm", (&fused, &reference)),
            ("add_bias", (&biased, &biased_ref)),
        ] {
            let case = format!("{what} (N={n}, C={c})");
            assert_close(&case, &["y", "dx", "da", "db"], f, rf, 1e-4, 1e-4);
        }
    }
}

#[test]
fn fused_rotary_equals_the_composition_in_values_and_gradients() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(9);
    for (b, t, nh, hd, offset) in [(2, 5, 3, 4, 0), (1, 7, 1, 2, 3), (3, 16, 6, 32, 10)] {
        let x = dev.tensor_from_vec(random(&mut r, b * t * nh * hd), (b, t, nh, hd));
        let w = dev.tensor_from_vec(random(&mut r, b * t * nh * hd), (b, t, nh, hd));
        // The tables of positions offset..offset + t, from the closed form.
        let angle = |pos: usize, i: usize| (pos as f64) * 10_000f64.powf(-2.0 * (i % (hd / 2)) as f64 / hd as f64);
        let cos: Vec<f32> = (0..t)
            .flat_map(|p| (0..hd).map(move |i| angle(p + offset, i).cos() as f32))
            .collect();
        let sin: Vec<f32> = (0..t)
            .flat_map(|p| (0..hd).map(move |i| angle(p + offset, i).sin() as f32))
            .collect();
        let run = |fused: bool| {
            let (_, tape) = x.clone().leaky_traced().split_tape();
            let xt = x.clone().put_tape(tape);
            let y = if fused {
                Cpu::rotary(xt, &cos, &sin)
            } else {
                reference_rotary(xt, &cos, &sin)
            };
            let values = y.retaped::<NoneTape>().as_vec();
            let g = (y * w.clone()).sum().backward();
            (values, g.get(&x).as_vec())
        };
        let ((fy, fg), (ry, rg)) = (run(true), run(false));
        let case = format!("rotary (B={b} T={t} nh={nh} hd={hd})");
        assert_close(&case, &["y", "dx"], &[fy, fg], &[ry, rg], 1e-5, 0.0);
    }
}

#[test]
fn fused_linear_equals_the_composition_in_values_and_gradients() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(10);
    for (n, d_in, d_out, bias) in [
        (1, 1, 1, true),
        (7, 5, 3, true),
        (130, 33, 65, false),
        (257, 192, 200, true),
    ] {
        let x = dev.tensor_from_vec(random(&mut r, n * d_in), (n, d_in));
        let w = dev.tensor_from_vec(random(&mut r, d_in * d_out), (d_in, d_out));
        let b = dev.tensor_from_vec(random(&mut r, d_out), (d_out,));
        let wy = dev.tensor_from_vec(random(&mut r, n * d_out), (n, d_out));
        let run = |fused: bool| {
            let (_, tape) = x.clone().leaky_traced().split_tape();
            let xt = x.clone().put_tape(tape);
            let (wt, bt) = (w.retaped::<OwnedTape<f32, Cpu>>(), b.retaped::<OwnedTape<f32, Cpu>>());
            let y = if fused {
                Cpu::linear(xt, wt, bias.then_some(bt))
            } else {
                let y = xt.matmul(wt);
                if bias {
                    y + bt.broadcast_like::<_, Axis<0>>(&(n, d_out))
                } else {
                    y
                }
            };
            let values = y.retaped::<NoneTape>().as_vec();
            let g = (y * wy.clone()).sum().backward();
            let db = if bias { g.get(&b).as_vec() } else { vec![] };
            [values, g.get(&x).as_vec(), g.get(&w).as_vec(), db]
        };
        let case = format!("linear (N={n}, in={d_in}, out={d_out}, bias={bias})");
        assert_close(&case, &["y", "dx", "dw", "db"], &run(true), &run(false), 1e-4, 1e-4);
    }
}

#[test]
fn fused_projections_of_one_input_equal_separate_compositions() {
    // The query/key/value projections share one input: its gradient sums all three.
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(11);
    for (n, d_in, outs, bias) in [
        (1, 1, [1, 1, 1], true),
        (9, 7, [7, 3, 3], true),
        (130, 33, [33, 11, 11], false),
    ] {
        let x = dev.tensor_from_vec(random(&mut r, n * d_in), (n, d_in));
        let ws = outs.map(|d_out| dev.tensor_from_vec(random(&mut r, d_in * d_out), (d_in, d_out)));
        let bs = outs.map(|d_out| dev.tensor_from_vec(random(&mut r, d_out), (d_out,)));
        let wys = outs.map(|d_out| dev.tensor_from_vec(random(&mut r, n * d_out), (n, d_out)));
        let run = |fused: bool| {
            let (_, tape) = x.clone().leaky_traced().split_tape();
            let xt = x.clone().put_tape(tape);
            let parts: [_; 3] = std::array::from_fn(|i| {
                let b = bs[i].retaped::<OwnedTape<f32, Cpu>>();
                (ws[i].retaped::<OwnedTape<f32, Cpu>>(), bias.then_some(b))
            });
            let ys = if fused {
                Cpu::linears(xt, parts)
            } else {
                let mut parts = parts.into_iter();
                let mut composed = |x: Tensor<(usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>| {
                    let (w, b) = parts.next().unwrap();
                    let y = x.matmul(w);
                    match b {
                        Some(b) => {
                            let shape = *y.shape();
                            y + b.broadcast_like::<_, Axis<0>>(&shape)
                        }
                        None => y,
                    }
                };
                let (x1, x2) = (xt.retaped(), xt.retaped());
                [composed(xt), composed(x1), composed(x2)]
            };
            let mut values: Vec<Vec<f32>> = ys.iter().map(|y| y.retaped::<NoneTape>().as_vec()).collect();
            let [y0, y1, y2] = ys;
            let loss = (y0 * wys[0].clone()).sum() + (y1 * wys[1].clone()).sum() + (y2 * wys[2].clone()).sum();
            let g = loss.backward();
            values.push(g.get(&x).as_vec());
            values.extend(ws.iter().map(|w| g.get(w).as_vec()));
            if bias {
                values.extend(bs.iter().map(|b| g.get(b).as_vec()));
            }
            values
        };
        let case = format!("linears (N={n}, in={d_in}, out={outs:?}, bias={bias})");
        let names = ["y0", "y1", "y2", "dx", "dw0", "dw1", "dw2", "db0", "db1", "db2"];
        assert_close(&case, &names[..run(true).len()], &run(true), &run(false), 1e-4, 1e-4);
    }
}

#[test]
fn fused_tied_head_equals_the_composition_in_values_and_gradients() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(12);
    for (n, d_in, d_out) in [(1, 1, 1), (7, 5, 3), (130, 33, 65), (257, 192, 300)] {
        let x = dev.tensor_from_vec(random(&mut r, n * d_in), (n, d_in));
        let w = dev.tensor_from_vec(random(&mut r, d_out * d_in), (d_out, d_in));
        let wy = dev.tensor_from_vec(random(&mut r, n * d_out), (n, d_out));
        let wm = dev.tensor_from_vec(random(&mut r, d_out * d_in), (d_out, d_in));
        let run = |fused: bool| {
            let (_, tape) = x.clone().leaky_traced().split_tape();
            let xt = x.clone().put_tape(tape);
            let wt = w.retaped::<OwnedTape<f32, Cpu>>();
            let y = if fused {
                Cpu::linear_transposed(xt, wt)
            } else {
                xt.matmul(wt.permute())
            };
            let values = y.retaped::<NoneTape>().as_vec();
            // A second use of `w` after the head (as the embedding is, on the tape's reverse
            // order): its gradient is written first, and the head's must add to it.
            let other_use = (w.retaped::<OwnedTape<f32, Cpu>>() * wm.clone()).sum();
            let g = ((y * wy.clone()).sum() + other_use).backward();
            [values, g.get(&x).as_vec(), g.get(&w).as_vec()]
        };
        let case = format!("linear_transposed (N={n}, in={d_in}, out={d_out})");
        assert_close(&case, &["y", "dx", "dw"], &run(true), &run(false), 1e-4, 1e-4);
    }
}

#[test]
fn fused_cross_entropy_equals_the_composition_in_values_and_gradients() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(13);
    for (n, v) in [(1, 1), (5, 3), (130, 65), (37, 2000)] {
        let mut xv = random(&mut r, n * v);
        xv.iter_mut().for_each(|x| *x *= 8.0); // confident rows as well as flat ones
        let x = dev.tensor_from_vec(xv, (n, v));
        let targets: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % v).collect();
        let wm = dev.tensor_from_vec(random(&mut r, n * v), (n, v));
        let loss_of = |fused: bool| {
            let (_, tape) = x.clone().leaky_traced().split_tape();
            let xt = x.clone().put_tape(tape);
            if fused {
                Cpu::cross_entropy(xt, &targets)
            } else {
                let t = dev.tensor_from_vec(targets.clone(), (n,));
                xt.log_softmax::<Axis<1>>().select(t).mean().negate()
            }
        };
        let run = |fused: bool| {
            let loss = loss_of(fused);
            let value = vec![loss.retaped::<NoneTape>().array()];
            // A second use of the logits after the loss: its gradient is written first, and
            // the loss's must add to it. Alone, the loss's gradient is the logits' first.
            let other_use = (x.retaped::<OwnedTape<f32, Cpu>>() * wm.clone()).sum();
            let g = (loss * 3.0 + other_use).backward();
            [value, g.get(&x).as_vec(), loss_of(fused).backward().get(&x).as_vec()]
        };
        let case = format!("cross_entropy (N={n}, V={v})");
        assert_close(&case, &["loss", "dx", "dx alone"], &run(true), &run(false), 1e-5, 1e-5);
    }
}

#[test]
fn the_loss_takes_logits_nothing_else_holds_and_gives_the_bits_of_a_copy() {
    let dev = Cpu::default();
    // The storage moves out, without a copy, only when this tensor alone holds it.
    let t = dev.tensor_from_vec(vec![1.0f32, 2.0, 3.0, 4.0], (2, 2));
    let at = t.storage().as_ptr();
    let owned = t
        .into_storage()
        .expect("a tensor nothing else holds gives up its storage");
    assert_eq!((owned.as_ptr(), owned), (at, vec![1.0, 2.0, 3.0, 4.0]));
    let t = dev.tensor_from_vec(vec![1.0f32, 2.0], (1, 2));
    let held = t.clone();
    assert!(t.into_storage().is_err(), "a storage held twice is not taken");
    assert!(
        held.permute::<_, Axes2<1, 0>>().into_storage().is_err(),
        "nor a permuted view's"
    );
    // The loss on logits of their own (a new tensor, `x + 0`) and on logits the caller still
    // holds (copied): the same loss and gradient, to the bit.
    let mut r = ChaCha8Rng::seed_from_u64(17);
    let (n, v) = (37, 300);
    let x = dev.tensor_from_vec(random(&mut r, n * v), (n, v));
    let targets: Vec<usize> = (0..n).map(|i| (i * 11 + 5) % v).collect();
    let run = |own: bool| {
        let xt = x.retaped::<OwnedTape<f32, Cpu>>();
        let loss = if own {
            Cpu::cross_entropy(xt + 0.0, &targets)
        } else {
            Cpu::cross_entropy(xt, &targets)
        };
        let value = loss.retaped::<NoneTape>().array();
        let g = loss.backward();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        (value.to_bits(), bits(&g.get(&x).as_vec()))
    };
    assert_eq!(run(true), run(false));
}

#[test]
fn fused_residual_dropout_matches_its_definition() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(11);
    for (n, c, p) in [(1, 1, 0.0), (5, 7, 0.0), (300, 190, 0.1), (33, 1000, 0.5)] {
        let skip = dev.tensor_from_vec(random(&mut r, n * c), (n, c));
        let x = dev.tensor_from_vec(random(&mut r, n * c), (n, c));
        let w = dev.tensor_from_vec(random(&mut r, n * c), (n, c));
        let run = |seed: u64| {
            let (_, tape) = skip.clone().leaky_traced().split_tape();
            let mut drop = Dropout::train(p, gptlab::seed::stream(seed, gptlab::seed::Stream::Dropout, 0));
            let y = Cpu::residual(skip.clone().put_tape(tape), x.retaped(), &mut drop);
            let values = y.retaped::<NoneTape>().as_vec();
            let g = (y * w.clone()).sum().backward();
            (values, g.get(&skip).as_vec(), g.get(&x).as_vec())
        };
        let (y, dskip, dx) = run(3);
        assert_eq!(run(3).0, y, "the same seed gives the same mask");
        let (sv, xv, wv) = (skip.as_vec(), x.as_vec(), w.as_vec());
        let mut dropped = 0;
        for i in 0..n * c {
            // Each element either kept and scaled, or dropped; the gradient uses the same mask.
            let branch = y[i] - sv[i];
            let kept = (branch - xv[i] / (1.0 - p)).abs() < 1e-5;
            assert!(
                kept || branch.abs() < 1e-6,
                "element {i}: branch {branch} of x {}",
                xv[i]
            );
            dropped += usize::from(!kept);
            let factor = if kept { 1.0 / (1.0 - p) } else { 0.0 };
            assert!((dx[i] - wv[i] * factor).abs() < 1e-5, "dx at {i}");
            assert!((dskip[i] - wv[i]).abs() < 1e-6, "dskip at {i}");
        }
        let rate = dropped as f32 / (n * c) as f32;
        assert!((rate - p).abs() < 0.02, "drop rate {rate} for p {p}");
        if p > 0.0 {
            assert_ne!(run(4).0, y, "another seed gives another mask");
        }
    }
}

#[test]
fn an_input_read_by_two_fused_ops_gets_both_gradient_terms() {
    // The first gradient term of an input is written as its gradient, the next added into it:
    // `x` is the skip of a residual whose branch is an MLP of `x`, and both arguments of a
    // dropout residual.
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(16);
    let (n, c, hidden, p) = (300, 24, 96, 0.3);
    let x = dev.tensor_from_vec(random(&mut r, n * c), (n, c));
    let w1 = dev.tensor_from_vec(random(&mut r, c * hidden), (c, hidden));
    let w2 = dev.tensor_from_vec(random(&mut r, hidden * c), (hidden, c));
    let wy = dev.tensor_from_vec(random(&mut r, n * c), (n, c));
    let through_mlp = |fused: bool| {
        let xt = x.clone().leaky_traced();
        let (w1t, w2t) = (w1.retaped::<OwnedTape<f32, Cpu>>(), w2.retaped::<OwnedTape<f32, Cpu>>());
        let y = if fused {
            let m = Cpu::mlp_gelu(xt.retaped(), w1t, None, w2t, None);
            Cpu::residual(xt, m, &mut Dropout::eval())
        } else {
            xt.retaped() + xt.matmul(w1t).fast_gelu().matmul(w2t)
        };
        let g = (y * wy.clone()).sum().backward();
        vec![g.get(&x).as_vec(), g.get(&w1).as_vec()]
    };
    let case = "x + mlp(x)";
    assert_close(
        case,
        &["dx", "dw1"],
        &through_mlp(true),
        &through_mlp(false),
        1e-4,
        1e-4,
    );

    let mut drop = Dropout::train(p, gptlab::seed::stream(1, gptlab::seed::Stream::Dropout, 0));
    let xt = x.clone().leaky_traced();
    let y = Cpu::residual(xt.retaped(), xt, &mut drop);
    let values = y.retaped::<NoneTape>().as_vec();
    let dx = (y * wy.clone()).sum().backward().get(&x).as_vec();
    let (xv, wv) = (x.as_vec(), wy.as_vec());
    for i in 0..n * c {
        let kept = (values[i] - xv[i] - xv[i] / (1.0 - p)).abs() < 1e-5;
        let want = wv[i] + if kept { wv[i] / (1.0 - p) } else { 0.0 };
        assert!(
            (dx[i] - want).abs() < 1e-5,
            "x + dropout(x): dx at {i} is {}, not {want}",
            dx[i]
        );
    }
}

#[test]
fn fused_ops_read_permuted_and_broadcast_inputs_in_logical_order() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(12);
    let x = dev.tensor_from_vec(random(&mut r, 6 * 5), (6, 5));
    let xt = x.clone().permute::<(usize, usize), Axes2<1, 0>>(); // (5, 6), not contiguous
    let row = dev.tensor_from_vec(random(&mut r, 6), (6,));
    let broadcast = row.clone().broadcast_like::<_, Axis<0>>(&(5, 6)); // (5, 6), stride 0
    let w = dev.tensor_from_vec(random(&mut r, 6 * 4), (6, 4));
    for input in [xt, broadcast] {
        let fused = Cpu::gelu(input.clone()).as_vec();
        let reference = input.clone().fast_gelu().as_vec();
        for (a, b) in fused.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-6, "gelu {a} vs {b}");
        }
        let fused = Cpu::linear(input.clone(), w.clone(), None).as_vec();
        let reference = input.matmul(w.clone()).as_vec();
        for (a, b) in fused.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-5, "linear {a} vs {b}");
        }
    }
}

#[test]
fn fused_gelu_mlp_equals_the_composition_in_values_and_gradients() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(13);
    for (n, c, hidden, bias) in [
        (1, 1, 1, true),
        (9, 5, 20, true),
        (130, 24, 96, false),
        (257, 48, 200, true),
    ] {
        let x = dev.tensor_from_vec(random(&mut r, n * c), (n, c));
        let w1 = dev.tensor_from_vec(random(&mut r, c * hidden), (c, hidden));
        let b1 = dev.tensor_from_vec(random(&mut r, hidden), (hidden,));
        let w2 = dev.tensor_from_vec(random(&mut r, hidden * c), (hidden, c));
        let b2 = dev.tensor_from_vec(random(&mut r, c), (c,));
        let wy = dev.tensor_from_vec(random(&mut r, n * c), (n, c));
        let run = |fused: bool| {
            let (_, tape) = x.clone().leaky_traced().split_tape();
            let xt = x.clone().put_tape(tape);
            let (w1t, w2t) = (w1.retaped::<OwnedTape<f32, Cpu>>(), w2.retaped::<OwnedTape<f32, Cpu>>());
            let (b1t, b2t) = (b1.retaped::<OwnedTape<f32, Cpu>>(), b2.retaped::<OwnedTape<f32, Cpu>>());
            let y = if fused {
                Cpu::mlp_gelu(xt, w1t, bias.then_some(b1t), w2t, bias.then_some(b2t))
            } else {
                let h = xt.matmul(w1t);
                let h = if bias {
                    h + b1t.broadcast_like::<_, Axis<0>>(&(n, hidden))
                } else {
                    h
                };
                let y = h.fast_gelu().matmul(w2t);
                if bias {
                    y + b2t.broadcast_like::<_, Axis<0>>(&(n, c))
                } else {
                    y
                }
            };
            let values = y.retaped::<NoneTape>().as_vec();
            let g = (y * wy.clone()).sum().backward();
            let biases = if bias {
                [g.get(&b1).as_vec(), g.get(&b2).as_vec()]
            } else {
                [vec![], vec![]]
            };
            [
                values,
                g.get(&x).as_vec(),
                g.get(&w1).as_vec(),
                g.get(&w2).as_vec(),
                biases[0].clone(),
                biases[1].clone(),
            ]
        };
        let case = format!("mlp (N={n}, C={c}, H={hidden}, bias={bias})");
        let parts = ["y", "dx", "dw1", "dw2", "db1", "db2"];
        assert_close(&case, &parts, &run(true), &run(false), 1e-4, 1e-4);
    }
}

#[test]
fn fused_embedding_equals_the_composition_to_the_bit() {
    let dev = Cpu::default();
    let mut r = ChaCha8Rng::seed_from_u64(14);
    // (vocabulary, positions, C, N, learned positions, dropout): repeated tokens throughout.
    for (v, l, c, n, learned, p) in [
        (5, 4, 3, 8, true, 0.0),
        (65, 16, 8, 48, true, 0.3),
        (50, 9, 7, 20, false, 0.2),
        (300, 128, 192, 1024, true, 0.1),
    ] {
        let wte = dev.tensor_from_vec(random(&mut r, v * c), (v, c));
        let wpe = dev.tensor_from_vec(random(&mut r, l * c), (l, c));
        let wy = dev.tensor_from_vec(random(&mut r, n * c), (n, c));
        let wm = dev.tensor_from_vec(random(&mut r, v * c), (v, c));
        let tokens: Vec<usize> = (0..n).map(|i| (i * 7 + i * i / 3) % v).collect();
        let positions: Vec<usize> = (0..n).map(|i| (i + 3) % l).collect();
        let run = |fused: bool| {
            let (_, tape) = wte.clone().leaky_traced().split_tape();
            let wt = wte.clone().put_tape(tape);
            let wp = learned.then(|| wpe.retaped::<OwnedTape<f32, Cpu>>());
            let mut drop = Dropout::train(p, gptlab::seed::stream(5, gptlab::seed::Stream::Dropout, 0));
            let y = if fused {
                Cpu::embed(wt, wp, &tokens, &positions, &mut drop)
            } else {
                let mut x = wt.gather(dev.tensor_from_vec(tokens.clone(), (n,)));
                if let Some(wp) = wp {
                    x = x + wp.gather(dev.tensor_from_vec(positions.clone(), (n,)));
                }
                drop.apply(x)
            };
            let values = y.retaped::<NoneTape>().as_vec();
            // A second use of the token table, as the tied head is: the embedding's gradient
            // must add to it, not replace it.
            let other_use = (wte.retaped::<OwnedTape<f32, Cpu>>() * wm.clone()).sum();
            let g = ((y * wy.clone()).sum() + other_use).backward();
            let dwpe = if learned { g.get(&wpe).as_vec() } else { Vec::new() };
            [values, g.get(&wte).as_vec(), dwpe]
        };
        let case = format!("embed (V={v}, L={l}, C={c}, N={n}, learned={learned}, p={p})");
        assert_bits(&case, &["y", "dwte", "dwpe"], &run(true), &run(false));
    }
}

#[test]
fn every_test_here_passes_on_every_path_the_cpu_runs() {
    common::rerun_on_other_paths("every_test_here_passes_on_every_path_the_cpu_runs");
}

#[test]
fn dropout_factors_are_one_chacha_word_per_element_on_every_path() {
    // The masks are drawn sixteen ChaCha blocks at a time by gptlab's own kernel, compiled for
    // each path: they must be `rand_chacha`'s words, one per element, each kept when it is at
    // least p·(2³²−1), from a position inside a block and across several pieces.
    use rand::Rng;
    for (p, n, skip) in [(0.1f32, 1000usize, 0usize), (0.5, 200_000, 5), (0.25, 70_001, 37)] {
        let mut rng = gptlab::seed::stream(9, gptlab::seed::Stream::Dropout, n as u64);
        for _ in 0..skip {
            rng.r#gen::<u32>();
        }
        let mut serial = rng.clone();
        let threshold = (p as f64 * u32::MAX as f64) as u32;
        let want: Vec<f32> = (0..n)
            .map(|_| {
                if serial.r#gen::<u32>() >= threshold {
                    1.0 / (1.0 - p)
                } else {
                    0.0
                }
            })
            .collect();
        let got = Dropout::train(p, rng).factors(n).expect("p > 0 draws a mask");
        let case = format!("p {p}, {n} elements after {skip} words");
        assert_bits(&case, &["factors"], &[got], &[want]);
    }
}

#[test]
fn gradient_buffers_start_at_zero_on_recycled_memory() {
    // The vendored dfdx writes a large zeroed buffer (each op input's gradient) on every
    // thread of the pool, in pieces: every element must be written, whatever the memory held
    // before, on one thread or several, for lengths that do and do not fill the last piece.
    let dev = Cpu::default();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for n in [10, 1 << 18, (1 << 18) + 3, 5 << 17] {
            drop(vec![f32::NAN; 2 * n]);
            let x = dev.tensor_from_vec(random(&mut ChaCha8Rng::seed_from_u64(n as u64), n), (n,));
            let grads = pool.install(|| (x.clone().leaky_traced() * 2.0).sum().backward());
            let g = grads.get(&x).as_vec();
            assert!(
                g.iter().all(|&v| v == 2.0),
                "gradient of Σ2x over {n} on {threads} threads"
            );
            let z: Tensor<(usize,), f32, Cpu> = pool.install(|| dev.zeros_like(&(n,)));
            assert!(z.as_vec().iter().all(|&v| v == 0.0), "zeros({n}) on {threads} threads");
        }
    }
}
