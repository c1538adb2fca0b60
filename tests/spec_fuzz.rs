//! No input makes gptlab panic: thousands of random mutations of the shipped specs (and
//! random `--set` arguments) go through parsing, expansion and planning, and each either
//! succeeds or returns errors that name the file.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use gptlab::plan::plan;
use gptlab::spec::{SetArg, SpecFile};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PIECES: &[&str] = &[
    "0",
    "-1",
    "1e400",
    "nan",
    "inf",
    "18446744073709551616",
    "99999999999",
    "\"\"",
    "[]",
    "[1, [2]]",
    "{}",
    "{ a = 1 }",
    "true",
    "\"rope\"",
    "\"grouped_sum\"",
    "[[run]]",
    "[[phase]]",
    "[sweep]",
    "[model]",
    "name = \"a/b\"",
    "=",
    ".",
    "\"",
    "'",
    "#",
    "\n",
    "é",
    "\u{0}",
    "model.n_head",
    "phase.0.steps",
    "experiment.name",
    "init_from = \"/nope\"",
];

fn mutate(text: &str, r: &mut ChaCha8Rng) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for _ in 0..r.gen_range(1..4) {
        let at = r.gen_range(0..=s.len());
        match r.gen_range(0..5) {
            0 if !s.is_empty() => {
                let end = (at + r.gen_range(1..20)).min(s.len());
                s.drain(at.min(end)..end);
            }
            1 => s
                .splice(at..at, PIECES[r.gen_range(0..PIECES.len())].chars())
                .for_each(drop),
            2 => {
                // Replace the next number with a hostile one.
                if let Some(p) = s[at.min(s.len())..].iter().position(|c| c.is_ascii_digit()) {
                    let start = at + p;
                    let end = s[start..]
                        .iter()
                        .position(|c| !c.is_ascii_digit() && *c != '.' && *c != 'e')
                        .map_or(s.len(), |q| start + q);
                    s.splice(start..end, PIECES[r.gen_range(0..7)].chars()).for_each(drop);
                }
            }
            3 => {
                let lines: Vec<String> = s.iter().collect::<String>().lines().map(str::to_string).collect();
                if !lines.is_empty() {
                    let l = &lines[r.gen_range(0..lines.len())];
                    s.splice(at..at, format!("\n{l}\n").chars()).for_each(drop);
                }
            }
            _ => s.insert(at, char::from(r.gen_range(32u8..127))),
        }
    }
    s.into_iter().collect()
}

#[test]
fn mutated_specs_and_set_arguments_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let specs: Vec<String> = ["rope_vs_abs", "gqa_heads", "smoke", "smoke_gqa", "gqa_grouped_sum"]
        .iter()
        .map(|n| std::fs::read_to_string(root.join(format!("experiments/{n}.toml"))).unwrap())
        .collect();
    let mut r = ChaCha8Rng::seed_from_u64(2026);
    let (mut ok, mut rejected) = (0, 0);
    for i in 0..3000 {
        let text = mutate(&specs[i % specs.len()], &mut r);
        let sets: Vec<SetArg> = (0..r.gen_range(0..3))
            .filter_map(|_| {
                format!(
                    "{}={}",
                    [
                        "model.n_head",
                        "phase.0.seq_len",
                        "sweep.x",
                        "run",
                        "train.lr",
                        "model.position",
                        "a..b"
                    ][r.gen_range(0..7)],
                    PIECES[r.gen_range(0..PIECES.len())]
                )
                .parse()
                .ok()
            })
            .collect();
        let path = root.join("experiments/fuzzed.toml");
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let spec = SpecFile::parse(&path, &text)?;
            let runs = spec.expand(&sets)?;
            // Planning reads the corpus; do it for a sample of the inputs to keep the test quick.
            if i % 10 == 0 {
                plan(&runs, Path::new("runs"), &|_, _| None).map(|_| ())
            } else {
                Ok(())
            }
        }));
        match outcome {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                assert!(
                    e.to_string().contains("fuzzed.toml"),
                    "error without the file name:\n{e}\ninput:\n{text}"
                );
                rejected += 1;
            }
            Err(_) => panic!("panicked on input (sets {sets:?}):\n{text}"),
        }
    }
    assert!(
        ok > 100 && rejected > 100,
        "mutations should both pass and fail: {ok} ok, {rejected} rejected"
    );
}
