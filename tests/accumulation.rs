//! Gradient accumulation changes the memory a step needs, not the maths: four micro-batches
//! of 16 against one batch of 64, with and without dropout, to float rounding. Evaluation
//! runs in passes of the micro-batch too (so it never needs more memory than a step), and its
//! losses are the whole batch's.

mod common;

use dfdx::prelude::*;
use gptlab::data::{Batch, Corpus, sample_batch};
use gptlab::model::{Gpt, HasParams, Position};
use gptlab::seed::{Stream, stream};
use gptlab::train::length_eval::token_losses;
use gptlab::train::{AdamW, StepDropout, eval_loss, train_step_accumulated};

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

/// The tiny corpus and an untrained 2-layer model of width 32 on its 65 characters.
fn corpus_and_model() -> (Corpus, Gpt<Cpu>) {
    let corpus = Corpus::from_file(common::corpus_path().as_ref(), 0.1).unwrap();
    let config = common::config(65, 32, common::small(32, 4, 2, Position::Rope));
    let model = Gpt::new(&Cpu::default(), &config, 7);
    (corpus, model)
}

/// `ln Σ exp(row) − row[target]` of each of `logits`' rows, written out in `f64`.
fn cross_entropy_by_hand(logits: &[f32], targets: &[usize]) -> Vec<f64> {
    let v = logits.len() / targets.len();
    logits
        .chunks(v)
        .zip(targets)
        .map(|(row, &t)| row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln() - row[t] as f64)
        .collect()
}

#[test]
fn evaluating_in_micro_batches_gives_the_whole_batch_loss() {
    let (corpus, model) = corpus_and_model();
    let batches: Vec<Batch> = (0..2)
        .map(|i| sample_batch(&corpus.val, 64, 32, &mut stream(7, Stream::Eval, i)))
        .collect();
    // The mean over batches of each batch's mean token loss, one window at a time by hand.
    let by_hand = batches
        .iter()
        .map(|b| {
            let losses: Vec<f64> = (0..b.b)
                .flat_map(|k| {
                    let w = b.part(k, 1);
                    cross_entropy_by_hand(&model.eval_logits(&w.inputs, 1, w.t).as_vec(), &w.targets)
                })
                .collect();
            losses.iter().sum::<f64>() / losses.len() as f64
        })
        .sum::<f64>()
        / batches.len() as f64;
    for micro in [64, 16, 4] {
        let got = eval_loss(&model, &batches, micro) as f64;
        println!("micro {micro}: {got} against {by_hand} by hand");
        assert!((got - by_hand).abs() < 1e-5, "micro {micro}: {got} against {by_hand}");
    }
    // A pass of the whole batch is the plain loss of its logits, bit for bit.
    let whole: f32 = batches
        .iter()
        .map(|b| model.loss(model.eval_logits(&b.inputs, b.b, b.t), &b.targets).as_vec()[0])
        .sum::<f32>()
        / 2.0;
    assert_eq!(eval_loss(&model, &batches, 64), whole);
}

#[test]
fn per_token_losses_do_not_depend_on_how_many_windows_a_pass_holds() {
    let (corpus, model) = corpus_and_model();
    let (starts, length) = ([0, 100, 250, 400, 1000, 1234], 32);
    let all = token_losses(&model, &corpus.val, &starts, length, starts.len() * length);
    for per_pass in [1, 4] {
        let got = token_losses(&model, &corpus.val, &starts, length, per_pass * length);
        assert_eq!(got, all, "{per_pass} windows a pass");
    }
    for (w, &s) in starts.iter().enumerate() {
        let tokens = |from: usize| {
            (from..from + length)
                .map(|i| corpus.val.get(i) as usize)
                .collect::<Vec<_>>()
        };
        let logits = model.eval_logits(&tokens(s), 1, length).as_vec();
        let want = cross_entropy_by_hand(&logits, &tokens(s + 1));
        for (p, (got, want)) in all[w * length..(w + 1) * length].iter().zip(&want).enumerate() {
            assert!(
                (got - want).abs() < 1e-9,
                "window {w}, position {p}: {got} against {want}"
            );
        }
    }
}
