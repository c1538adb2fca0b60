//! Gradient accumulation changes the memory a step needs, not the maths: four micro-batches
//! of 16 against one batch of 64, with and without dropout, to float rounding.

mod common;

use dfdx::prelude::*;
use gptlab::data::{Corpus, sample_batch};
use gptlab::model::{Gpt, HasParams, Position};
use gptlab::seed::{Stream, stream};
use gptlab::train::{AdamW, StepDropout, train_step_accumulated};

/// Losses of 3 steps and the weights after them, training with micro-batches of `micro`;
/// the dropout masks come from seed `drop_seed`.
fn three_steps(micro: usize, dropout: f32, drop_seed: u64) -> (Vec<f32>, Vec<Vec<f32>>) {
    let corpus = Corpus::from_file(common::corpus_path().as_ref(), 0.1).unwrap();
    let dev = Cpu::default();
    let mut arch = common::small(32, 4, 2, Position::Rope);
    arch.dropout = dropout as f64;
    let config = common::config(65, 32, arch);
    let mut model = Gpt::new(&dev, &config, 7);
    let mut opt = AdamW::new(&model, 0.9, 0.95, 1e-8, 0.1);
    let mut losses = vec![];
    for step in 1..=3u64 {
        let batch = sample_batch(&corpus.train, 64, 32, &mut stream(7, Stream::Batch, step));
        let drop = StepDropout {
            p: dropout,
            rng: stream(drop_seed, Stream::Dropout, step),
        };
        let stats = train_step_accumulated(&mut model, &mut opt, &batch, micro, 1e-3, 1.0, &drop);
        losses.push(stats.loss);
    }
    let mut weights = vec![];
    model.visit(&mut |p| weights.push(p.value.as_vec()));
    (losses, weights)
}

/// The largest absolute difference of the losses, and of the weights.
fn differences(a: &(Vec<f32>, Vec<Vec<f32>>), b: &(Vec<f32>, Vec<Vec<f32>>)) -> (f32, f32) {
    let loss = a.0.iter().zip(&b.0).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let weight =
        a.1.iter()
            .flatten()
            .zip(b.1.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
    (loss, weight)
}

/// The tolerances (see README, "Gradient accumulation"): measured 3.3e-6 (loss) and 1.2e-7
/// (weights) without dropout, 2.4e-6 and 3.7e-8 with it — float rounding of the summation
/// order — with room to spare; other dropout masks move them by 1.6e-3 and 5.7e-3.
const LOSS_TOL: f32 = 1e-5;
const WEIGHT_TOL: f32 = 1e-6;

#[test]
fn four_micro_batches_of_16_equal_one_batch_of_64_without_dropout() {
    let whole = three_steps(64, 0.0, 1);
    let micro = three_steps(16, 0.0, 1);
    let (dl, dw) = differences(&whole, &micro);
    println!("dropout 0: loss {dl:e}, weights {dw:e}");
    assert!(dl <= LOSS_TOL && dw <= WEIGHT_TOL, "loss {dl:e}, weights {dw:e}");
    // One micro-batch of the whole batch is the unaccumulated step exactly.
    let again = three_steps(64, 0.0, 1);
    assert_eq!(differences(&whole, &again), (0.0, 0.0));
}

#[test]
fn with_dropout_each_window_keeps_its_masks_in_micro_batches() {
    let whole = three_steps(64, 0.1, 1);
    let micro = three_steps(16, 0.1, 1);
    let (dl, dw) = differences(&whole, &micro);
    println!("dropout 0.1: loss {dl:e}, weights {dw:e}");
    assert!(dl <= LOSS_TOL && dw <= WEIGHT_TOL, "loss {dl:e}, weights {dw:e}");
    // Other masks move the run far more than rounding does: the test can tell.
    let other = three_steps(16, 0.1, 2);
    let (ol, ow) = differences(&whole, &other);
    assert!(
        ol > 10.0 * LOSS_TOL && ow > 100.0 * WEIGHT_TOL,
        "other masks: loss {ol:e}, weights {ow:e}"
    );
}
