//! CPU against CUDA: every model variant computes the same loss and gradients on both devices
//! (float32, relative error < 1e-4), greedy sampling with the KV cache picks the same tokens,
//! and checkpoints move between the devices. Runs only in a CUDA build on a machine with a
//! GPU: `just test-cuda`. CI type-checks it (`cargo check --features cuda,ci-check`).
#![cfg(feature = "cuda")]

use dfdx::prelude::*;
use gptlab::data::Batch;
mod common;

use gptlab::model::{AttentionKind, Dropout, Gpt, HasParams, ModelConfig, ModelOptions, Position};
use gptlab::sample::{SampleOptions, generate, generate_uncached};
use gptlab::train::{AdamW, loss_and_grads};

fn cuda() -> Cuda {
    Cuda::try_build(0, 0).expect("test-cuda needs a GPU: CUDA device 0 did not open")
}

/// Every variant of the study and of the block options, small.
fn variants() -> Vec<(String, ModelConfig)> {
    let base = common::config(
        65,
        48,
        ModelOptions {
            dropout: 0.0,
            ..common::small(48, 6, 6, Position::Absolute)
        },
    );
    let mut out = vec![];
    for position in [Position::Absolute, Position::Rope, Position::None] {
        for kv in [6, 3, 2, 1] {
            for attention in [AttentionKind::Standard, AttentionKind::GroupedSum] {
                if attention == AttentionKind::GroupedSum && kv == 6 {
                    continue; // identical to multi-head attention
                }
                let c = base.with(|a| {
                    a.position = position;
                    a.n_kv_head = Some(kv);
                    a.attention = attention;
                });
                out.push((format!("{position:?} kv={kv} {attention:?}"), c));
            }
        }
    }
    let llama = base.with(|a| {
        *a = ModelOptions {
            mlp_multiple_of: 256,
            ..common::llama_style(a.clone(), 16)
        };
        a.position = Position::Rope;
        a.n_kv_head = Some(2);
    });
    out.push(("llama-style".into(), llama));
    out
}

fn batch(b: usize, t: usize) -> Batch {
    let tokens: Vec<usize> = (0..b * (t + 1)).map(|i| (i * 37 + i / 7) % 65).collect();
    Batch {
        b,
        t,
        inputs: tokens.chunks(t + 1).flat_map(|w| w[..t].to_vec()).collect(),
        targets: tokens.chunks(t + 1).flat_map(|w| w[1..].to_vec()).collect(),
    }
}

/// Largest difference relative to the largest magnitude of the reference.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

#[test]
fn every_variant_has_the_same_loss_and_gradients_on_cpu_and_cuda() {
    let (cpu, gpu) = (Cpu::default(), cuda());
    let batch = batch(4, 40);
    for (name, config) in variants() {
        let on_cpu = Gpt::new(&cpu, &config, 7);
        let on_gpu = Gpt::new(&gpu, &config, 7);
        let (loss_c, grads_c) = loss_and_grads(&on_cpu, &batch, &mut Dropout::eval());
        let (loss_g, grads_g) = loss_and_grads(&on_gpu, &batch, &mut Dropout::eval());
        assert!(
            (loss_c - loss_g).abs() / loss_c.abs() < 1e-4,
            "{name}: loss {loss_c} vs {loss_g}"
        );
        let mut names = vec![];
        on_cpu.visit(&mut |p| names.push(p.name.clone()));
        for ((g_c, g_g), param) in grads_c.iter().zip(&grads_g).zip(&names) {
            let err = rel_err(g_g, g_c);
            assert!(err < 1e-4, "{name}: gradient of {param} differs by {err}");
        }
        let logits_c = on_cpu.eval_logits(&batch.inputs, 4, 40).as_vec();
        let logits_g = on_gpu.eval_logits(&batch.inputs, 4, 40).as_vec();
        assert!(rel_err(&logits_g, &logits_c) < 1e-4, "{name}: logits differ");
    }
}

#[test]
fn cached_sampling_on_cuda_picks_the_tokens_the_cpu_picks() {
    let (cpu, gpu) = (Cpu::default(), cuda());
    let opts = SampleOptions {
        max_new_tokens: 60,
        temperature: 1.0,
        top_k: 1, // greedy: no sampling noise between devices
        seed: 1,
    };
    for (name, config) in variants().into_iter().step_by(3) {
        let prompt: Vec<usize> = (0..5).map(|i| (i * 11) % 65).collect();
        let on_cpu = generate(&Gpt::new(&cpu, &config, 3), &prompt, &opts);
        let on_gpu = generate(&Gpt::new(&gpu, &config, 3), &prompt, &opts);
        let uncached = generate_uncached(&Gpt::new(&gpu, &config, 3), &prompt, &opts);
        assert_eq!(on_gpu, uncached, "{name}: cached vs uncached on CUDA");
        assert_eq!(on_gpu, on_cpu, "{name}: CUDA vs CPU");
    }
}

fn meta(config: &ModelConfig) -> gptlab::checkpoint::Meta {
    gptlab::checkpoint::Meta::new(
        1,
        0,
        gptlab::checkpoint::Kind::Periodic,
        &gptlab::data::Tokenizer::chars((0..65u8).map(|i| (b' ' + i) as char).collect()),
        config.clone(),
        Default::default(),
    )
}

#[test]
fn checkpoints_move_between_cpu_and_cuda() {
    let (cpu, gpu) = (Cpu::default(), cuda());
    let config = variants().remove(5).1;
    let dir = tempfile::tempdir().unwrap();
    // Train a step on the GPU, save, load on the CPU: the same weights and optimiser moments.
    let mut model = Gpt::new(&gpu, &config, 5);
    let mut opt = AdamW::new(&model, 0.9, 0.95, 1e-8, 0.1);
    gptlab::train::train_step(&mut model, &mut opt, &batch(2, 16), 1e-3, 1.0, &mut Dropout::eval());
    let saved = gptlab::checkpoint::save(dir.path(), &model, &opt.state, meta(&config)).unwrap();
    let mut on_cpu = Gpt::new(&cpu, &config, 99);
    let mut opt_cpu = AdamW::new(&on_cpu, 0.9, 0.95, 1e-8, 0.1);
    gptlab::checkpoint::read(&saved)
        .unwrap()
        .load_all(&mut on_cpu, &mut opt_cpu.state)
        .unwrap();
    let (mut a, mut b) = (vec![], vec![]);
    model.visit(&mut |p| a.push(p.value.as_vec()));
    on_cpu.visit(&mut |p| b.push(p.value.as_vec()));
    assert_eq!(a, b, "weights after GPU → CPU");
    // And back: CPU → GPU.
    let saved = gptlab::checkpoint::save(&dir.path().join("back"), &on_cpu, &opt_cpu.state, meta(&config)).unwrap();
    let mut again = Gpt::new(&gpu, &config, 98);
    gptlab::checkpoint::read(&saved)
        .unwrap()
        .load_weights(&mut again)
        .unwrap();
    let mut c = vec![];
    again.visit(&mut |p| c.push(p.value.as_vec()));
    assert_eq!(c, b, "weights after CPU → GPU");
}
