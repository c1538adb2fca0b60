//! Validation loss at several sequence lengths ("Train Short, Test Long"): how a model reads
//! sequences longer (or shorter) than those it trained on.
//!
//! Every run of an experiment is scored on the same text: windows cut from the start of the
//! validation split, depending only on the split and the `[eval]` settings (never on the seed
//! or the model). `windows` mode cuts non-overlapping windows and scores every position;
//! `sliding` mode starts a window every `stride` tokens and scores only the positions the
//! previous window did not, as lm-evaluation-harness and the Hugging Face perplexity guide do.
//! Both score about `[eval] tokens` tokens at every length, so lengths compare on the same text.
//!
//! A length the model cannot read (learned absolute positions past their table) is recorded
//! as not defined, with the reason, never clamped.

use crate::data::{Corpus, Split, Tokens};
use crate::model::{Backend, Gpt, Position, RopeScaling};
use crate::plan::{Phase, RunPlan};
use crate::run_dir::{EvalRow, PositionRow};
use crate::spec::{EvalMode, EvalSection};

/// One window of the validation split: inputs `start..start + length`, targets one token on;
/// positions `scored_from..length` count towards the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First input token.
    pub start: usize,
    /// First scored position.
    pub scored_from: usize,
}

/// The windows of `length` over a split of `n_tokens` tokens, scoring about `budget` tokens
/// (at least one window when the split holds one): empty when the split is shorter than one
/// window of `length + 1` tokens.
pub fn windows(n_tokens: usize, length: usize, mode: EvalMode, stride: usize, budget: usize) -> Vec<Window> {
    let fits = |start: usize| start + length < n_tokens;
    let mut out = vec![];
    let mut scored = 0;
    let mut start = 0;
    while fits(start) && (out.is_empty() || scored < budget) {
        let scored_from = match (mode, out.is_empty()) {
            (EvalMode::Windows, _) | (EvalMode::Sliding, true) => 0,
            (EvalMode::Sliding, false) => length - stride,
        };
        out.push(Window { start, scored_from });
        scored += length - scored_from;
        start += match mode {
            EvalMode::Windows => length,
            EvalMode::Sliding => stride,
        };
    }
    out
}

/// The tokens between window starts at `length` (the length itself for `windows`; for
/// `sliding`, `[eval] stride`, by default half the length, at most the length).
pub fn stride(eval: &EvalSection, length: usize) -> usize {
    match eval.mode {
        EvalMode::Windows => length,
        EvalMode::Sliding => eval.stride.unwrap_or(length / 2).clamp(1, length.max(1)),
    }
}

/// One curve point to evaluate: a length, with a RoPE scaling or without.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// Evaluation length.
    pub length: usize,
    /// RoPE scaling applied to the angles.
    pub scaling: Option<RopeScaling>,
}

/// The lengths `[eval]` asks for: its `lengths`, or the `seq_len` of every phase; sorted.
pub fn lengths(plan: &RunPlan) -> Vec<usize> {
    let mut l = match plan.config.eval.lengths.as_slice() {
        [] => plan.schedule.phases.iter().map(|p| p.seq_len).collect(),
        given => given.to_vec(),
    };
    l.sort_unstable();
    l.dedup();
    l
}

/// The longest sequence the run had trained on by the end of `phase`.
pub fn train_len(plan: &RunPlan, phase: &Phase) -> usize {
    plan.schedule.phases[..=phase.index]
        .iter()
        .map(|p| p.seq_len)
        .max()
        .unwrap_or(0)
}

/// What to evaluate at the end of `phase`: every length, and for RoPE runs every length past
/// the training length again under each `[eval] rope_scaling`.
pub fn targets(plan: &RunPlan, phase: &Phase) -> Vec<Target> {
    let lengths = lengths(plan);
    let trained = train_len(plan, phase);
    let mut out: Vec<Target> = lengths.iter().map(|&length| Target { length, scaling: None }).collect();
    if plan.config.model.position == Position::Rope {
        for s in &plan.config.eval.rope_scaling {
            out.extend(lengths.iter().filter(|&&l| l > trained).map(|&length| Target {
                length,
                scaling: Some(*s),
            }));
        }
    }
    out
}

/// The `eval.csv` rows `plan` should have for the end of `phase` (or another step of it), with
/// everything but the results filled in: what [`evaluate`] fills, and what the report looks for.
pub fn expected_rows(plan: &RunPlan, phase: &Phase, step: usize) -> Vec<EvalRow> {
    let eval = &plan.config.eval;
    targets(plan, phase)
        .into_iter()
        .map(|t| EvalRow {
            run: plan.name.clone(),
            seed: Some(plan.seed),
            step,
            phase: phase.index,
            train_len: train_len(plan, phase),
            length: t.length,
            scaling: t.scaling.map(|s| s.to_string()).unwrap_or_default(),
            mode: eval.mode.to_string(),
            stride: stride(eval, t.length),
            budget: eval.tokens,
            windows: 0,
            tokens: 0,
            windows_id: String::new(),
            loss: None,
            note: String::new(),
            loss_bpb: None,
        })
        .collect()
}

/// A short fingerprint of the scored text: the windows and the tokens they read.
fn windows_id(tokens: &Tokens, length: usize, ws: &[Window]) -> String {
    let mut bytes = format!("{length}").into_bytes();
    for w in ws {
        bytes.extend(format!(";{}:{}:", w.start, w.scored_from).bytes());
        bytes.extend((w.start..=w.start + length).flat_map(|i| tokens.get(i).to_le_bytes()));
    }
    crate::fsio::sha256_hex(&bytes)[..12].to_string()
}

/// Per-token cross-entropy (nats) of `model` on the windows `starts` of `length`, row-major
/// `(windows, length)`, in forward passes of at most `chunk_tokens` tokens (one window at least).
pub fn token_losses<D: Backend>(
    model: &Gpt<D>,
    tokens: &Tokens,
    starts: &[usize],
    length: usize,
    chunk_tokens: usize,
) -> Vec<f64> {
    let per_chunk = (chunk_tokens / length).max(1);
    let mut out = Vec::with_capacity(starts.len() * length);
    for chunk in starts.chunks(per_chunk) {
        let mut inputs: Vec<usize> = Vec::with_capacity(chunk.len() * length);
        let mut targets: Vec<usize> = Vec::with_capacity(chunk.len() * length);
        for &s in chunk {
            tokens.extend_into(s..s + length, &mut inputs);
            tokens.extend_into(s + 1..s + length + 1, &mut targets);
        }
        let logits = model.eval_logits(&inputs, chunk.len(), length); // (windows·length, V)
        out.extend(D::row_losses(logits, &targets));
    }
    out
}

/// Evaluates `model` (the weights of `plan` after `step`, in `phase`) at every target: the
/// `eval.csv` rows and, for the longest length each curve can read, the mean loss by position.
pub fn evaluate<D: Backend>(
    model: &Gpt<D>,
    plan: &RunPlan,
    corpus: &Corpus,
    phase: &Phase,
    step: usize,
) -> (Vec<EvalRow>, Vec<PositionRow>) {
    let eval = &plan.config.eval;
    let mode = eval.mode;
    // As many tokens a pass as a training pass of the phase holds (its micro-batch).
    let chunk_tokens = plan.config.train.windows_per_pass() * phase.seq_len;
    let val = &corpus.val;
    let mut rows = expected_rows(plan, phase, step);
    // Per curve (scaling), the longest length read so far and its losses by position.
    let mut longest: Vec<(String, usize, Vec<f64>, usize)> = vec![];
    for (row, target) in rows.iter_mut().zip(targets(plan, phase)) {
        let length = target.length;
        let ws = windows(val.len(), length, mode, row.stride, eval.tokens);
        if ws.is_empty() {
            row.note = format!(
                "the validation split has {} tokens, fewer than the {} one window needs",
                val.len(),
                length + 1
            );
            continue;
        }
        let extended = match model.for_length(length, target.scaling.as_ref()) {
            Ok(m) => m,
            Err(why) => {
                row.note = why;
                continue;
            }
        };
        let starts: Vec<usize> = ws.iter().map(|w| w.start).collect();
        let losses = token_losses(&extended, val, &starts, length, chunk_tokens);
        let (mut sum, mut n) = (0.0, 0);
        let mut by_position = vec![0.0; length];
        for (w, window) in ws.iter().zip(losses.chunks(length)) {
            sum += window[w.scored_from..].iter().sum::<f64>();
            n += length - w.scored_from;
            by_position.iter_mut().zip(window).for_each(|(a, l)| *a += l);
        }
        by_position.iter_mut().for_each(|a| *a /= ws.len() as f64);
        (row.windows, row.tokens, row.loss) = (ws.len(), n, Some(sum / n as f64));
        row.loss_bpb = row.loss.map(|l| corpus.bits_per_byte(l, Split::Val));
        row.windows_id = windows_id(val, length, &ws);
        match longest.iter_mut().find(|c| c.0 == row.scaling) {
            Some(c) if c.1 >= length => {}
            Some(c) => *c = (row.scaling.clone(), length, by_position, ws.len()),
            None => longest.push((row.scaling.clone(), length, by_position, ws.len())),
        }
    }
    let positions = longest
        .into_iter()
        .flat_map(|(scaling, length, losses, windows)| {
            losses.into_iter().enumerate().map(move |(position, loss)| PositionRow {
                run: plan.name.clone(),
                seed: Some(plan.seed),
                step,
                phase: phase.index,
                length,
                scaling: scaling.clone(),
                mode: mode.to_string(),
                position,
                loss,
                windows,
                loss_bpb: Some(corpus.bits_per_byte(loss, Split::Val)),
            })
        })
        .collect();
    (rows, positions)
}

/// The steps of `plan` up to `done` whose evaluations `eval.csv` (`have`) lacks under the
/// current `[eval]` settings: phase ends only (their checkpoints are kept).
pub fn missing_phase_ends(plan: &RunPlan, have: &[EvalRow], done: usize) -> Vec<usize> {
    plan.schedule
        .phases
        .iter()
        .filter(|p| p.last_step() <= done)
        .filter(|p| {
            expected_rows(plan, p, p.last_step())
                .iter()
                .any(|want| !have.iter().any(|h| h.same_evaluation(want)))
        })
        .map(|p| p.last_step())
        .collect()
}

/// The steps up to `done`, other than phase ends, that `[eval] every` asks to be evaluated at
/// and `eval.csv` (`have`) lacks under the current settings: `every` added or changed after
/// those steps trained. They can be evaluated only from a checkpoint of that very step.
pub fn missing_periodic(plan: &RunPlan, have: &[EvalRow], done: usize) -> Vec<usize> {
    let every = plan.config.eval.every;
    if every == 0 {
        return vec![];
    }
    (every..=done)
        .step_by(every)
        .filter(|&s| plan.schedule.phases.iter().all(|p| p.last_step() != s))
        .filter(|&s| {
            let phase = plan.schedule.phase_of(s).expect("a trained step is in the schedule");
            expected_rows(plan, phase, s)
                .iter()
                .any(|want| !have.iter().any(|h| h.same_evaluation(want)))
        })
        .collect()
}

/// `[a, b, c, … (n in all)]` for a note.
pub fn steps_in_words(steps: &[usize]) -> String {
    let shown: Vec<String> = steps.iter().take(6).map(usize::to_string).collect();
    if steps.len() > shown.len() {
        format!("{} … ({} in all)", shown.join(", "), steps.len())
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_overlapping_windows_tile_the_text_and_stop_at_the_budget() {
        let w = windows(1000, 100, EvalMode::Windows, 100, 300);
        assert_eq!(w.iter().map(|w| w.start).collect::<Vec<_>>(), [0, 100, 200]);
        assert!(w.iter().all(|w| w.scored_from == 0));
        // The split bounds them: the last window needs its target token.
        assert_eq!(windows(301, 100, EvalMode::Windows, 100, 10_000).len(), 3);
        assert_eq!(windows(300, 100, EvalMode::Windows, 100, 10_000).len(), 2);
        assert!(windows(100, 100, EvalMode::Windows, 100, 10_000).is_empty());
        // A budget shorter than one window still scores one window.
        assert_eq!(windows(1000, 100, EvalMode::Windows, 100, 10).len(), 1);
    }

    #[test]
    fn sliding_windows_score_each_token_once() {
        let w = windows(1000, 100, EvalMode::Sliding, 25, 200);
        // 100 from the first window, then 25 new tokens a window until 200 are scored.
        assert_eq!(w.iter().map(|w| w.start).collect::<Vec<_>>(), [0, 25, 50, 75, 100]);
        assert_eq!(w[0].scored_from, 0);
        assert!(w[1..].iter().all(|w| w.scored_from == 75));
        let mut scored = vec![0; 1000];
        for w in &w {
            for p in w.scored_from..100 {
                scored[w.start + p] += 1;
            }
        }
        assert!(
            scored[..200].iter().all(|&n| n == 1),
            "every token up to 200 scored once"
        );
        assert!(scored[200..].iter().all(|&n| n == 0));
    }
}
