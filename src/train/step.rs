//! One optimisation step and one evaluation, on any dfdx device.

use dfdx::prelude::*;

use super::adamw::{AdamW, clip_grad_norm};
use crate::data::Batch;
use crate::model::{Backend, Dropout, Float, Gpt, HasParams, Pass};

/// What a training step measured.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Mean cross-entropy of the batch, before the update.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// Gradients of the mean cross-entropy on `batch`, as host vectors in parameter order, and the loss.
pub fn loss_and_grads<D: Backend>(model: &Gpt<D>, batch: &Batch, drop: &mut Dropout) -> (f32, Vec<Vec<Float>>) {
    // Pre-allocate every parameter's gradient so each one exists after backward, even for a
    // parameter the batch did not touch. dfdx frees non-leaf gradients only after backward
    // in any case, so keeping this set leaky costs no peak memory; it is dropped below.
    let mut grads = Gradients::leaky();
    model.visit(&mut |p| grads.try_alloc_for(&p.value).expect("allocating a gradient"));
    let (_, tape) = model.wte.value.clone().traced(grads).split_tape();

    let logits = model.forward(&batch.inputs, batch.b, batch.t, tape, Pass::Train(drop));
    let loss = model.loss(logits, &batch.targets);
    let value = loss.as_vec()[0];
    let mut grads = loss.backward();
    let mut host = vec![];
    model.visit(&mut |p| host.push(D::gradient_on_host(&mut grads, &p.value)));
    (value, host)
}

/// Forward, backward, clip and AdamW update. A non-finite loss or gradient leaves the
/// model untouched, so the caller can stop with the last good weights.
pub fn train_step<D: Backend>(
    model: &mut Gpt<D>,
    opt: &mut AdamW,
    batch: &Batch,
    lr: f64,
    grad_clip: f64,
    drop: &mut Dropout,
) -> StepStats {
    let (loss, grads) = loss_and_grads(model, batch, drop);
    update(model, opt, loss, grads, lr, grad_clip)
}

/// How a step draws its dropout masks: probability `p` from the step's stream `rng`.
#[derive(Clone)]
pub struct StepDropout {
    /// The probability.
    pub p: f32,
    /// The step's stream; every micro-batch starts from it.
    pub rng: rand_chacha::ChaCha8Rng,
}

/// [`train_step`] with gradient accumulation: the batch's windows in micro-batches of
/// `micro` (which divides `batch.b`), each forward and backward on its own, the gradients
/// and losses averaged with weight `micro / b`, then one clip and one update. Each window
/// gets the dropout masks it gets in the whole batch, so only float rounding tells the two
/// apart; with `micro = b` it is exactly [`train_step`].
pub fn train_step_accumulated<D: Backend>(
    model: &mut Gpt<D>,
    opt: &mut AdamW,
    batch: &Batch,
    micro: usize,
    lr: f64,
    grad_clip: f64,
    dropout: &StepDropout,
) -> StepStats {
    let b = batch.b;
    assert!(
        micro > 0 && b.is_multiple_of(micro),
        "micro-batch {micro} does not divide batch {b}"
    );
    let pass = |k: usize| {
        let mut drop = Dropout::train_part(dropout.p, dropout.rng.clone(), k * micro, micro, b);
        loss_and_grads(model, &batch.part(k, micro), &mut drop)
    };
    let (mut loss, mut grads) = pass(0);
    if micro < b {
        let w = micro as f32 / b as f32;
        loss *= w;
        grads.iter_mut().flatten().for_each(|g| *g *= w);
        for k in 1..b / micro {
            let (l, g) = pass(k);
            loss += l * w;
            for (acc, g) in grads.iter_mut().zip(&g) {
                acc.iter_mut().zip(g).for_each(|(a, g)| *a += g * w);
            }
        }
    }
    update(model, opt, loss, grads, lr, grad_clip)
}

/// Clip and update from a step's gradients.
fn update<D: Backend>(
    model: &mut Gpt<D>,
    opt: &mut AdamW,
    loss: f32,
    mut grads: Vec<Vec<Float>>,
    lr: f64,
    grad_clip: f64,
) -> StepStats {
    let grad_norm = clip_grad_norm(&mut grads, grad_clip);
    if loss.is_finite() && grad_norm.is_finite() {
        opt.update(model, &grads, lr);
    }
    StepStats { loss, grad_norm }
}

/// Mean loss over `batches` without dropout or gradients, each batch in forward passes of
/// `micro` windows (which divides its size) weighted as a training step weighs them, so that
/// evaluating never holds more windows at once than a training step does; with `micro` the
/// whole batch it is one pass per batch.
pub fn eval_loss<D: Backend>(model: &Gpt<D>, batches: &[Batch], micro: usize) -> f32 {
    let mut total = 0.0;
    for batch in batches {
        let parts = batch.b / micro;
        let loss_of = |k: usize| {
            let part = batch.part(k, micro);
            model
                .loss(model.eval_logits(&part.inputs, micro, part.t), &part.targets)
                .as_vec()[0]
        };
        total += match parts {
            1 => loss_of(0),
            _ => (0..parts).map(|k| loss_of(k) * (micro as f32 / batch.b as f32)).sum(),
        };
    }
    total / batches.len().max(1) as f32
}
