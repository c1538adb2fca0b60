//! The reference attention with the attention probe's clock around it, for devices that run
//! asynchronously (CUDA), and CUDA's [`Backend`] implementation that uses it.

use dfdx::prelude::*;

use super::{Dropout, Heads, reference_attention};
use crate::model::config::Float;

/// [`reference_attention`] with the attention probe's clock around its forward and backward
/// passes, for devices that run asynchronously: each reading waits for the device first.
/// The backward pass is timed by two marker operations on the tape, one recorded before the
/// attention's own operations (so it runs after their backward) and one after them.
pub fn timed_reference_attention<D: Device<Float> + Synchronize, T: Tape<Float, D> + Merge<T>>(
    q: Heads<D, T>,
    k: Heads<D, T>,
    v: Heads<D, T>,
    alibi: bool,
    drop: &mut Dropout,
) -> Heads<D, T> {
    if !crate::probe::attention_probe_enabled() {
        return reference_attention(q, k, v, alibi, drop);
    }
    let dev = q.device().clone();
    let started = std::sync::Arc::new(std::sync::Mutex::new(None::<crate::probe::Timer>));
    let (q, mut tape_q) = q.split_tape();
    if T::OWNS_TAPE {
        let (dev, started) = (dev.clone(), started.clone());
        tape_q.add_backward_op(move |_| {
            dev.synchronize();
            if let Some(timer) = started.lock().expect("not poisoned").take() {
                timer.stop();
            }
            Ok(())
        });
    }
    dev.synchronize();
    let timer = crate::probe::Timer::start();
    let y = reference_attention(q.put_tape(tape_q), k, v, alibi, drop);
    dev.synchronize();
    timer.stop();
    let (y, mut tape) = y.split_tape();
    if T::OWNS_TAPE {
        tape.add_backward_op(move |_| {
            dev.synchronize();
            *started.lock().expect("not poisoned") = Some(crate::probe::Timer::start());
            Ok(())
        });
    }
    y.put_tape(tape)
}

/// CUDA runs dfdx's own kernels (the composition), timed for the attention probe.
#[cfg(feature = "cuda")]
impl super::Backend for dfdx::tensor::Cuda {
    fn causal_attention<T: Tape<Float, Self> + Merge<T>>(
        q: Heads<Self, T>,
        k: Heads<Self, T>,
        v: Heads<Self, T>,
        alibi: bool,
        drop: &mut Dropout,
    ) -> Heads<Self, T> {
        timed_reference_attention(q, k, v, alibi, drop)
    }
}
