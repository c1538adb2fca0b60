//! The unit of every loss a report shows: nats per token when the runs share one tokenizer
//! (per character for `char`), bits per byte of UTF-8 text when they do not, since a nat per
//! GPT-2 token is not a nat per character.

use std::collections::BTreeSet;

use crate::data::Split;
use crate::plan::RunPlan;

/// How the report's losses are measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossUnit {
    /// Nats per token of the one tokenizer every run uses; `token` names its token
    /// (`character`, `token`).
    Nats {
        /// `character` or `token`.
        token: &'static str,
    },
    /// Bits per UTF-8 byte: the runs use different tokenizers, named here.
    BitsPerByte {
        /// The tokenizers, e.g. `char, gpt2`.
        tokenizers: Vec<String>,
    },
}

impl LossUnit {
    /// The unit for a report of `plans`.
    pub fn of(plans: &[RunPlan]) -> Self {
        let records: BTreeSet<(String, Option<String>)> = plans
            .iter()
            .map(|p| {
                let r = p.corpus.tokenizer.record();
                // Trained BPEs are told apart by their size.
                let name = match r.name.as_str() {
                    "bpe" => format!("bpe {}", r.vocab_size),
                    name => name.to_string(),
                };
                (name, r.sha256.clone())
            })
            .collect();
        match records.len() {
            0 | 1 => {
                let chars = records.iter().all(|(name, _)| name == "char");
                LossUnit::Nats {
                    token: if chars { "character" } else { "token" },
                }
            }
            _ => LossUnit::BitsPerByte {
                tokenizers: records.into_iter().map(|(name, _)| name).collect(),
            },
        }
    }

    /// In words, for axes: `nats per character`, `bits per byte`.
    pub fn long(&self) -> String {
        match self {
            LossUnit::Nats { token } => format!("nats per {token}"),
            LossUnit::BitsPerByte { .. } => "bits per byte".into(),
        }
    }

    /// Short, for headers and CSV columns: `nats/char`, `nats/token`, `bits/byte`.
    pub fn short(&self) -> &'static str {
        match self {
            LossUnit::Nats { token: "character" } => "nats/char",
            LossUnit::Nats { .. } => "nats/token",
            LossUnit::BitsPerByte { .. } => "bits/byte",
        }
    }

    /// The loss `nats` (per token, of `plan`'s `split`) in this unit.
    pub fn of_loss(&self, plan: &RunPlan, nats: f64, split: Split) -> f64 {
        match self {
            LossUnit::Nats { .. } => nats,
            LossUnit::BitsPerByte { .. } => plan.corpus.bits_per_byte(nats, split),
        }
    }

    /// What the page says of the unit when it is not the runs' own.
    pub fn sentence(&self) -> Option<String> {
        match self {
            LossUnit::Nats { .. } => None,
            LossUnit::BitsPerByte { tokenizers } => Some(format!(
                "The runs use different tokenizers ({}), so every loss here is in bits per byte of the UTF-8 \
                 text (nats per token × tokens ÷ bytes ÷ ln 2, over the same validation text), not nats per token.",
                tokenizers.join(", ")
            )),
        }
    }
}
