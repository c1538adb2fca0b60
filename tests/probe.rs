//! The efficiency probes: the counting allocator, attention memory against the analytic
//! figure, and attention time. One test, so no other test allocates concurrently.

use dfdx::prelude::*;
use gptlab::data::Batch;
use gptlab::model::{
    Dropout, Gpt, ModelConfig, ModelOptions, Position, reference_attention, timed_reference_attention,
};
use gptlab::probe::{CountingAlloc, enable_attention_probe, live_bytes, take_attention};
use gptlab::train::loss_and_grads;

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// The attention's saved bytes measured over one training step of a 2-layer model with
/// `kv` key/value heads (after a warm-up step), checked against the shapes' count.
fn attention_bytes_measured(dev: &Cpu, batch: &Batch, kv: usize) -> f64 {
    let (b, t) = (batch.b, batch.t);
    let config = ModelConfig {
        vocab_size: 11,
        block_size: t,
        arch: ModelOptions {
            n_layer: 2,
            n_embd: 48,
            n_head: 6,
            n_kv_head: Some(kv),
            position: Position::Rope,
            dropout: 0.1,
            rope_base: 10_000.0,
            ..ModelOptions::default()
        },
    };
    let model = Gpt::new(dev, &config, 1);
    let drop = || Dropout::train(0.1, gptlab::seed::stream(1, gptlab::seed::Stream::Dropout, 1));
    // A warm-up pass first: a worker thread's first matrix product allocates its gemm
    // packing buffers (megabytes, kept for the process), which must not be counted as
    // attention memory when that first product happens inside attention.
    let _ = loss_and_grads(&model, batch, &mut drop());
    take_attention();
    let _ = loss_and_grads(
        &model,
        batch,
        &mut Dropout::train(0.1, gptlab::seed::stream(1, gptlab::seed::Stream::Dropout, 1)),
    );
    let (ms, bytes) = take_attention();
    let bytes = bytes.expect("bytes are counted") as f64;
    let analytic = (config.arch.n_layer * config.attn_shape().saved_bytes(b, t)) as f64;
    assert!(
        (bytes - analytic).abs() <= 0.1 * analytic,
        "n_kv_head={kv}: measured {bytes} B vs analytic {analytic} B"
    );
    assert!(ms > 0.0, "attention time recorded");
    bytes
}

/// The timed composition (the CUDA path) clocks the forward and the backward pass, and
/// computes what the untimed one does.
fn assert_the_timed_composition_clocks_both_passes(dev: &Cpu) {
    let shape = (2, 9, 4, 8);
    let n = 2 * 9 * 4 * 8;
    let q = dev.tensor_from_vec((0..n).map(|i| ((i * 7) % 13) as f32 / 13.0).collect(), shape);
    let k = dev.tensor_from_vec((0..n).map(|i| ((i * 5) % 11) as f32 / 11.0).collect(), shape);
    let v = dev.tensor_from_vec((0..n).map(|i| ((i * 3) % 7) as f32 / 7.0).collect(), shape);
    take_attention();
    let y = timed_reference_attention(q.leaky_trace(), k.retaped(), v.retaped(), false, &mut Dropout::eval());
    let (forward_ms, _) = take_attention();
    assert!(forward_ms > 0.0, "forward pass timed");
    let reference = reference_attention(q.clone(), k.clone(), v.clone(), false, &mut Dropout::eval());
    assert_eq!(y.retaped::<NoneTape>().as_vec(), reference.as_vec());
    let _ = y.sum().backward();
    let (backward_ms, _) = take_attention();
    assert!(backward_ms > 0.0, "backward pass timed by the tape markers");
}

#[test]
fn the_probes_measure_allocations_attention_memory_and_time() {
    // A known allocation is counted exactly.
    let before = live_bytes().expect("the counting allocator is installed");
    let block: Vec<u8> = Vec::with_capacity(3_000_000);
    assert_eq!(live_bytes().unwrap() - before, 3_000_000);
    drop(block);
    assert_eq!(live_bytes().unwrap(), before);

    // Measured attention memory agrees with the shapes and falls with n_kv_head.
    let dev = Cpu::default();
    let (b, t) = (8, 32);
    let batch = Batch {
        b,
        t,
        inputs: (0..b * t).map(|i| i % 11).collect(),
        targets: (0..b * t).map(|i| (i + 1) % 11).collect(),
    };
    enable_attention_probe(true);
    let mut measured = vec![];
    for kv in [6, 3, 2, 1] {
        measured.push(attention_bytes_measured(&dev, &batch, kv));
    }
    assert!(
        measured.windows(2).all(|w| w[1] < w[0]),
        "memory should fall with fewer kv heads: {measured:?}"
    );

    // The timed composition (the CUDA path) clocks both passes, and computes the same values.
    assert_the_timed_composition_clocks_both_passes(&dev);

    // Off: nothing recorded.
    enable_attention_probe(false);
    let config = ModelConfig {
        vocab_size: 11,
        block_size: t,
        arch: ModelOptions {
            n_layer: 1,
            n_embd: 48,
            n_head: 6,
            n_kv_head: Some(6),
            position: Position::Absolute,
            dropout: 0.0,
            rope_base: 10_000.0,
            ..ModelOptions::default()
        },
    };
    let model = Gpt::new(&dev, &config, 1);
    take_attention();
    let _ = loss_and_grads(&model, &batch, &mut Dropout::eval());
    assert_eq!(take_attention(), (0.0, Some(0)));
}
