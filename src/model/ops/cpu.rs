//! The CPU's [`Backend`]: each operation as one fused kernel on plain slices with its own
//! backward pass, glued to dfdx's tape by [`fused`].
//!
//! A fused op takes its inputs off their tapes ([`untape`]), reads their elements in place
//! ([`Host`]: the tensors' own storage, through the accessor the vendored dfdx adds), makes one
//! output tensor and records one backward closure that reads the output's gradient and adds
//! into the inputs' gradients, or writes an input's first gradient term as its gradient
//! ([`add_grad`]). The closure keeps the inputs it needs as [`Host`]s and names the tensors
//! only by id (dfdx's `ghost`), so an activation is held once until the backward pass, and
//! never copied to be read.

use dfdx::prelude::*;
use dfdx::tensor::GhostTensor;
use rayon::prelude::*;

use super::cpu_attention::{Dims, cpu_backward, cpu_backward_new, cpu_forward};
use super::cpu_kernels::{
    CHUNK, add_column_sums, add_masked, cpu_embed, cpu_gelu, cpu_gelu_backward, cpu_gelu_with_grad, cpu_layer_norm,
    cpu_layer_norm_backward, cpu_linear, cpu_residual, cpu_rotary, cpu_rotary_backward, dropout_keep_mask, masked,
    mul_in_place, mul_in_place_adding_column_sums, par_to_vec, scatter_add_rows, zeros,
};
use super::cpu_loss::{cpu_cross_entropy, cpu_cross_entropy_backward, cpu_cross_entropy_grad};
use super::matmul::{View, gemm_par, gemm_par_new};
use super::{Affine, Backend, Dropout, Heads};
use crate::model::config::Float;
use crate::model::param::host_vec;

type Grads = Gradients<Float, Cpu>;
type CpuResult = Result<(), <Cpu as HasErr>::Err>;
type Mat<T> = Tensor<(usize, usize), Float, Cpu, T>;
type Vector<T> = Tensor<(usize,), Float, Cpu, T>;

/// A fused op's input as a row-major slice: the tensor's own storage, shared (not copied)
/// when the tensor is contiguous, as it is when a fused op made it; a permuted or broadcast
/// view is first made contiguous by the same-shape reshape. Clones share the storage, so a
/// backward pass that holds one keeps the input alive instead of a copy of it.
#[derive(Clone)]
struct Host<S: Shape> {
    tensor: Tensor<S, Float, Cpu>,
    shared: bool,
}

impl<S: Shape> Host<S> {
    fn of<T>(t: &Tensor<S, Float, Cpu, T>) -> Self {
        let tensor = t.retaped::<NoneTape>().reshape_like(t.shape());
        assert_eq!(tensor.storage().len(), t.shape().num_elements());
        let shared = std::ptr::eq(tensor.storage().as_ptr(), t.storage().as_ptr());
        Self { tensor, shared }
    }

    /// Bytes of the input's own storage this keeps alive: 0 for a copy, which an allocation
    /// count already sees as new memory.
    fn shared_bytes(&self) -> usize {
        if self.shared { std::mem::size_of_val(&**self) } else { 0 }
    }
}

impl<S: Shape> std::ops::Deref for Host<S> {
    type Target = [Float];
    fn deref(&self) -> &[Float] {
        self.tensor.storage()
    }
}

/// The elements of `t` in row-major order, as a buffer of the caller's own to write in
/// (copied on every core).
fn owned_data<S: Shape, T>(t: &Tensor<S, Float, Cpu, T>) -> Vec<Float> {
    par_to_vec(&Host::of(t))
}

/// Takes `x` off its tape, merging that tape into `tape`.
fn untape<S: Shape, T: Tape<Float, Cpu> + Merge<T>>(
    x: Tensor<S, Float, Cpu, T>,
    tape: &mut T,
) -> Tensor<S, Float, Cpu> {
    let (x, t) = x.split_tape();
    *tape = std::mem::take(tape).merge(t);
    x
}

/// The output of a fused op: `values` as a tensor of `shape` on `tape`, with `backward` recorded
/// when the tape owns gradients. `backward` receives the gradients and the output's gradient,
/// lent out of them (moved, not copied) so it can write the inputs' gradients while reading it.
fn fused<S: Shape, T: Tape<Float, Cpu>>(
    dev: &Cpu,
    values: Vec<Float>,
    shape: S,
    tape: T,
    backward: impl FnOnce(&mut Grads, &[Float]) -> CpuResult + 'static,
) -> Tensor<S, Float, Cpu, T> {
    fused_taking(dev, values, shape, tape, move |grads, gy| {
        let result = backward(grads, &gy);
        (result, Some(gy))
    })
}

/// [`fused`], with `backward` given the output's gradient to keep: it returns the buffer when
/// it did not keep it, which then goes back to being the output's gradient. (The ops that
/// read the output ran their backward passes before, so nothing reads its gradient again
/// during the backward pass; a kept one is gone from the gradients afterwards.)
fn fused_taking<S: Shape, T: Tape<Float, Cpu>>(
    dev: &Cpu,
    values: Vec<Float>,
    shape: S,
    mut tape: T,
    backward: impl FnOnce(&mut Grads, Vec<Float>) -> (CpuResult, Option<Vec<Float>>) + 'static,
) -> Tensor<S, Float, Cpu, T> {
    let out = dev.tensor_from_vec(values, shape);
    if T::OWNS_TAPE {
        // Named by id only: the output's memory goes when the ops that read it are done.
        let (out_ref, n) = (out.ghost(), shape.num_elements());
        tape.add_backward_op(move |grads| {
            // An output nothing read has a gradient of zeros.
            let gy = grads.take_existing(&out_ref).unwrap_or_else(|| zeros(n));
            let (result, gy) = backward(grads, gy);
            if let Some(gy) = gy {
                grads.insert_new(&out_ref, gy);
            }
            result
        });
    }
    out.put_tape(tape)
}

/// `acc += x`, in parallel.
fn add_into(acc: &mut [Float], x: &[Float]) {
    add_masked(acc, x, None, 0.0);
}

/// Adds a term into `t`'s gradient: `add` adds it into the gradient `t` has, or, when it has
/// none yet, the buffer `first` writes becomes it (with the same values: `0 + v` is `v`).
/// dfdx would hand out a zeroed buffer to add into: a pass over memory writing zeros and one
/// reading them back, for every activation's first gradient term.
fn add_grad<S: Shape>(
    grads: &mut Grads,
    t: &GhostTensor<S, Float, Cpu>,
    add: impl FnOnce(&mut [Float]),
    first: impl FnOnce() -> Vec<Float>,
) {
    match grads.existing_mut(t) {
        Some(g) => add(g),
        None => grads.insert_new(t, first()),
    }
}

/// Adds the product `lhs (m×k) · rhs (k×n)` into `t`'s gradient ([`add_grad`]).
fn add_product<S: Shape>(
    grads: &mut Grads,
    t: &GhostTensor<S, Float, Cpu>,
    (m, n, k): (usize, usize, usize),
    lhs: View<'_>,
    rhs: View<'_>,
) {
    add_grad(
        grads,
        t,
        |g| gemm_par(m, n, k, g, true, lhs, rhs, 1.0),
        || gemm_par_new(m, n, k, lhs, rhs),
    );
}

impl Backend for Cpu {
    fn isa() -> Option<crate::isa::Isa> {
        Some(crate::isa::current())
    }

    /// One copy on every core, out of the gradient's own buffer (dfdx's `get` is a serial
    /// clone, which the host copy then copied again: with AdamW's copies below, 5.8% of the
    /// `gpt2` case's samples, one core working).
    fn gradient_on_host(grads: &mut Gradients<Float, Self>, t: &Tensor<(usize,), Float, Self>) -> Vec<Float> {
        let n = t.shape().0;
        match grads.existing_mut(t) {
            Some(g) if g.len() == n => par_to_vec(g),
            _ => host_vec(&grads.get(t)),
        }
    }

    /// In place when nothing else holds the parameter's storage (a flat tensor stores its
    /// elements in order), else through a copy.
    fn update_on_host(t: &mut Tensor<(usize,), Float, Self>, f: &mut dyn FnMut(&mut [Float])) {
        if let Some(values) = t.storage_mut() {
            return f(values);
        }
        let mut host = par_to_vec(t.storage());
        f(&mut host);
        t.copy_from(&host);
    }

    /// Without a copy: at GPT-2's vocabulary a pass's logits are gigabytes (16,384 tokens:
    /// 3.3 GB), and a copy doubled what an evaluation needed beyond a training step's peak.
    fn row_losses(logits: Mat<NoneTape>, targets: &[usize]) -> Vec<f64> {
        super::cpu_loss::row_losses(&Host::of(&logits), logits.shape().1, targets)
    }

    /// One op for the whole MLP: the `(N, H)` hidden activations (4× the residual stream)
    /// stay in this op's own buffers instead of being copied in and out of dfdx tensors.
    fn mlp_gelu<T: Tape<Float, Self> + Merge<T>>(
        x: Mat<T>,
        w1: Mat<T>,
        b1: Option<Vector<T>>,
        w2: Mat<T>,
        b2: Option<Vector<T>>,
    ) -> Mat<T> {
        let (n, c) = *x.shape();
        let hidden = w1.shape().1;
        assert_eq!(*w1.shape(), (c, hidden), "mlp: W1 must be (C, H)");
        assert_eq!(*w2.shape(), (hidden, c), "mlp: W2 must be (H, C)");
        let mut tape = T::default();
        let (x, w1, w2) = (untape(x, &mut tape), untape(w1, &mut tape), untape(w2, &mut tape));
        let (b1, b2) = (b1.map(|b| untape(b, &mut tape)), b2.map(|b| untape(b, &mut tape)));
        let (xv, w1v, w2v) = (Host::of(&x), Host::of(&w1), Host::of(&w2));
        let (b1v, b2v) = (b1.as_ref().map(Host::of), b2.as_ref().map(Host::of));
        let dev = x.device().clone();
        let (x, w1, w2) = (x.ghost(), w1.ghost(), w2.ghost());
        let (b1, b2) = (b1.map(|b| b.ghost()), b2.map(|b| b.ghost()));
        // h = x·W₁ without its bias, which GELU adds on the way in; GELU's derivative at
        // h + b₁ then takes h's place (the backward pass needs nothing else of h).
        let mut gelu_grad = cpu_linear(&xv, &w1v, None, n, c, hidden); // h, (N, H)
        let a = cpu_gelu_with_grad(&mut gelu_grad, b1v.as_deref()); // (N, H)
        let y = cpu_linear(&a, &w2v, b2v.as_deref(), n, hidden, c); // (N, C)
        fused(&dev, y, (n, c), tape, move |grads, gy| {
            let gy_view = View::rows(gy, c);
            let a_t = View::rows(&a, hidden).t();
            add_product(grads, &w2, (hidden, c, n), a_t, gy_view);
            if let Some(b2) = &b2 {
                add_column_sums(gy, c, grads.get_or_alloc_mut(b2)?);
            }
            // dh = (gy W₂ᵀ) ⊙ gelu'(h), in `a`'s buffer: `a` is not read again, and the
            // product overwrites every element.
            let mut dh = a;
            gemm_par(n, hidden, c, &mut dh, false, gy_view, View::rows(&w2v, c).t(), 1.0);
            match &b1 {
                Some(b1) => mul_in_place_adding_column_sums(&mut dh, &gelu_grad, hidden, grads.get_or_alloc_mut(b1)?),
                None => mul_in_place(&mut dh, &gelu_grad),
            }
            let dh_view = View::rows(&dh, hidden);
            let x_t = View::rows(&xv, c).t();
            add_product(grads, &w1, (c, hidden, n), x_t, dh_view);
            let w1_t = View::rows(&w1v, hidden).t();
            add_product(grads, &x, (n, c, hidden), dh_view, w1_t);
            Ok(())
        })
    }

    fn residual<T: Tape<Float, Self> + Merge<T>>(skip: Mat<T>, x: Mat<T>, drop: &mut Dropout) -> Mat<T> {
        let shape = *x.shape();
        assert_eq!(*skip.shape(), shape, "residual: skip and branch shapes differ");
        let p = drop.p();
        let n = shape.0 * shape.1;
        let mask = (p > 0.0).then(|| dropout_keep_mask(drop.next_seed(), drop.first_element(n), n, p));
        let mut tape = T::default();
        let (skip, x) = (untape(skip, &mut tape), untape(x, &mut tape));
        let y = cpu_residual(&Host::of(&skip), &Host::of(&x), mask.as_deref(), p);
        let (dev, skip, x) = (x.device().clone(), skip.ghost(), x.ghost());
        fused_taking(&dev, y, shape, tape, move |grads, gy| {
            let mask = mask.as_deref();
            add_grad(grads, &x, |g| add_masked(g, &gy, mask, p), || masked(&gy, mask, p));
            // The skip's gradient term is `gy` itself: its first one is the output's buffer,
            // not a copy. (With skip = x the two terms add in the other order: the same sum.)
            let unkept = match grads.existing_mut(&skip) {
                Some(g) => {
                    add_into(g, &gy);
                    Some(gy)
                }
                None => {
                    grads.insert_new(&skip, gy);
                    None
                }
            };
            (Ok(()), unkept)
        })
    }

    /// One op for the gathers, the add and the dropout: one pass writes the output, and the
    /// backward pass adds straight into the tables' gradients.
    fn embed<T: Tape<Float, Self> + Merge<T>>(
        wte: Mat<T>,
        wpe: Option<Mat<T>>,
        tokens: &[usize],
        positions: &[usize],
        drop: &mut Dropout,
    ) -> Mat<T> {
        let (n, c) = (tokens.len(), wte.shape().1);
        assert_eq!(
            positions.len(),
            n,
            "embed: {n} tokens but {} positions",
            positions.len()
        );
        let mut tape = T::default();
        let wte = untape(wte, &mut tape);
        let wpe = wpe.map(|w| untape(w, &mut tape));
        let factors = drop.factors(n * c);
        let y = {
            let (tv, pv) = (Host::of(&wte), wpe.as_ref().map(Host::of));
            cpu_embed(
                &tv,
                tokens,
                pv.as_deref().map(|p| (p, positions)),
                factors.as_deref(),
                c,
            )
        };
        let (dev, wte, wpe) = (wte.device().clone(), wte.ghost(), wpe.map(|w| w.ghost()));
        let (tokens, positions) = (tokens.to_vec(), positions.to_vec());
        fused(&dev, y, (n, c), tape, move |grads, gy| {
            let factors = factors.as_deref();
            if let Some(wpe) = &wpe {
                scatter_add_rows(gy, factors, &positions, c, grads.get_or_alloc_mut(wpe)?);
            }
            scatter_add_rows(gy, factors, &tokens, c, grads.get_or_alloc_mut(&wte)?);
            Ok(())
        })
    }

    fn linear<T: Tape<Float, Self> + Merge<T>>(x: Mat<T>, w: Mat<T>, b: Option<Vector<T>>) -> Mat<T> {
        let [y] = Self::linears(x, [(w, b)]);
        y
    }

    /// One [`Host`] of `x` serves every projection, forward and backward: shared by their
    /// backward passes.
    fn linears<T: Tape<Float, Self> + Merge<T>, const K: usize>(x: Mat<T>, parts: [Affine<Self, T>; K]) -> [Mat<T>; K] {
        let (n, d_in) = *x.shape();
        let mut input_tape = T::default();
        let x = untape(x, &mut input_tape);
        let xv = Host::of(&x);
        let dev = x.device().clone();
        let mut input_tape = Some(input_tape);
        let mut parts = parts.into_iter();
        // Made in order, so their backward passes run in reverse order, as separate linears'.
        std::array::from_fn(|_| {
            let (w, b) = parts.next().expect("one part per output");
            let d_out = w.shape().1;
            assert_eq!(w.shape().0, d_in, "linear: x is (N, {d_in}) but w is {:?}", w.shape());
            let mut tape = input_tape.take().unwrap_or_default();
            let w = untape(w, &mut tape);
            let b = b.map(|b| untape(b, &mut tape));
            let (wv, bv) = (Host::of(&w), b.as_ref().map(Host::of));
            let y = cpu_linear(&xv, &wv, bv.as_deref(), n, d_in, d_out);
            let (x, w, b, xv) = (x.ghost(), w.ghost(), b.map(|b| b.ghost()), xv.clone());
            fused(&dev, y, (n, d_out), tape, move |grads, gy| {
                let (gy_view, w_t) = (View::rows(gy, d_out), View::rows(&wv, d_out).t());
                add_product(grads, &x, (n, d_in, d_out), gy_view, w_t);
                add_product(grads, &w, (d_in, d_out, n), View::rows(&xv, d_in).t(), gy_view);
                if let Some(b) = &b {
                    add_column_sums(gy, d_out, grads.get_or_alloc_mut(b)?);
                }
                Ok(())
            })
        })
    }

    /// On this process's instruction-set path like every other product (dfdx's own `matmul`
    /// would pick its gemm's widest kernels whatever `GPTLAB_ISA` says).
    fn linear_transposed<T: Tape<Float, Self> + Merge<T>>(x: Mat<T>, w: Mat<T>) -> Mat<T> {
        let (n, d_in) = *x.shape();
        let d_out = w.shape().0;
        assert_eq!(
            w.shape().1,
            d_in,
            "linear_transposed: x is (N, {d_in}) but w is {:?}",
            w.shape()
        );
        let mut tape = T::default();
        let (x, w) = (untape(x, &mut tape), untape(w, &mut tape));
        let (xv, wv) = (Host::of(&x), Host::of(&w));
        let y = gemm_par_new(n, d_out, d_in, View::rows(&xv, d_in), View::rows(&wv, d_in).t());
        let (dev, x, w) = (x.device().clone(), x.ghost(), w.ghost());
        fused(&dev, y, (n, d_out), tape, move |grads, gy| {
            let gy_view = View::rows(gy, d_out);
            // dx (N, in) += gy (N, out) · w (out, in); dw (out, in) += gyᵀ · x
            let w_view = View::rows(&wv, d_in);
            add_product(grads, &x, (n, d_in, d_out), gy_view, w_view);
            add_product(grads, &w, (d_out, d_in, n), gy_view.t(), View::rows(&xv, d_in));
            Ok(())
        })
    }

    /// The logits' copy becomes the softmax the backward pass reads; the logits tensor itself
    /// is only named (by id) in the backward, so its memory is freed after the forward.
    fn cross_entropy<T: Tape<Float, Self>>(logits: Mat<T>, targets: &[usize]) -> Tensor<(), Float, Self, T> {
        let (n, v) = *logits.shape();
        assert_eq!(
            targets.len(),
            n,
            "cross_entropy: {n} rows but {} targets",
            targets.len()
        );
        let (logits, tape) = logits.split_tape();
        let (dev, ghost) = (logits.device().clone(), logits.ghost());
        // The softmax overwrites the logits: their own buffer when nothing else holds it (a
        // 411 MB copy a step at a GPT-2 vocabulary, into memory faulted in afresh), else a copy.
        let owned = logits.into_storage().unwrap_or_else(|shared| owned_data(&shared));
        let (loss, probs) = cpu_cross_entropy(owned, v, targets);
        let (logits, targets) = (ghost, targets.to_vec());
        fused(&dev, vec![loss], (), tape, move |grads, gy| {
            match grads.existing_mut(&logits) {
                Some(dx) => cpu_cross_entropy_backward(&probs, v, &targets, gy[0], dx),
                None => grads.insert_new(&logits, cpu_cross_entropy_grad(probs, v, &targets, gy[0])),
            }
            Ok(())
        })
    }

    fn rotary<T: Tape<Float, Self> + Merge<T>>(x: Heads<Self, T>, cos: &[Float], sin: &[Float]) -> Heads<Self, T> {
        let shape = *x.shape();
        let (_, t, nh, hd) = shape;
        let (x, tape) = x.split_tape();
        let y = cpu_rotary(&Host::of(&x), cos, sin, t, nh, hd);
        let (cos, sin) = (cos.to_vec(), sin.to_vec());
        let (dev, x) = (x.device().clone(), x.ghost());
        fused(&dev, y, shape, tape, move |grads, gy| {
            cpu_rotary_backward(gy, &cos, &sin, t, nh, hd, grads.get_or_alloc_mut(&x)?);
            Ok(())
        })
    }

    fn add_bias<T: Tape<Float, Self> + Merge<T>>(x: Mat<T>, b: Vector<T>) -> Mat<T> {
        let shape = *x.shape();
        let c = shape.1;
        let mut tape = T::default();
        let (x, b) = (untape(x, &mut tape), untape(b, &mut tape));
        let bv = Host::of(&b);
        let mut y = owned_data(&x);
        y.par_chunks_mut(c * 64).for_each(|rows| {
            rows.chunks_mut(c)
                .for_each(|r| r.iter_mut().zip(bv.iter()).for_each(|(v, b)| *v += b))
        });
        let (dev, x, b) = (x.device().clone(), x.ghost(), b.ghost());
        fused(&dev, y, shape, tape, move |grads, gy| {
            let gx = grads.get_or_alloc_mut(&x)?;
            gx.par_chunks_mut(CHUNK)
                .zip(gy.par_chunks(CHUNK))
                .for_each(|(a, g)| a.iter_mut().zip(g).for_each(|(a, g)| *a += g));
            let gb = grads.get_or_alloc_mut(&b)?;
            for row in gy.chunks(c) {
                gb.iter_mut().zip(row).for_each(|(a, g)| *a += g);
            }
            Ok(())
        })
    }

    fn layer_norm<T: Tape<Float, Self> + Merge<T>>(x: Mat<T>, g: Vector<T>, b: Vector<T>, eps: f64) -> Mat<T> {
        let shape = *x.shape();
        let c = shape.1;
        let mut tape = T::default();
        let (x, g, b) = (untape(x, &mut tape), untape(g, &mut tape), untape(b, &mut tape));
        let (xv, gv, bv) = (Host::of(&x), Host::of(&g), Host::of(&b));
        let [y, xhat, inv_std] = cpu_layer_norm(&xv, &gv, &bv, c, eps as Float);
        let (dev, x, g, b) = (x.device().clone(), x.ghost(), g.ghost(), b.ghost());
        fused(&dev, y, shape, tape, move |grads, gy| {
            let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
            let dx = grads.get_or_alloc_mut(&x)?;
            cpu_layer_norm_backward(gy, &xhat, &inv_std, &gv, c, dx, &mut dg, &mut db);
            add_into(grads.get_or_alloc_mut(&g)?, &dg);
            add_into(grads.get_or_alloc_mut(&b)?, &db);
            Ok(())
        })
    }

    fn gelu<S: Shape, T: Tape<Float, Self>>(x: Tensor<S, Float, Self, T>) -> Tensor<S, Float, Self, T> {
        let shape = *x.shape();
        let (x, tape) = x.split_tape();
        let xv = Host::of(&x);
        let y = cpu_gelu(&xv);
        let (dev, x) = (x.device().clone(), x.ghost());
        fused(&dev, y, shape, tape, move |grads, gy| {
            cpu_gelu_backward(&xv, gy, grads.get_or_alloc_mut(&x)?);
            Ok(())
        })
    }

    fn causal_attention<T: Tape<Float, Self> + Merge<T>>(
        q: Heads<Self, T>,
        k: Heads<Self, T>,
        v: Heads<Self, T>,
        alibi: bool,
        drop: &mut Dropout,
    ) -> Heads<Self, T> {
        let shape = *q.shape();
        let (b, t, h, hd) = shape;
        let hkv = k.shape().2;
        let dims = Dims {
            b,
            t,
            h,
            hkv,
            hd,
            alibi,
            p: drop.p(),
            seed: drop.next_seed(),
            first_window: drop.first_window(),
        };
        let timer = crate::probe::Timer::start();
        let live_before = crate::probe::live_bytes();
        let mut tape = T::default();
        let (q, k, v) = (untape(q, &mut tape), untape(k, &mut tape), untape(v, &mut tape));
        let (qv, kv, vv) = (Host::of(&q), Host::of(&k), Host::of(&v));
        let held = qv.shared_bytes() + kv.shared_bytes() + vv.shared_bytes();
        let (y, lse) = cpu_forward(&dims, &qv, &kv, &vv);
        let (dev, q, k, v) = (q.device().clone(), q.ghost(), k.ghost(), v.ghost());
        let out = fused(&dev, y, shape, tape, move |grads, gy| {
            let timer = crate::probe::Timer::start();
            let inputs = [&q, &k, &v];
            if inputs.iter().all(|t| grads.existing_mut(*t).is_none()) {
                // Their first gradients (as in training: q, k and v are read by nothing else).
                let new = cpu_backward_new(&dims, [&qv, &kv, &vv], &lse, gy);
                inputs.into_iter().zip(new).for_each(|(t, g)| grads.insert_new(t, g));
            } else {
                // Lent out of `grads` (moved, not copied) so the kernel adds into all three.
                let mut lent = [Vec::new(), Vec::new(), Vec::new()];
                for (t, g) in inputs.into_iter().zip(&mut lent) {
                    *g = std::mem::take(&mut **grads.get_or_alloc_mut(t)?);
                }
                let [dq, dk, dv] = &mut lent;
                cpu_backward(&dims, [&qv, &kv, &vv], &lse, gy, [dq, dk, dv]);
                for (t, g) in inputs.into_iter().zip(lent) {
                    **grads.get_or_alloc_mut(t)? = g;
                }
            }
            timer.stop();
            Ok(())
        });
        if T::OWNS_TAPE {
            // What stays allocated until backward: q, k and v (held in place, or copies the
            // count sees), the row log-sum-exps, the output and the closure that holds them.
            if let (Some(before), Some(after)) = (live_before, crate::probe::live_bytes()) {
                crate::probe::add_saved_bytes(after.saturating_sub(before) + held);
            }
        }
        timer.stop();
        out
    }
}
