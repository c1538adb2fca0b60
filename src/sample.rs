//! Text generation from a model: temperature, top-k, seeded.

use std::path::Path;

use anyhow::{Context, Result};
use dfdx::prelude::*;
use rand::Rng;

use crate::checkpoint;
use crate::data::Tokenizer;
use crate::model::{Backend, Float, Gpt, KvCache, Pass};
use crate::seed::{Stream, stream};

/// How to continue a prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// Tokens to generate (characters with the `char` tokenizer).
    pub max_new_tokens: usize,
    /// Softmax temperature (> 0).
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Seed of the sampling stream.
    pub seed: u64,
}

/// The most tokens a sample may have: a sample is read by a person, and a mistyped count
/// (`500000000`) would keep a report generating after its runs have trained.
pub const MAX_NEW_TOKENS: usize = 100_000;

/// Why `t` cannot be a sampling temperature, if it cannot: 0 is greedy, above 0 scales the
/// logits (`[sample] temperature` and `--temperature` alike).
pub fn temperature_problem(t: f64) -> Option<String> {
    (!(t.is_finite() && t >= 0.0)).then(|| {
        format!(
            "must be 0 (greedy) or a positive number, not {}",
            crate::format::as_written(t)
        )
    })
}

/// Why `n` cannot be a sample's length, if it cannot: more than [`MAX_NEW_TOKENS`].
pub fn tokens_problem(n: usize) -> Option<String> {
    (n > MAX_NEW_TOKENS).then(|| format!("{n} is beyond the {MAX_NEW_TOKENS} tokens a sample may have"))
}

/// Why `prompt` cannot be continued, if it cannot, before any tokenizer is at hand: it is
/// empty (generation continues a context of at least one token).
pub fn empty_prompt_problem(prompt: &str) -> Option<String> {
    prompt.is_empty().then(|| EMPTY_PROMPT.to_string())
}

/// What an empty prompt (or one its tokenizer encodes as no token) is told.
const EMPTY_PROMPT: &str = "is empty: give at least one character to continue";

/// Why `prompt` cannot be continued with `tokenizer`, if it cannot: it is empty, or holds
/// characters outside the vocabulary. `[sample] prompts` are checked with this before a run
/// trains, `--prompt` before a token is drawn, and the report's samples when they are drawn.
pub fn prompt_problem(prompt: &str, tokenizer: &Tokenizer) -> Option<String> {
    encode_prompt(prompt, tokenizer).err()
}

/// `prompt`'s tokens, or why it cannot be continued ([`prompt_problem`]'s reasons).
fn encode_prompt(prompt: &str, tokenizer: &Tokenizer) -> Result<Vec<u32>, String> {
    if let Some(why) = empty_prompt_problem(prompt) {
        return Err(why);
    }
    match tokenizer.encode(prompt) {
        Err(why) => Err(format!("cannot be encoded: {why}")),
        Ok(ids) if ids.is_empty() => Err(EMPTY_PROMPT.to_string()),
        Ok(ids) => Ok(ids),
    }
}

impl SampleOptions {
    /// Why these options cannot sample, if they cannot: the temperature must be 0 (greedy) or
    /// a positive number, the tokens at most [`MAX_NEW_TOKENS`].
    pub fn problem(&self) -> Option<String> {
        if let Some(why) = temperature_problem(self.temperature) {
            return Some(format!("--temperature {why}"));
        }
        tokens_problem(self.max_new_tokens).map(|why| format!("--tokens {why}"))
    }
}

/// `gptlab sample`: loads the checkpoint (or a run folder's newest) at `dir` on the CPU and
/// returns `prompt` followed by its continuation. Options it cannot use, an empty prompt, a path
/// that does not exist and characters outside the vocabulary are usage errors (exit 2), found
/// before any token is drawn.
pub fn from_checkpoint(dir: &Path, prompt: &str, opts: &SampleOptions) -> Result<String, crate::Error> {
    use crate::Error::Usage;
    if let Some(why) = opts.problem() {
        return Err(Usage(why));
    }
    if let Some(why) = empty_prompt_problem(prompt) {
        return Err(Usage(format!("--prompt {why}")));
    }
    if !dir.exists() {
        return Err(Usage(format!("{}: no such checkpoint or run folder", dir.display())));
    }
    let dev = Cpu::default();
    let sampler = Sampler::load(&dev, dir).with_context(|| format!("loading checkpoint {}", dir.display()))?;
    if let Some(why) = prompt_problem(prompt, &sampler.tokenizer) {
        return Err(Usage(format!("--prompt {why}")));
    }
    Ok(format!("{prompt}{}", sampler.generate(prompt, opts)?))
}

/// A model and its vocabulary, loaded from a checkpoint folder.
pub struct Sampler<D: Backend> {
    /// The model, in evaluation mode.
    pub model: Gpt<D>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

impl<D: Backend> Sampler<D> {
    /// Loads a verified checkpoint folder (`.../checkpoints/step_N`), or the newest
    /// checkpoint of a run folder (`runs/<experiment>/<run>`).
    pub fn load(dev: &D, dir: &Path) -> Result<Self> {
        let run_dir = crate::run_dir::RunDir::new(dir);
        let newest = run_dir.checkpoints_path().is_dir().then(|| run_dir.newest_checkpoint());
        let dir = match newest {
            None if !crate::checkpoint::is_checkpoint(dir) => {
                let mut seeds: Vec<String> = std::fs::read_dir(dir)
                    .map(|entries| {
                        entries
                            .filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.starts_with("seed="))
                            .collect()
                    })
                    .unwrap_or_default();
                seeds.sort();
                if seeds.is_empty() {
                    anyhow::bail!(
                        "{} is neither a checkpoint (no meta.json) nor a run folder (no checkpoints/)",
                        dir.display()
                    );
                }
                anyhow::bail!(
                    "{} is a run trained over several seeds: name one of its seed folders ({})",
                    dir.display(),
                    seeds
                        .iter()
                        .map(|s| dir.join(s).display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            None => dir.to_path_buf(),
            Some(Some(newest)) => newest,
            Some(None) => anyhow::bail!("run folder {} has no checkpoint", dir.display()),
        };
        let dir = dir.as_path();
        let loaded = checkpoint::read_weights(dir)?;
        let mut model = Gpt::new(dev, &loaded.meta.model, 0);
        loaded
            .load_weights(&mut model)
            .with_context(|| format!("loading {}", dir.display()))?;
        // A checkpoint lives in `<run>/checkpoints/step_N/`; the run folder keeps the
        // tokenizer's file.
        let run = dir.parent().and_then(Path::parent).unwrap_or(dir);
        let tokenizer = crate::run_dir::RunDir::new(run).tokenizer_of(&loaded.meta)?;
        Ok(Self { model, tokenizer })
    }

    /// Continues `prompt`; characters outside the vocabulary are an error naming them.
    pub fn generate(&self, prompt: &str, opts: &SampleOptions) -> Result<String> {
        Ok(self.generate_timed(prompt, opts)?.0)
    }

    /// [`Sampler::generate`], also returning the decode speed in tokens per second.
    pub fn generate_timed(&self, prompt: &str, opts: &SampleOptions) -> Result<(String, f64)> {
        let ids = encode_prompt(prompt, &self.tokenizer).map_err(|why| anyhow::anyhow!("the prompt {why}"))?;
        let ids: Vec<usize> = ids.into_iter().map(|id| id as usize).collect();
        let (new, speed) = generate_timed(&self.model, &ids, opts);
        Ok((self.tokenizer.decode_usize(&new), speed))
    }
}

/// Appends `opts.max_new_tokens` tokens to `prompt`, each drawn from the model's distribution
/// for the last position (the context cropped to the block size); returns only the new tokens.
/// Uses the key/value cache; see [`generate_uncached`] for the same without it.
pub fn generate<D: Backend>(model: &Gpt<D>, prompt: &[usize], opts: &SampleOptions) -> Vec<usize> {
    generate_timed(model, prompt, opts).0
}

/// [`generate`], also returning the decode speed in tokens per second over the steps the
/// cache served (while the context fits the block; 0 if none did).
pub fn generate_timed<D: Backend>(model: &Gpt<D>, prompt: &[usize], opts: &SampleOptions) -> (Vec<usize>, f64) {
    let block = model.config.block_size;
    let mut rng = stream(opts.seed, Stream::Sample, 0);
    let mut tokens = prompt.to_vec();
    // The cache holds tokens[cache_start..]; `logits` follow its last token.
    let mut cache_start = tokens.len().saturating_sub(block);
    let mut cache = KvCache::new(model.config.arch.n_layer);
    let mut logits = extend(model, &tokens[cache_start..], &mut cache);
    let (mut cached_steps, mut cached_s) = (0usize, 0.0f64);
    for _ in 0..opts.max_new_tokens {
        let next = pick(&logits, opts.temperature, opts.top_k, &mut rng);
        tokens.push(next);
        let window_start = tokens.len().saturating_sub(block);
        if window_start == cache_start {
            let t0 = std::time::Instant::now();
            logits = extend(model, &[next], &mut cache);
            cached_s += t0.elapsed().as_secs_f64();
            cached_steps += 1;
        } else {
            // Past the block size the window slides and every position shifts, exactly as the
            // uncached model sees it: one batched pass refills the cache from the new window.
            cache_start = window_start;
            cache = KvCache::new(model.config.arch.n_layer);
            logits = extend(model, &tokens[cache_start..], &mut cache);
        }
    }
    let speed = if cached_steps > 0 {
        cached_steps as f64 / cached_s.max(1e-9)
    } else {
        0.0
    };
    (tokens.split_off(prompt.len()), speed)
}

/// Runs `tokens` through `model` after the positions `cache` holds, extending it; returns the
/// logits of the last of them.
fn extend<D: Backend>(model: &Gpt<D>, tokens: &[usize], cache: &mut KvCache) -> Vec<Float> {
    let (t, v) = (tokens.len(), model.config.vocab_size);
    let logits = model.forward(tokens, 1, t, NoneTape, Pass::Decode(cache));
    logits.as_vec().split_off((t - 1) * v)
}

/// Generation that recomputes the whole context for every token: the reference for the cache.
pub fn generate_uncached<D: Backend>(model: &Gpt<D>, prompt: &[usize], opts: &SampleOptions) -> Vec<usize> {
    let block = model.config.block_size;
    let v = model.config.vocab_size;
    let mut rng = stream(opts.seed, Stream::Sample, 0);
    let mut tokens = prompt.to_vec();
    for _ in 0..opts.max_new_tokens {
        let context = &tokens[tokens.len().saturating_sub(block)..];
        let t = context.len();
        let logits = model.eval_logits(context, 1, t).as_vec();
        let last = &logits[(t - 1) * v..t * v];
        tokens.push(pick(last, opts.temperature, opts.top_k, &mut rng));
    }
    tokens.split_off(prompt.len())
}

/// Draws a token from `softmax(logits / temperature)` restricted to the `top_k` largest.
pub fn pick(logits: &[Float], temperature: f64, top_k: usize, rng: &mut impl Rng) -> usize {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Ties go to the lower id, so top-k 1 is the argmax with a fixed rule.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if temperature == 0.0 {
        return order[0]; // greedy
    }
    let k = if top_k == 0 {
        logits.len()
    } else {
        top_k.min(logits.len())
    };
    let kept = &order[..k];
    let max = logits[kept[0]] as f64;
    let weights: Vec<f64> = kept
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.r#gen::<f64>() * total;
    for (&i, w) in kept.iter().zip(&weights) {
        if r < *w {
            return i;
        }
        r -= w;
    }
    kept[k - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(temperature: f64) -> SampleOptions {
        SampleOptions {
            max_new_tokens: 1,
            temperature,
            top_k: 0,
            seed: 0,
        }
    }

    #[test]
    fn a_temperature_is_zero_or_positive_and_finite() {
        for ok in [0.0, 1e-6, 0.8, 2.0] {
            assert_eq!(at(ok).problem(), None, "{ok}");
        }
        for bad in [-1.0, -0.0 - 1e-9, f64::NAN, f64::INFINITY] {
            let why = at(bad).problem().unwrap_or_else(|| panic!("{bad} accepted"));
            let written = crate::format::as_written(bad);
            assert!(why.contains("--temperature") && why.contains(&written), "{why}");
        }
    }

    #[test]
    fn bad_options_and_an_empty_prompt_are_usage_errors_before_any_checkpoint_is_read() {
        let missing = Path::new("/nonexistent/checkpoint");
        let bad = from_checkpoint(missing, "To be", &at(-1.0)).unwrap_err();
        assert_eq!(bad.exit_code(), 2, "{bad}");
        let empty = from_checkpoint(missing, "", &at(1.0)).unwrap_err();
        assert!(empty.to_string().contains("--prompt is empty"), "{empty}");
        // A good request reaches the path: one that does not exist is a bad argument too; an
        // empty folder is not a checkpoint (a runtime error naming it).
        let absent = from_checkpoint(missing, "To be", &at(1.0)).unwrap_err();
        assert_eq!(absent.exit_code(), 2, "{absent}");
        assert!(
            absent.to_string().contains("/nonexistent/checkpoint: no such"),
            "{absent}"
        );
        let empty_dir = tempfile::tempdir().unwrap();
        let not_one = from_checkpoint(empty_dir.path(), "To be", &at(1.0)).unwrap_err();
        assert_eq!(not_one.exit_code(), 1, "{not_one}");
        assert!(not_one.to_string().contains("neither a checkpoint"), "{not_one}");
    }
}
