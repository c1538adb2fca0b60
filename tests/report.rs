//! Reports: the figures' structure, the summary's numbers, sampling, and the page in a real
//! browser.

use std::collections::BTreeMap;
use std::path::Path;

mod common;

use assert_cmd::Command;
use common::dump_dom;
use dfdx::prelude::*;
use gptlab::model::{Gpt, ModelConfig, ModelOptions, Position};
use gptlab::report::{Boundary, Curve, LAST_N, PALETTE, Series, ema, loss_chart, summarise};
use gptlab::run_dir::MetricsRow;
use gptlab::sample::{SampleOptions, generate};
use predicates::prelude::*;

fn hex(c: &plotters::style::RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// Counts of each element, and every text, in document order: the figure's structure.
fn structure(svg: &str) -> (BTreeMap<String, usize>, Vec<String>) {
    let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
    let mut counts = BTreeMap::new();
    let mut texts = vec![];
    for node in doc.descendants().filter(|n| n.is_element()) {
        *counts.entry(node.tag_name().name().to_string()).or_insert(0) += 1;
        if node.tag_name().name() == "text" {
            texts.push(node.text().unwrap_or("").trim().to_string());
        }
    }
    (counts, texts)
}

/// Polylines drawn in `color` with `width`.
fn polylines(svg: &str, color: &str, width: &str) -> usize {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| {
            n.tag_name().name() == "polyline"
                && n.attribute("stroke") == Some(color)
                && n.attribute("stroke-width") == Some(width)
        })
        .count()
}

fn fixed_curves() -> (Vec<Curve>, Vec<Boundary>) {
    let curve = |label: &str, offset: f64| Curve {
        label: label.into(),
        seeds: vec![Series {
            train: (1..=80)
                .map(|s| {
                    (
                        s as f64,
                        4.2 - 2.5 * (s as f64 / 80.0).sqrt() + offset + 0.05 * ((s * 7 % 5) as f64),
                    )
                })
                .collect(),
            val: (1..=4)
                .map(|i| ((i * 20) as f64, 4.0 - 0.5 * i as f64 + offset))
                .collect(),
        }],
    };
    (
        vec![
            curve("position=absolute", 0.0),
            curve("position=rope", -0.1),
            curve("position=none", 0.2),
        ],
        vec![Boundary {
            step: 60.5,
            label: "seq 128 → 256".into(),
        }],
    )
}

#[test]
fn the_loss_figure_has_one_curve_per_run_validation_markers_and_the_phase_line() {
    let (curves, boundaries) = fixed_curves();
    let svg = loss_chart(
        "study: training loss",
        &curves,
        &boundaries,
        0.6,
        "nats per character",
        gptlab::report::WIDE,
    )
    .unwrap();
    for (i, c) in curves.iter().enumerate() {
        let color = hex(&PALETTE[i]);
        // One smoothed curve per run, plus its legend swatch.
        assert_eq!(polylines(&svg, &color, "2"), 2, "run {} ({color})", c.label);
        assert_eq!(polylines(&svg, &color, "1"), 1, "raw curve of {}", c.label);
    }
    let (counts, texts) = structure(&svg);
    assert!(texts.iter().any(|t| t == "seq 128 → 256"), "{texts:?}");
    assert!(
        texts.iter().any(|t| t == "step") && texts.iter().any(|t| t.starts_with("loss (nats")),
        "{texts:?}"
    );
    for c in &curves {
        assert!(texts.contains(&c.label), "legend lacks {}", c.label);
    }
    assert_eq!(counts.get("circle"), Some(&12), "4 validation markers per run");
    assert!(polylines(&svg, "#555555", "1") > 5, "the dashed boundary line");

    // Golden: the element counts and texts of this fixed figure. Regenerate deliberately with
    // GPTLAB_UPDATE_GOLDEN=1 when the figure is meant to change.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/loss_structure.txt");
    let now = format!("{counts:?}\n{}\n", texts.join("\n"));
    if std::env::var("GPTLAB_UPDATE_GOLDEN").is_ok() {
        std::fs::write(&golden, &now).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&golden).expect("golden file present"),
        now,
        "the figure's structure changed"
    );
}

#[test]
fn a_diverged_run_is_drawn_up_to_where_it_was_finite() {
    let (mut curves, boundaries) = fixed_curves();
    curves[1].seeds[0].train[50].1 = f64::NAN;
    curves[1].seeds[0].train.truncate(51);
    curves[2].seeds[0].train[10].1 = f64::INFINITY;
    let svg = loss_chart(
        "nan",
        &curves,
        &boundaries,
        0.9,
        "nats per character",
        gptlab::report::WIDE,
    )
    .unwrap();
    roxmltree::Document::parse(&svg).unwrap();
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "non-finite values leaked into the SVG"
    );
    // Many steps and runs stay readable: series are thinned.
    let many: Vec<Curve> = (0..12)
        .map(|i| Curve {
            label: format!("run {i}"),
            seeds: vec![Series {
                train: (1..=100_000)
                    .map(|s| (s as f64, 0.5 + 4.5 / (s as f64).sqrt() + i as f64 * 0.01))
                    .collect(),
                val: vec![],
            }],
        })
        .collect();
    let svg = loss_chart("big", &many, &[], 0.9, "nats per character", gptlab::report::WIDE).unwrap();
    assert!(svg.len() < 2_000_000, "SVG of {} bytes", svg.len());
}

#[test]
fn ema_with_bias_correction_matches_the_definition() {
    let pts: Vec<(f64, f64)> = vec![(1.0, 4.0), (2.0, 2.0), (3.0, 3.0)];
    let e = ema(&pts, 0.5);
    // avg_t = 0.5 avg + 0.5 x; weight_t = 1 - 0.5^t.
    let expected = [
        4.0,
        (0.25 * 4.0 + 0.5 * 2.0) / 0.75,
        (0.125 * 4.0 + 0.25 * 2.0 + 0.5 * 3.0) / 0.875,
    ];
    for (got, want) in e.iter().zip(expected) {
        assert!((got.1 - want).abs() < 1e-12, "{got:?} vs {want}");
    }
    assert_eq!(ema(&pts, 0.0), pts);
}

#[test]
fn summary_numbers_equal_an_independent_computation() {
    let rows: Vec<MetricsRow> = (1..=120)
        .map(|s| MetricsRow {
            run: "r".into(),
            phase: usize::from(s > 100),
            step: s,
            seq_len: 8,
            train_loss: 4.0 - s as f32 / 100.0 + if s % 7 == 0 { 0.3 } else { 0.0 },
            val_loss: (s % 25 == 0).then(|| 3.9 - s as f32 / 110.0),
            lr: 1e-3,
            grad_norm: 1.0,
            step_ms: 10.0 + s as f64,
            tokens_per_s: 1000.0 + (s % 13) as f64,
            attn_ms: Some(2.0 + (s % 3) as f64),
            attn_mem_mb: Some(5.0),
            attn_mem_mb_analytic: Some(5.0),
            peak_rss_mb: Some(100.0 + s as f64),
            seed: None,
            train_bpb: None,
            val_bpb: None,
        })
        .collect();
    let s = summarise("r", None, "position=rope", "complete".into(), &rows, 120, 1234);
    let train: Vec<f64> = rows.iter().map(|r| r.train_loss as f64).collect();
    let last: f64 = train[120 - LAST_N..].iter().sum::<f64>() / LAST_N as f64;
    assert!((s.train_loss_last50.unwrap() - last).abs() < 1e-9);
    assert_eq!(s.final_train_loss, Some(train[119]));
    assert_eq!(
        s.best_train_loss,
        Some(train.iter().cloned().fold(f64::INFINITY, f64::min))
    );
    // Validation ran at steps 25, 50, 75 and 100, its loss falling each time.
    let val_at = |step: f32| (3.9 - step / 110.0) as f64;
    assert_eq!(s.final_val_loss, Some(val_at(100.0)));
    assert_eq!(
        s.best_val_loss,
        Some(val_at(25.0).min(val_at(50.0)).min(val_at(75.0)).min(val_at(100.0)))
    );
    let mut tps: Vec<f64> = rows.iter().map(|r| r.tokens_per_s).collect();
    tps.sort_by(f64::total_cmp);
    assert_eq!(s.tokens_per_s, Some((tps[59] + tps[60]) / 2.0));
    assert!((s.train_s - rows.iter().map(|r| r.step_ms).sum::<f64>() / 1e3).abs() < 1e-9);
    assert_eq!((s.steps, s.total_steps, s.params), (120, 120, 1234));
    // A "last 50" figure needs 50 steps.
    let short = summarise("r", None, "", "complete".into(), &rows[..49], 49, 1);
    assert_eq!(short.train_loss_last50, None);
}

fn tiny_model() -> Gpt<Cpu> {
    let config = ModelConfig {
        vocab_size: 11,
        block_size: 12,
        arch: ModelOptions {
            n_layer: 1,
            n_embd: 16,
            n_head: 2,
            n_kv_head: Some(1),
            position: Position::Rope,
            dropout: 0.1,
            rope_base: 10_000.0,
            ..ModelOptions::default()
        },
    };
    Gpt::new(&Cpu::default(), &config, 21)
}

#[test]
fn sampling_is_seeded_and_top_k_1_is_the_argmax_continuation() {
    let model = tiny_model();
    let prompt = vec![1, 2, 3];
    let opts = SampleOptions {
        max_new_tokens: 20,
        temperature: 1.0,
        top_k: 5,
        seed: 9,
    };
    assert_eq!(generate(&model, &prompt, &opts), generate(&model, &prompt, &opts));
    assert_ne!(
        generate(&model, &prompt, &opts),
        generate(
            &model,
            &prompt,
            &SampleOptions {
                seed: 10,
                ..opts.clone()
            }
        )
    );

    let greedy = generate(
        &model,
        &prompt,
        &SampleOptions {
            top_k: 1,
            ..opts.clone()
        },
    );
    // The argmax continuation, computed step by step with the block-size window.
    let mut tokens = prompt.clone();
    for _ in 0..20 {
        let ctx = &tokens[tokens.len().saturating_sub(12)..];
        let logits = model.eval_logits(ctx, 1, ctx.len()).as_vec();
        let last = &logits[(ctx.len() - 1) * 11..];
        let best = (0..11).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        tokens.push(best);
    }
    assert_eq!(greedy, tokens[3..].to_vec());
}

#[test]
fn the_report_page_loads_every_figure_in_a_headless_browser_and_sampling_errors_are_clear() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = common::OutDirs::new();
    let (runs, reports) = (&out.runs, &out.reports);
    let [a, b, c, d] = out.args();
    let dirs = [a, b, c, d, "-q"];
    Command::cargo_bin("gptlab")
        .unwrap()
        .current_dir(root)
        .args(["sweep", "experiments/smoke_gqa.toml"])
        .args(dirs)
        .assert()
        .success();
    // A partly finished experiment still reports, naming what is unfinished.
    Command::cargo_bin("gptlab")
        .unwrap()
        .current_dir(root)
        .args(["run", "experiments/smoke.toml", "--only", "rope"])
        .args(dirs)
        .assert()
        .success();
    let summary = std::fs::read_to_string(reports.join("smoke/summary.md")).unwrap();
    assert!(
        summary.contains("| absolute | position=absolute | not started |"),
        "{summary}"
    );
    assert!(summary.contains("Not finished: absolute"), "{summary}");

    let index = reports.join("smoke_gqa/index.html");
    let html = std::fs::read_to_string(&index).unwrap();
    let figures = html.matches("<img ").count();
    // Loss, then per swept value: final and best validation loss and speed, three probes, KV
    // bytes (20 steps: no "last 50" train loss; no prompts, so no decode speed); the loss by
    // position (one phase: evaluated at its one length, so no loss-by-length figure).
    assert_eq!(figures, 9);
    assert!(html.contains("position_loss.svg") && !html.contains("length.svg"));
    assert!(
        !html.contains("on different text"),
        "one corpus: no warning under the figures"
    );
    assert!(!html.contains("final_train_loss.svg"), "a last-50 figure from 20 steps");
    let profile = tempfile::tempdir().unwrap();
    let dom = dump_dom(&index, profile.path());
    assert_eq!(
        dom.matches("class=\"loaded\"").count(),
        figures,
        "not every figure loaded:\n{dom}"
    );
    assert!(!dom.contains("<p class=\"broken\">"), "{dom}");
    assert_text_legible(&reports.join("smoke_gqa"), profile.path());
    assert_text_legible(&reports.join("smoke"), profile.path());

    // Remove one figure: the page says so visibly.
    std::fs::remove_file(reports.join("smoke_gqa/loss.svg")).unwrap();
    let dom = dump_dom(&index, profile.path());
    assert!(
        dom.contains("<p class=\"broken\">missing figure: loss.svg</p>"),
        "{dom}"
    );
    assert_eq!(dom.matches("class=\"loaded\"").count(), figures - 1);

    assert_sampling_continues_a_prompt_and_names_unknown_characters(&runs.join("smoke/rope/checkpoints/step_00000040"));
}

/// `gptlab sample` from the checkpoint `ckpt` continues a prompt, and names the characters of
/// one outside the vocabulary (exit 2).
fn assert_sampling_continues_a_prompt_and_names_unknown_characters(ckpt: &Path) {
    Command::cargo_bin("gptlab")
        .unwrap()
        .args([
            "sample",
            ckpt.to_str().unwrap(),
            "--prompt",
            "ROMEO:",
            "--tokens",
            "30",
            "--top-k",
            "1",
        ])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("ROMEO:"));
    Command::cargo_bin("gptlab")
        .unwrap()
        .args(["sample", ckpt.to_str().unwrap(), "--prompt", "naïve ☃"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("not in the vocabulary")
                .and(predicate::str::contains("'ï'"))
                .and(predicate::str::contains("'☃'")),
        );
}

#[test]
fn several_experiments_report_on_one_page_with_their_runs_named_by_experiment() {
    let out = common::OutDirs::new();
    let (tmp, reports, dirs) = (&out.tmp, &out.reports, out.args());
    let mut specs = vec![];
    for (name, position) in [("first", "absolute"), ("second", "rope")] {
        let text = common::TINY_SPEC
            .replace("[experiment]\n", &format!("[experiment]\nname = \"{name}\"\n"))
            .replace("dropout = 0.1", &format!("dropout = 0.1\nposition = \"{position}\""));
        let spec = common::write_spec(tmp.path(), &format!("{name}.toml"), &text);
        common::gptlab()
            .arg("run")
            .arg(&spec)
            .args(dirs)
            .args(["-q", "--no-report"])
            .assert()
            .success();
        specs.push(spec);
    }
    common::gptlab()
        .arg("report")
        .args(&specs)
        .args(dirs)
        .assert()
        .success()
        .stdout(predicate::str::contains("first+second"));
    let summary = std::fs::read_to_string(reports.join("first+second/summary.csv")).unwrap();
    let runs: Vec<&str> = summary.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(runs, ["first/default", "second/default"]);
    let page = std::fs::read_to_string(reports.join("first+second/index.html")).unwrap();
    assert!(
        page.contains("Spec: ") && page.matches("<h2>Spec: ").count() == 2,
        "both specs shown"
    );
    let comparison = std::fs::read_to_string(reports.join("first+second/comparison.csv")).unwrap();
    assert!(
        comparison
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("second/default,first/default,final_val_loss,1,"),
        "{comparison}"
    );
}

#[test]
fn runs_validated_on_other_text_are_not_compared_and_one_val_path_compares_them() {
    let out = common::OutDirs::new();
    let (tmp, reports, dirs) = (out.tmp.path(), &out.reports, out.args());
    // Two corpora from two parts of tiny-shakespeare (ASCII: any byte is a cut), and a
    // validation text of its own from a third.
    let text = std::fs::read_to_string(common::corpus_path()).unwrap();
    for (name, part) in [
        ("a.txt", 0..200_000),
        ("b.txt", 200_000..400_000),
        ("v.txt", 400_000..420_000),
    ] {
        std::fs::write(tmp.join(name), &text[part]).unwrap();
    }
    let sweep = "[sweep]\n\"data.path\" = [\"a.txt\", \"b.txt\"]\n";
    for (name, set) in [
        ("held_out", "data.val_fraction=0.1"),
        ("one_val", "data.val_path=\"v.txt\""),
    ] {
        let spec = common::tiny_spec(tmp, name, sweep);
        common::gptlab()
            .current_dir(tmp)
            .arg("run")
            .arg(&spec)
            .args(dirs)
            .args(["-q", "--set", set])
            .assert()
            .success();
    }
    let read = |name: &str, file: &str| std::fs::read_to_string(reports.join(name).join(file)).unwrap();
    // Each run holds out 10% of its own corpus: a difference would be the text's.
    let summary = read("held_out", "summary.md");
    assert!(
        summary.contains(
            "path=b.txt is not compared with path=a.txt: their validation losses are on different text \
             (path=b.txt: 10% of `b.txt` held out; path=a.txt: 10% of `a.txt` held out)"
        ),
        "{summary}"
    );
    assert_eq!(read("held_out", "comparison.csv").lines().skip(1).count(), 0);
    // The figures still draw both; the captions of their losses say the text differs.
    let page = read("held_out", "index.html");
    for figure in page.split("<figure").skip(1) {
        let src = figure
            .split("src=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        let of_loss = src.contains("loss") || src == "length.svg";
        let warned = figure.contains("trained or validated on different text");
        assert_eq!(warned, of_loss, "{figure}");
    }
    // One validation file for both: compared.
    let comparison = read("one_val", "comparison.csv");
    assert!(
        comparison
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("path=b.txt,path=a.txt,final_val_loss,1,")),
        "{comparison}"
    );
    assert!(!read("one_val", "summary.md").contains("not compared"));
}

/// The smallest text of every figure of the page in `dir`, as shown in headless Chromium in
/// windows 1,400 and 800 px wide (the image's width on the page over the SVG's own width,
/// times its smallest `font-size`), is at least the page's small text: 12 px.
fn assert_text_legible(dir: &std::path::Path, profile: &std::path::Path) {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..].split('"').next()?.to_string())
    };
    for width in [1400, 800] {
        let dom = common::dump_dom_at(&dir.join("index.html"), profile, (width, 1000));
        let imgs: Vec<String> = dom
            .split("<img ")
            .skip(1)
            .map(|t| format!(" {}", t.split('>').next().unwrap()))
            .collect();
        assert!(!imgs.is_empty(), "no figures in {}", dir.display());
        for img in imgs {
            let src = attr(&img, "src").unwrap();
            let shown: f64 = attr(&img, "data-shown")
                .unwrap_or_else(|| panic!("{src} not measured: {img}"))
                .parse()
                .unwrap();
            let svg = std::fs::read_to_string(dir.join(&src)).unwrap();
            let own: f64 = attr(&svg[..svg.find('>').unwrap()], "width").unwrap().parse().unwrap();
            let smallest = svg
                .split(" font-size=\"")
                .skip(1)
                .map(|s| s.split('"').next().unwrap().parse::<f64>().unwrap())
                .fold(f64::INFINITY, f64::min);
            let on_screen = smallest * shown / own;
            assert!(
                on_screen >= 12.0,
                "{src} at a {width}-px window: text of {smallest:.1} px in a {own}-px SVG shown {shown:.0} px wide is {on_screen:.1} px"
            );
        }
    }
}
