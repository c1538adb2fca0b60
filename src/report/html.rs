//! `index.html`: one page that tells the story: the verdict, the comparison, the figures,
//! the tables, the samples, what produced each run, and the spec.

use super::samples::CheckpointSamples;
use super::tables::{Table, Tables};
use crate::provenance::Provenance;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Everything on the page.
pub struct Page<'a> {
    /// The experiment's name (the title).
    pub experiment: &'a str,
    /// The verdict, one sentence per line.
    pub verdict: &'a [String],
    /// `(file, caption)` of each figure; the first is drawn full width.
    pub figures: &'a [(String, String)],
    /// The tables.
    pub tables: &'a Tables<'a>,
    /// Each run's (and seed's) samples, by phase-end checkpoint.
    pub samples: &'a [(String, Vec<CheckpointSamples>)],
    /// The sequence length of a run's phase (by sample label), for the samples' headings.
    pub seq_len_of: &'a dyn Fn(&str, usize) -> Option<usize>,
    /// Each spec file's name and text.
    pub specs: &'a [(String, String)],
    /// Notes shown under the verdict (unfinished runs, mixed builds, changed settings).
    pub notes: &'a [String],
    /// Each run's `provenance.json`.
    pub provenance: &'a [(String, Provenance)],
    /// The unit of the losses, in words.
    pub unit: &'a str,
    /// Runs still training (`id: step 300 of 800`): the page then reloads itself and says it
    /// is live, when it was written and how far each run is.
    pub training: &'a [String],
}

/// Seconds between reloads of a live page.
pub const LIVE_REFRESH_S: u32 = 30;

const STYLE: &str = "\
body { font-family: system-ui, sans-serif; max-width: 1240px; margin: 1.5em auto; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
#verdict { background: #f3f7fb; border-left: 4px solid #1f77b4; padding: 0.6em 1em; }
#verdict li { margin: 0.3em 0; }
#live { background: #fff6e0; border-left: 4px solid #e8a317; padding: 0.4em 1em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: left; white-space: nowrap; }
th { background: #f4f4f4; } td.n { text-align: right; }
#compact td, #compact th { white-space: normal; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 520px), 1fr)); gap: 1em; }
figure { margin: 0; } figure.wide { grid-column: 1 / -1; } img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
.sample { font-family: ui-monospace, monospace; font-size: 13px; white-space: pre-wrap; background: #f7f7f7; padding: 0.6em 0.8em; border-radius: 4px; }
.prompt { background: #dbe7f5; font-weight: bold; }
.sample-meta { font-size: 12px; color: #666; margin: 0.2em 0; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; white-space: pre-wrap; }
.broken { color: #b00; font-weight: bold; } .note { color: #a60; }
";

fn table_html(t: &Table) -> String {
    let mut h = format!("<div class=\"scroll\"><table id=\"{}\">\n<tr>", t.id);
    for c in &t.header {
        h.push_str(&format!("<th>{}</th>", escape(c)));
    }
    h.push_str("</tr>\n");
    for r in &t.rows {
        h.push_str("<tr>");
        for c in r {
            // Numbers (and the dash of a number not measured) right-aligned, words left.
            let numeric = c.starts_with(|ch: char| ch.is_ascii_digit() || "−+–".contains(ch));
            let class = if numeric { " class=\"n\"" } else { "" };
            h.push_str(&format!("<td{class}>{}</td>", escape(c)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table></div>\n");
    h
}

fn samples_html(p: &Page<'_>) -> String {
    let mut h = String::from("<h2>Samples</h2>\n");
    if p.samples.iter().all(|(_, c)| c.is_empty()) {
        h.push_str("<p>No samples: add prompts under [sample] and finish a phase.</p>\n");
        return h;
    }
    for (label, ckpts) in p.samples {
        h.push_str(&format!("<h3>{}</h3>\n", escape(label)));
        if ckpts.is_empty() {
            h.push_str("<p>No phase-end checkpoint to sample from yet.</p>\n");
        }
        for c in ckpts {
            let seq = (p.seq_len_of)(label, c.phase)
                .map(|s| format!(", seq_len {s}"))
                .unwrap_or_default();
            for s in &c.samples {
                h.push_str(&format!(
                    "<p class=\"sample-meta\">after step {} (phase {}{seq}); temperature {}, top-k {}, seed {}; \
                     the prompt is highlighted</p>\n",
                    c.step, c.phase, s.temperature, s.top_k, s.seed
                ));
                // The continuation is what the model wrote: set apart from the prompt.
                let continuation = s.text.strip_prefix(&s.prompt);
                h.push_str(&match continuation {
                    Some(rest) => format!(
                        "<div class=\"sample\"><span class=\"prompt\">{}</span><span class=\"continuation\">{}</span></div>\n",
                        escape(&s.prompt),
                        escape(rest)
                    ),
                    None => format!("<div class=\"sample\">{}</div>\n", escape(&s.text)),
                });
            }
        }
    }
    h
}

/// The page: the verdict first, the compact comparison, the figures in a grid, the full
/// tables (scrollable, never cut off), samples, provenance and the spec. Each figure marks
/// itself `loaded` or is replaced by a visible notice if its file is missing, so a broken
/// figure is obvious to a reader (and checkable by a browser test).
pub fn page(p: &Page<'_>) -> String {
    let refresh = match p.training.is_empty() {
        true => String::new(),
        false => format!("<meta http-equiv=\"refresh\" content=\"{LIVE_REFRESH_S}\">\n"),
    };
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n{refresh}\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>gptlab: {0}</title>\n\
         <style>\n{STYLE}</style>\n</head>\n<body>\n<h1>{0}</h1>\n",
        escape(p.experiment)
    );
    if !p.training.is_empty() {
        h.push_str(&format!(
            "<p id=\"live\"><strong>Live</strong>: written {} UTC while runs train; this page reloads every {LIVE_REFRESH_S} s \
             (samples come at phase ends). Training: {}.</p>\n",
            crate::provenance::utc_now().replace('T', " ").trim_end_matches('Z'),
            escape(&p.training.join("; "))
        ));
    }
    h.push_str("<section id=\"verdict\"><h2>Verdict</h2>\n<ul>\n");
    for v in p.verdict {
        h.push_str(&format!("<li>{}</li>\n", escape(v)));
    }
    h.push_str(&format!(
        "</ul>\n<p class=\"sample-meta\">Losses are mean cross-entropy in {} (lower is better); {}.</p>\n</section>\n",
        p.unit,
        escape(&p.tables.intervals_note())
    ));
    for n in p.notes {
        h.push_str(&format!("<p class=\"note\">{}</p>\n", escape(n)));
    }
    let tables = p.tables.all();
    if let Some(compact) = tables.first() {
        h.push_str(&format!("<h2>{}</h2>\n{}", escape(&compact.title), table_html(compact)));
    }
    h.push_str("<h2>Figures</h2>\n<div class=\"grid\">\n");
    for (i, (file, caption)) in p.figures.iter().enumerate() {
        h.push_str(&format!(
            "<figure{2}><img src=\"{0}\" alt=\"{1}\" onload=\"this.classList.add('loaded'); this.dataset.shown = this.getBoundingClientRect().width\" \
onerror=\"this.outerHTML='&lt;p class=&quot;broken&quot;&gt;missing figure: {0}&lt;/p&gt;'\">\
<figcaption>{1}</figcaption></figure>\n",
            escape(file),
            escape(caption),
            if i == 0 { " class=\"wide\"" } else { "" }
        ));
    }
    h.push_str("</div>\n");
    for t in tables.iter().skip(1) {
        h.push_str(&format!("<h2>{}</h2>\n{}", escape(&t.title), table_html(t)));
    }
    h.push_str(
        "<p>Files: <a href=\"summary.csv\">summary.csv</a> (a run over its seeds), <a href=\"seeds.csv\">seeds.csv</a>, \
         <a href=\"comparison.csv\">comparison.csv</a>, <a href=\"metrics.csv\">metrics.csv</a>, \
         <a href=\"samples.md\">samples.md</a>.</p>\n",
    );
    h.push_str(&samples_html(p));
    h.push_str(&provenance_table(p.provenance));
    for (name, text) in p.specs {
        h.push_str(&format!(
            "<h2>Spec: {}</h2>\n<pre>{}</pre>\n",
            escape(name),
            escape(text)
        ));
    }
    h.push_str("</body>\n</html>\n");
    h
}

/// What produced each run: its build(s), command, spec and data hashes, machine and times
/// (from `provenance.json`; the newest session, with the count when a run was resumed).
fn provenance_table(runs: &[(String, Provenance)]) -> String {
    let mut h = String::from("<h2>Provenance</h2>\n<div style=\"overflow-x: auto\"><table id=\"provenance\">\n<tr>");
    for c in [
        "run",
        "built by",
        "sessions",
        "command",
        "spec sha256",
        "data sha256",
        "host",
        "CPU",
        "threads",
        "device",
        "started (UTC)",
        "ended (UTC)",
    ] {
        h.push_str(&format!("<th>{c}</th>"));
    }
    h.push_str("</tr>\n");
    for (run, p) in runs {
        let cells: Vec<String> = match (p.sessions.first(), p.sessions.last()) {
            (Some(first), Some(last)) => vec![
                run.clone(),
                p.builds().join("; "),
                p.sessions.len().to_string(),
                last.session.command.join(" "),
                crate::format::short_hash(&last.session.spec_sha256),
                crate::format::short_hash(&last.data_sha256),
                last.host.clone(),
                last.cpu.clone(),
                last.threads.to_string(),
                last.session.device.clone(),
                first.started_utc.clone(),
                last.ended_utc.clone().unwrap_or_else(|| "(not ended)".into()),
            ],
            _ => vec![run.clone(), "(no provenance.json)".into()],
        };
        h.push_str("<tr>");
        for c in cells {
            h.push_str(&format!("<td>{}</td>", escape(&c)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table></div>\n");
    h
}
