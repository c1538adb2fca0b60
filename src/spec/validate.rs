//! Checks of a resolved run that need no data: sizes that cannot build, values out of range.

use super::RunConfig;
use crate::format::as_written;
use crate::model::{as_trained, shown_as_trained};

/// A problem and the keys involved; the error is placed on whichever of them was set last
/// (a `--set` beats the run, the run beats the file), since that is the one the user changed.
pub struct Problem {
    /// Keys involved, most specific first.
    pub keys: Vec<String>,
    /// What is wrong.
    pub message: String,
}

/// Steps one phase may have; keeps step arithmetic far from overflow.
pub const MAX_STEPS: usize = 1_000_000_000;

/// Seeds one experiment may repeat its runs over.
pub const MAX_SEEDS: usize = 1_000;

/// The largest RoPE scaling factor `[eval] rope_scaling` takes: past it the stretched angles
/// no longer tell positions apart in f32 (and a label would run to hundreds of digits).
pub const MAX_ROPE_FACTOR: f64 = 1024.0;

/// Every problem found.
pub fn check(c: &RunConfig) -> Vec<Problem> {
    let mut out = vec![];
    let mut bad = |keys: &[&str], message: String| {
        out.push(Problem {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            message,
        })
    };
    for p in c.model.problems() {
        let keys: Vec<String> = p.keys.iter().map(|k| format!("model.{k}")).collect();
        bad(&keys.iter().map(String::as_str).collect::<Vec<_>>(), p.message);
    }
    check_train(&c.train, &mut bad);
    check_phases(c, &mut bad);
    check_schedule(c, &mut bad);
    check_data(&c.data, &mut bad);
    check_seeds(c.experiment.seeds.as_deref(), &mut bad);
    check_eval(&c.eval, &mut bad);
    check_slurm(&c.slurm, &mut bad);
    if !(0.0..1.0).contains(&c.report.smoothing) {
        bad(
            &["report.smoothing"],
            format!("must be in [0, 1), not {}", as_written(c.report.smoothing)),
        );
    }
    let s = &c.sample;
    if let Some(why) = crate::sample::temperature_problem(s.temperature) {
        bad(&["sample.temperature"], why);
    }
    for (i, prompt) in s.prompts.iter().enumerate() {
        if let Some(why) = crate::sample::empty_prompt_problem(prompt) {
            bad(&["sample.prompts"], format!("prompt {} {why}", i + 1));
        }
    }
    if let Some(why) = crate::sample::tokens_problem(s.max_new_tokens) {
        bad(
            &["sample.max_new_tokens"],
            format!("{why} (samples are read on the report page)"),
        );
    }
    out
}

/// The learning-rate schedule's problems: rates, floors, warmups and decays that do not fit
/// the steps they span, settings for a schedule no phase uses, a micro-batch that does not
/// divide the batch.
fn check_schedule(c: &RunConfig, bad: &mut impl FnMut(&[&str], String)) {
    use crate::schedule::ScheduleKind as K;
    let t = &c.train;
    let (run_wide, own) = c.lr_schedules();
    let kinds: Vec<K> = own.iter().map(|o| o.map_or(run_wide.kind, |s| s.kind)).collect();
    let decays = kinds.iter().any(|k| *k != K::Constant);
    check_schedule_keys(t, decays, kinds.contains(&K::Wsd), bad);
    check_schedule_spans(c, run_wide, own, bad);
    match t.micro_batch_size {
        Some(0) => bad(&["train.micro_batch_size"], "must be at least 1".into()),
        Some(m) if !t.batch_size.is_multiple_of(m) => bad(
            &["train.micro_batch_size", "train.batch_size"],
            format!(
                "{m} does not divide batch_size {}: a step is a whole number of micro-batches",
                t.batch_size
            ),
        ),
        _ => {}
    }
}

/// The floor and `wsd` decay settings: one of each pair, in range, and only where a phase's
/// schedule decays (`decays`) or is `wsd`.
fn check_schedule_keys(t: &super::TrainSection, decays: bool, wsd: bool, bad: &mut impl FnMut(&[&str], String)) {
    if t.min_lr.is_some() && t.min_lr_ratio.is_some() {
        bad(
            &["train.min_lr_ratio", "train.min_lr"],
            "give min_lr or min_lr_ratio, not both".into(),
        );
    }
    if t.decay_steps.is_some() && t.decay_fraction.is_some() {
        bad(
            &["train.decay_fraction", "train.decay_steps"],
            "give decay_steps or decay_fraction, not both".into(),
        );
    }
    let set = |key: &str| match key {
        "train.min_lr" => t.min_lr.is_some(),
        "train.min_lr_ratio" => t.min_lr_ratio.is_some(),
        "train.decay_steps" => t.decay_steps.is_some(),
        "train.decay_fraction" => t.decay_fraction.is_some(),
        _ => t.decay_shape.is_some(),
    };
    for key in ["train.min_lr", "train.min_lr_ratio"]
        .into_iter()
        .filter(|k| set(k) && !decays)
    {
        bad(
            &[key],
            "applies to a decaying schedule (cosine, linear or wsd), and every phase here is constant".into(),
        );
    }
    for key in ["train.decay_steps", "train.decay_fraction", "train.decay_shape"]
        .into_iter()
        .filter(|k| set(k) && !wsd)
    {
        bad(
            &[key],
            "applies to schedule = \"wsd\" only, and no phase uses it".into(),
        );
    }
    if let Some(m) = t.min_lr
        && !(m.is_finite() && m >= 0.0 && m <= t.lr)
    {
        bad(
            &["train.min_lr"],
            format!("must be between 0 and train.lr ({}), not {m}", t.lr),
        );
    }
    if let Some(r) = t.min_lr_ratio
        && !(0.0..=1.0).contains(&r)
    {
        bad(&["train.min_lr_ratio"], format!("must be between 0 and 1, not {r}"));
    }
    if let Some(f) = t.decay_fraction
        && !(f > 0.0 && f <= 1.0)
    {
        bad(&["train.decay_fraction"], format!("must be in (0, 1], not {f}"));
    }
    if t.decay_steps == Some(0) {
        bad(&["train.decay_steps"], "must be at least 1".into());
    }
}

/// Warmups and `wsd` decays longer than the steps their schedule spans; a phase's own floor
/// above its peak.
fn check_schedule_spans(
    c: &RunConfig,
    run_wide: crate::schedule::LrSchedule,
    own: Vec<Option<crate::schedule::LrSchedule>>,
    bad: &mut impl FnMut(&[&str], String),
) {
    if c.train.warmup_steps > 0 && run_wide.steps == 0 && !c.phase.is_empty() {
        bad(
            &["train.warmup_steps"],
            "every phase has a schedule of its own, so the run-wide warmup applies to none".into(),
        );
    }
    let mut spans = vec![("train".to_string(), run_wide)];
    spans.extend(
        own.into_iter()
            .enumerate()
            .filter_map(|(i, s)| Some((format!("phase.{i}"), s?))),
    );
    for (at, s) in spans.into_iter().filter(|(_, s)| s.steps > 0) {
        let whose = if at == "train" {
            "the run-wide schedule".to_string()
        } else {
            format!("phase {}", &at[6..])
        };
        if s.warmup > s.steps {
            let msg = format!(
                "{} warmup steps are more than the {} steps of {whose}",
                s.warmup, s.steps
            );
            bad(&[&format!("{at}.warmup_steps")], msg);
        }
        if s.kind == crate::schedule::ScheduleKind::Wsd && s.warmup + s.decay > s.steps {
            let msg = format!(
                "warmup ({}) and decay ({}) are more than the {} steps of {whose}",
                s.warmup, s.decay, s.steps
            );
            bad(
                &[
                    "train.decay_steps",
                    "train.decay_fraction",
                    &format!("{at}.warmup_steps"),
                ],
                msg,
            );
        }
        if s.kind != crate::schedule::ScheduleKind::Constant && s.min > s.peak {
            let msg = format!("the floor {} is above the peak {} of {whose}", s.min, s.peak);
            bad(&["train.min_lr", &format!("{at}.lr")], msg);
        }
    }
}

/// The `[data]` section's problems that need no file.
fn check_data(d: &super::DataSection, bad: &mut impl FnMut(&[&str], String)) {
    use crate::data::Format;
    if d.val_path.is_none() && !(d.val_fraction > 0.0 && d.val_fraction < 1.0) {
        // Without a held-out split, "validation" losses would be measured on training text.
        bad(
            &["data.val_fraction"],
            format!(
                "must be above 0 and below 1, not {}: validation losses are measured on the held-out end of the text (or give val_path)",
                d.val_fraction
            ),
        );
    }
    if let Some(why) = d.tokenizer.problem() {
        bad(&["data.tokenizer"], why);
    }
    if d.format != Format::Tokens && d.dtype.is_some() {
        bad(
            &["data.dtype"],
            "applies to format = \"tokens\" only: text is tokenised by gptlab, which picks the width".into(),
        );
    }
    if d.format != Format::Jsonl && d.text_field.is_some() {
        bad(
            &["data.text_field"],
            "applies to format = \"jsonl\" only: it names the field of each line that holds its text".into(),
        );
    }
    if d.format == Format::Tokens && d.tokenizer.learns_from_text() {
        let which = match d.tokenizer.is_char() {
            true => "`char` builds its vocabulary from text",
            false => "a trained BPE learns its vocabulary from text",
        };
        bad(
            &["data.tokenizer"],
            format!(
                "format = \"tokens\" needs the tokenizer the ids came from (e.g. \"gpt2\"), for decoding and the vocabulary size; {which}"
            ),
        );
    }
    if d.cache_dir
        .as_ref()
        .is_some_and(|c| c.as_os_str().to_string_lossy().trim().is_empty())
    {
        // An empty path is the working folder: token files would land beside the user's own.
        bad(
            &["data.cache_dir"],
            "must name a folder, not be empty (leave it out for the default cache)".into(),
        );
    }
    if d.include.is_empty() || d.include.iter().any(|p| p.trim().is_empty()) {
        bad(
            &["data.include"],
            "must list at least one non-empty glob pattern (e.g. [\"**/*.txt\"])".into(),
        );
    }
}

/// The `[train]` section's problems.
fn check_train(t: &super::TrainSection, bad: &mut impl FnMut(&[&str], String)) {
    if t.batch_size == 0 {
        bad(&["train.batch_size"], "must be at least 1".into());
    }
    // The optimiser computes in 32-bit floats: a β that rounds to 1 never moves its moment
    // (nothing is learned), an ε that rounds to 0 divides by zero.
    for (key, v) in [("train.lr", t.lr), ("train.eps", t.eps)] {
        if !(v.is_finite() && as_trained(v) > 0.0) {
            bad(
                &[key],
                format!("must be a positive number, not {}", shown_as_trained(v)),
            );
        }
    }
    for (key, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
        if !(0.0..1.0).contains(&as_trained(v)) {
            bad(&[key], format!("must be in [0, 1), not {}", shown_as_trained(v)));
        }
    }
    for (key, v) in [("train.weight_decay", t.weight_decay), ("train.grad_clip", t.grad_clip)] {
        if !(v.is_finite() && v >= 0.0) {
            bad(&[key], format!("must be a non-negative number, not {}", as_written(v)));
        }
    }
    if t.eval_batches == 0 || t.eval_batches > 10_000 {
        bad(
            &["train.eval_batches"],
            format!("must be between 1 and 10000, not {}", t.eval_batches),
        );
    }
    if t.keep_checkpoints == 0 {
        bad(&["train.keep_checkpoints"], "must be at least 1".into());
    }
}

/// The `[[phase]]` list's problems, and the tokens a step would hold.
fn check_phases(c: &RunConfig, bad: &mut impl FnMut(&[&str], String)) {
    if c.phase.is_empty() {
        bad(&["phase"], "at least one [[phase]] (seq_len, steps) is needed".into());
    }
    for (i, p) in c.phase.iter().enumerate() {
        let (steps, seq_len) = (format!("phase.{i}.steps"), format!("phase.{i}.seq_len"));
        if p.steps == 0 {
            bad(&[&steps], "must be at least 1".into());
        }
        if p.steps > MAX_STEPS {
            bad(
                &[&steps],
                format!("{} is beyond the {MAX_STEPS} steps a phase may have", p.steps),
            );
        }
        if p.seq_len == 0 {
            bad(&[&seq_len], "must be at least 1".into());
        }
        if p.seq_len > MAX_SEQ_LEN {
            bad(
                &[&seq_len],
                format!("{} is beyond the {MAX_SEQ_LEN} gptlab supports", p.seq_len),
            );
        }
        if let Some(lr) = p.lr
            && !(lr.is_finite() && lr > 0.0)
        {
            bad(
                &[&format!("phase.{i}.lr")],
                format!("must be a positive number, not {lr}"),
            );
        }
    }
    let longest = c.phase.iter().map(|p| p.seq_len).max().unwrap_or(0);
    let tokens_per_step = c.train.batch_size as u128 * longest as u128;
    if tokens_per_step > 16_777_216 {
        bad(
            &["train.batch_size"],
            format!("batch_size × seq_len = {tokens_per_step} tokens per step is beyond what gptlab trains"),
        );
    }
}

/// `[experiment] seeds`' problems: empty, repeated, too many.
fn check_seeds(seeds: Option<&[u64]>, bad: &mut impl FnMut(&[&str], String)) {
    if seeds.is_some_and(<[u64]>::is_empty) {
        bad(
            &["experiment.seeds"],
            "an empty list trains nothing: give at least one seed, or remove `seeds` to train once with `seed`".into(),
        );
    }
    let seeds = seeds.unwrap_or_default();
    if let Some(dup) = seeds.iter().enumerate().find(|(i, s)| seeds[..*i].contains(s)) {
        bad(
            &["experiment.seeds"],
            format!("seed {} is listed twice: each seed is one repeat of every run", dup.1),
        );
    }
    if seeds.len() > MAX_SEEDS {
        bad(
            &["experiment.seeds"],
            format!("{} seeds; at most {MAX_SEEDS} are allowed", seeds.len()),
        );
    }
}

/// Longest sequence a phase or an evaluation may have.
pub const MAX_SEQ_LEN: usize = 65_536;

/// The sbatch options gptlab's scripts set themselves, which `[slurm] extra` may not repeat,
/// and what each is for. Options with a key of their own (`--time`, `--partition`, …) are
/// set through that key.
const SET_BY_GPTLAB: [(&str, &str); 14] = [
    ("--array", "one task per run"),
    ("--signal", "the time-limit warning, from requeue_before_s"),
    ("--chdir", "the folder the runs are found from"),
    ("--output", "the task logs under runs/<experiment>/slurm/"),
    ("--error", "the task logs under runs/<experiment>/slurm/"),
    ("--open-mode", "logs that survive a requeue"),
    ("--requeue", "preemption-safe tasks"),
    ("--no-requeue", "preemption-safe tasks"),
    ("--job-name", "the experiment's name"),
    ("--dependency", "the report job after the array"),
    ("--time", "set slurm.time"),
    ("--partition", "set slurm.partition"),
    ("--cpus-per-task", "set slurm.cpus_per_task"),
    ("--mem", "set slurm.mem"),
];

/// A Slurm time limit as `sbatch --time` reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeLimit {
    /// At most this many seconds.
    Seconds(u64),
    /// No limit: `UNLIMITED`, `INFINITE`, `-1`, or `0` ("a time limit of zero requests that
    /// no time limit be imposed", sbatch(1)).
    Unlimited,
}

/// A Slurm time limit, from any of the forms `sbatch --time` takes: `MM`, `MM:SS`,
/// `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`, and the unlimited ones; `None` if it is none
/// of them.
pub fn slurm_time_limit(time: &str) -> Option<TimeLimit> {
    if ["unlimited", "infinite", "-1"].contains(&time.to_ascii_lowercase().as_str()) {
        return Some(TimeLimit::Unlimited);
    }
    match slurm_time_seconds(time)? {
        0 => Some(TimeLimit::Unlimited),
        s => Some(TimeLimit::Seconds(s)),
    }
}

/// The seconds of a time limit in one of the numeric forms of [`slurm_time_limit`].
fn slurm_time_seconds(time: &str) -> Option<u64> {
    let (days, rest) = match time.split_once('-') {
        Some((d, rest)) => (Some(d), rest),
        None => (None, time),
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Option<_>>()?;
    Some(match (days.map(num), parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(Some(d)), [h]) => d * 86_400 + h * 3600,
        (Some(Some(d)), [h, m]) => d * 86_400 + h * 3600 + m * 60,
        (Some(Some(d)), [h, m, s]) => d * 86_400 + h * 3600 + m * 60 + s,
        _ => return None,
    })
}

/// The bytes of a Slurm memory size as `--mem` reads it: a whole number with an optional
/// unit K, M, G or T in either case (powers of 1024; a `B` after it is allowed), megabytes
/// without one (Slurm's default unit). `0` is 0: Slurm reads it as all of a node's memory.
pub fn slurm_mem_bytes(mem: &str) -> Option<f64> {
    let (digits, unit) = mem.split_at(mem.find(|c: char| !c.is_ascii_digit()).unwrap_or(mem.len()));
    let power = match unit.to_ascii_uppercase().as_str() {
        "K" | "KB" => 1,
        "" | "M" | "MB" => 2,
        "G" | "GB" => 3,
        "T" | "TB" => 4,
        _ => return None,
    };
    Some(digits.parse::<f64>().ok()? * 1024f64.powi(power))
}

/// The `[slurm]` section's problems. Its values are written into a shell script, so each must
/// be one plain word: no spaces, quotes or line breaks.
fn check_slurm(s: &super::SlurmSection, bad: &mut impl FnMut(&[&str], String)) {
    let plain = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic() && !"'\"`$\\;&|<>".contains(c));
    for (key, value) in [
        ("slurm.partition", &s.partition),
        ("slurm.account", &s.account),
        ("slurm.qos", &s.qos),
        ("slurm.mem", &s.mem),
        ("slurm.time", &s.time),
    ] {
        if let Some(v) = value
            && !plain(v)
        {
            bad(
                &[key],
                format!("{v:?} is not one word (no spaces, quotes or shell characters)"),
            );
        }
    }
    let time = s.time.as_deref().map(|t| (t, slurm_time_limit(t)));
    if let Some((t, None)) = time {
        bad(
            &["slurm.time"],
            format!("{t:?} is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED)"),
        );
    }
    if let Some((_, Some(TimeLimit::Seconds(limit)))) = time
        && s.requeue_before_s > 0
        && s.requeue_before_s >= limit
    {
        bad(
            &["slurm.requeue_before_s", "slurm.time"],
            format!(
                "the warning {} s before the time limit comes before the task starts ({limit} s): lower requeue_before_s or raise time",
                s.requeue_before_s
            ),
        );
    }
    if let Some(mem) = &s.mem
        && slurm_mem_bytes(mem).is_none()
    {
        bad(
            &["slurm.mem"],
            format!("{mem:?} is not a memory size like 16G, 4000M or 4000"),
        );
    }
    for (key, v) in [
        ("slurm.cpus_per_task", s.cpus_per_task),
        ("slurm.max_parallel", s.max_parallel),
    ] {
        if v == Some(0) {
            bad(&[key], "must be at least 1".into());
        }
    }
    for line in &s.extra {
        let option = line.split(['=', ' ']).next().unwrap_or_default();
        if !line.starts_with("--") || line.contains(['\n', '\r']) || line.len() < 3 {
            bad(
                &["slurm.extra"],
                format!("{line:?} is not one sbatch option (one line starting with --, e.g. \"--constraint=a100\")"),
            );
        } else if let Some((_, why)) = SET_BY_GPTLAB.iter().find(|(o, _)| *o == option) {
            bad(
                &["slurm.extra"],
                format!("{option} is set by gptlab ({why}); a second one would change what the job does"),
            );
        }
    }
}

/// The `[eval]` section's problems.
fn check_eval(e: &super::EvalSection, bad: &mut impl FnMut(&[&str], String)) {
    for &l in &e.lengths {
        if l == 0 || l > MAX_SEQ_LEN {
            bad(
                &["eval.lengths"],
                format!("{l} is not a length between 1 and {MAX_SEQ_LEN}"),
            );
        }
    }
    if let Some(dup) = e.lengths.iter().enumerate().find(|(i, l)| e.lengths[..*i].contains(l)) {
        bad(&["eval.lengths"], format!("length {} is listed twice", dup.1));
    }
    match (e.mode, e.stride) {
        (super::EvalMode::Windows, Some(_)) => bad(
            &["eval.stride", "eval.mode"],
            "a stride is for mode = \"sliding\"; mode = \"windows\" cuts the text into non-overlapping windows".into(),
        ),
        (super::EvalMode::Sliding, Some(stride)) => {
            let shortest = e.lengths.iter().copied().filter(|&l| l > 0).min();
            if stride == 0 || shortest.is_some_and(|l| stride > l) {
                bad(
                    &["eval.stride"],
                    format!(
                        "must be between 1 and the shortest length ({}), not {stride}",
                        shortest.map_or_else(|| "each phase's seq_len".to_string(), |l| l.to_string())
                    ),
                );
            }
        }
        _ => {}
    }
    if e.tokens == 0 || e.tokens > 100_000_000 {
        bad(
            &["eval.tokens"],
            format!("must be between 1 and 100000000, not {}", e.tokens),
        );
    }
    for (i, s) in e.rope_scaling.iter().enumerate() {
        if !(s.factor.is_finite() && (1.0..=MAX_ROPE_FACTOR).contains(&s.factor)) {
            bad(
                &["eval.rope_scaling"],
                format!(
                    "factor must be a number of at least 1 and at most {MAX_ROPE_FACTOR}, not {}",
                    as_written(s.factor)
                ),
            );
        } else if e.rope_scaling[..i].contains(s) {
            bad(
                &["eval.rope_scaling"],
                format!("{s} is listed twice: each scaling is evaluated once"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slurm_mem_bytes;

    #[test]
    fn memory_sizes_read_as_sbatch_reads_them() {
        let mib = 1024.0 * 1024.0;
        for (mem, bytes) in [
            ("4000", 4000.0 * mib),
            ("512K", 512.0 * 1024.0),
            ("512k", 512.0 * 1024.0),
            ("16G", 16.0 * 1024.0 * mib),
            ("16g", 16.0 * 1024.0 * mib),
            ("16GB", 16.0 * 1024.0 * mib),
            ("2T", 2.0 * 1024.0 * 1024.0 * mib),
            ("0", 0.0),
        ] {
            assert_eq!(slurm_mem_bytes(mem), Some(bytes), "{mem}");
        }
        for mem in ["", "G", "16X", "1.5G", "-1G", "16 G", "16GiB", "lots"] {
            assert_eq!(slurm_mem_bytes(mem), None, "{mem}");
        }
    }
}
