//! One optimisation step and one evaluation, on any dfdx device.

use dfdx::prelude::*;

use super::adamw::{AdamW, clip_grad_norm};
use crate::data::Batch;
use crate::model::{Backend, Dropout, Float, Gpt, HasParams, Pass, host_vec};

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
    let grads = loss.backward();
    let mut host = vec![];
    model.visit(&mut |p| host.push(host_vec(&grads.get(&p.value))));
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
    let (loss, mut grads) = loss_and_grads(model, batch, drop);
    let grad_norm = clip_grad_norm(&mut grads, grad_clip);
    if loss.is_finite() && grad_norm.is_finite() {
        opt.update(model, &grads, lr);
    }
    StepStats { loss, grad_norm }
}

/// Mean loss over `batches` without dropout or gradients.
pub fn eval_loss<D: Backend>(model: &Gpt<D>, batches: &[Batch]) -> f32 {
    let mut total = 0.0;
    for batch in batches {
        let logits = model.eval_logits(&batch.inputs, batch.b, batch.t);
        total += model.loss(logits, &batch.targets).as_vec()[0];
    }
    total / batches.len().max(1) as f32
}
