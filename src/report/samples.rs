//! `samples.md`: each run's text after every phase, from its phase-end checkpoints, cached
//! beside each checkpoint so a report is cheap to redraw.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Kind};
use crate::model::Backend;
use crate::plan::RunPlan;
use crate::sample::{SampleOptions, Sampler};

/// One generation, as cached in `checkpoints/step_N/samples.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The prompt.
    pub prompt: String,
    /// Characters generated.
    pub max_new_tokens: usize,
    /// Temperature.
    pub temperature: f64,
    /// Top-k.
    pub top_k: usize,
    /// Seed.
    pub seed: u64,
    /// The prompt followed by the generation.
    pub text: String,
    /// Decode speed with the key/value cache, tokens per second.
    #[serde(default)]
    pub decode_tokens_per_s: f64,
}

/// The samples of one checkpoint.
pub struct CheckpointSamples {
    /// Steps trained.
    pub step: usize,
    /// Phase index.
    pub phase: usize,
    /// One per prompt.
    pub samples: Vec<Sample>,
}

/// Generates (or reads from cache) the samples of each phase-end checkpoint of `plan`.
pub fn run_samples<D: Backend>(dev: &D, plan: &RunPlan) -> Result<Vec<CheckpointSamples>> {
    let s = &plan.config.sample;
    let mut out = vec![];
    if s.prompts.is_empty() {
        return Ok(out);
    }
    let mut ckpts = crate::run_dir::RunDir::new(&plan.dir).checkpoints();
    ckpts.reverse();
    for (step, dir) in ckpts {
        let Some(meta) = checkpoint::read_meta(&dir) else {
            continue;
        };
        if meta.kind != Kind::PhaseEnd {
            continue;
        }
        let cache = dir.join("samples.json");
        let want: Vec<(String, SampleOptions)> = s
            .prompts
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    SampleOptions {
                        max_new_tokens: s.max_new_tokens,
                        temperature: s.temperature,
                        top_k: s.top_k,
                        seed: plan.seed.wrapping_add(step as u64),
                    },
                )
            })
            .collect();
        let cached: Vec<Sample> =
            crate::fsio::read_text_capped(&cache, crate::fsio::MAX_META_BYTES, "the samples cache")
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        let matches = |c: &Sample, (p, o): &(String, SampleOptions)| {
            &c.prompt == p
                && c.max_new_tokens == o.max_new_tokens
                && c.temperature == o.temperature
                && c.top_k == o.top_k
                && c.seed == o.seed
        };
        let samples = if cached.len() == want.len() && cached.iter().zip(&want).all(|(c, w)| matches(c, w)) {
            cached
        } else {
            let sampler = Sampler::load(dev, &dir)?;
            let mut fresh = vec![];
            for (prompt, o) in &want {
                let (text, decode_tokens_per_s) = match sampler.generate_timed(prompt, o) {
                    Ok((g, speed)) => (format!("{prompt}{g}"), speed),
                    Err(e) => (format!("(cannot sample: {e:#})"), 0.0),
                };
                fresh.push(Sample {
                    prompt: prompt.clone(),
                    max_new_tokens: o.max_new_tokens,
                    temperature: o.temperature,
                    top_k: o.top_k,
                    seed: o.seed,
                    text,
                    decode_tokens_per_s,
                });
            }
            crate::fsio::write_atomic(&cache, serde_json::to_string_pretty(&fresh)?.as_bytes())?;
            fresh
        };
        out.push(CheckpointSamples {
            step,
            phase: meta.phase,
            samples,
        });
    }
    Ok(out)
}

/// The Markdown of every run's samples.
pub fn markdown(
    runs: &[(String, Vec<CheckpointSamples>)],
    seq_len_of_phase: &dyn Fn(&str, usize) -> Option<usize>,
    dir_hint: &Path,
) -> String {
    let mut md = String::from("# Samples\n\n");
    if runs.iter().all(|(_, c)| c.is_empty()) {
        md.push_str(&format!(
            "No samples: add prompts under [sample] and finish a phase (checkpoints under {}).\n",
            dir_hint.display()
        ));
        return md;
    }
    for (label, ckpts) in runs {
        md.push_str(&format!("## {label}\n\n"));
        if ckpts.is_empty() {
            md.push_str("No checkpoint to sample from: the run has not finished a phase yet, or its checkpoints were deleted.\n\n");
        }
        for c in ckpts {
            let seq = seq_len_of_phase(label, c.phase)
                .map(|s| format!(", seq_len {s}"))
                .unwrap_or_default();
            md.push_str(&format!("### after step {} (phase {}{seq})\n\n", c.step, c.phase));
            for s in &c.samples {
                md.push_str(&format!(
                    "Prompt: `{}` (temperature {}, top-k {}, seed {})\n\n```text\n{}\n```\n\n",
                    s.prompt.replace('`', "'"),
                    s.temperature,
                    s.top_k,
                    s.seed,
                    s.text
                ));
            }
        }
    }
    md
}
