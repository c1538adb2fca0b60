//! Training behaves: a tiny model overfits one batch, a fixed seed gives the same losses
//! twice, and phases switch sequence length within one model.

use dfdx::prelude::*;
use gptlab::data::{Corpus, sample_batch};
mod common;

use gptlab::model::{Dropout, Gpt, MlpKind, ModelOptions, NormKind, Position};
use gptlab::plan::plan;
use gptlab::run_dir::{RunDir, RunStatus};
use gptlab::seed::{Stream, stream};
use gptlab::spec::SpecFile;
use gptlab::train::{AdamW, RunOptions, train_run, train_step};

fn corpus() -> Corpus {
    Corpus::from_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare.txt").as_ref(),
        0.1,
    )
    .unwrap()
}

#[test]
fn a_tiny_model_overfits_a_single_batch() {
    let dev = Cpu::default();
    let corpus = corpus();
    for (position, llama) in [
        (Position::Absolute, false),
        (Position::Rope, false),
        (Position::Rope, true),
    ] {
        let mut arch = ModelOptions {
            n_embd: 48,
            n_head: 4,
            dropout: 0.0,
            ..common::small(48, 4, 2, position)
        };
        if llama {
            // A LLaMA-style block too: RMSNorm, SwiGLU, no biases.
            arch = ModelOptions {
                norm: NormKind::RmsNorm,
                mlp: MlpKind::Swiglu,
                mlp_multiple_of: 16,
                bias: false,
                ..arch
            };
        }
        let config = common::config(65, 32, arch);
        let mut model = Gpt::new(&dev, &config, 1);
        let mut opt = AdamW::new(&model, 0.9, 0.95, 1e-8, 0.0);
        let batch = sample_batch(&corpus.train, 4, 32, &mut stream(1, Stream::Batch, 0));
        let first = train_step(&mut model, &mut opt, &batch, 3e-3, 1.0, &mut Dropout::eval()).loss;
        let mut last = first;
        for _ in 0..200 {
            last = train_step(&mut model, &mut opt, &batch, 3e-3, 1.0, &mut Dropout::eval()).loss;
        }
        assert!(first > 3.5, "{position} llama={llama}: initial loss {first}");
        assert!(
            last < 0.5,
            "{position} llama={llama}: loss after 200 steps on one batch is {last}"
        );
    }
}

const SPEC: &str = r#"
[experiment]
seed = 11
[data]
path = "DATA"
[model]
n_layer = 1
n_embd = 16
n_head = 2
dropout = 0.1
[train]
batch_size = 4
lr = 1e-2
eval_every = 5
eval_batches = 1
[[phase]]
seq_len = 8
steps = 10
[[phase]]
seq_len = 16
steps = 5
lr = 5e-3
[[run]]
name = "abs"
[[run]]
name = "rope"
model.position = "rope"
"#;

#[test]
fn a_fixed_seed_gives_identical_losses_twice_and_phases_switch_length() {
    let tmp = tempfile::tempdir().unwrap();
    let text = SPEC.replace("DATA", concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare.txt"));
    let spec = SpecFile::parse(&tmp.path().join("det.toml"), &text).unwrap();
    let runs = spec.expand(&[]).unwrap();
    let dev = Cpu::default();
    let mut losses = vec![];
    for out in ["a", "b"] {
        let plans = plan(&runs, &tmp.path().join(out), &|_, _| None).unwrap();
        let mut per_run = vec![];
        for p in &plans {
            let outcome = train_run(
                &dev,
                p,
                &RunOptions {
                    quiet: true,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(outcome.status, RunStatus::Complete { step: 15 });
            let run_dir = RunDir::new(&p.dir);
            assert_eq!(run_dir.read_status(), Some(RunStatus::Complete { step: 15 }));
            let rows = run_dir.read_metrics().unwrap();
            assert_eq!(rows.len(), 15);
            assert_eq!(
                rows.iter().map(|r| r.step).collect::<Vec<_>>(),
                (1..=15).collect::<Vec<_>>()
            );
            assert!(
                rows[..10]
                    .iter()
                    .all(|r| r.seq_len == 8 && r.phase == 0 && r.lr == 1e-2)
            );
            assert!(
                rows[10..]
                    .iter()
                    .all(|r| r.seq_len == 16 && r.phase == 1 && r.lr == 5e-3)
            );
            // Validation at every 5th step and at each phase end.
            let evaluated: Vec<usize> = rows.iter().filter(|r| r.val_loss.is_some()).map(|r| r.step).collect();
            assert_eq!(evaluated, vec![5, 10, 15]);
            assert!(p.dir.join("run.toml").is_file() && p.dir.join("vocab.json").is_file());
            per_run.push(rows.iter().map(|r| r.train_loss.to_bits()).collect::<Vec<_>>());
        }
        losses.push(per_run);
    }
    assert_eq!(losses[0], losses[1], "same seed, different losses");
    assert_ne!(losses[0][0], losses[0][1], "absolute and RoPE runs should differ");
}
