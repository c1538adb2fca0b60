//! `index.html`: one page with the figures, the summary, the samples and the spec.

use super::summary::RunSummary;
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
    /// `(file, caption)` of each figure.
    pub figures: &'a [(String, String)],
    /// One row per run.
    pub summary: &'a [RunSummary],
    /// The samples, as markdown.
    pub samples_md: &'a str,
    /// The spec file's name and text.
    pub spec: (&'a str, &'a str),
    /// Notes shown at the top (unfinished runs, mixed builds).
    pub notes: &'a [String],
    /// Each run's `provenance.json`.
    pub provenance: &'a [(String, Provenance)],
}

/// The page. Each figure marks itself `loaded` or is replaced by a visible notice if its
/// file is missing, so a broken figure is obvious to a reader (and checkable by a browser test).
pub fn page(p: &Page<'_>) -> String {
    let Page {
        experiment,
        figures,
        summary,
        samples_md,
        spec: (spec_name, spec_text),
        notes,
        provenance,
    } = *p;
    let mut h = String::new();
    h.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>gptlab: {0}</title>\n<style>\n\
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }}\n\
table {{ border-collapse: collapse; font-size: 14px; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}\n\
td:first-child, th:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}\n\
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; white-space: pre-wrap; }}\n\
.broken {{ color: #b00; font-weight: bold; }} .note {{ color: #a60; }}\n</style>\n</head>\n<body>\n<h1>{0}</h1>\n",
        escape(experiment)
    ));
    for n in notes {
        h.push_str(&format!("<p class=\"note\">{}</p>\n", escape(n)));
    }
    h.push_str("<h2>Figures</h2>\n");
    for (file, caption) in figures {
        h.push_str(&format!(
            "<figure><img src=\"{0}\" alt=\"{1}\" onload=\"this.classList.add('loaded')\" \
onerror=\"this.outerHTML='&lt;p class=&quot;broken&quot;&gt;missing figure: {0}&lt;/p&gt;'\">\
<figcaption>{1}</figcaption></figure>\n",
            escape(file),
            escape(caption)
        ));
    }
    h.push_str("<h2>Summary</h2>\n<table>\n<tr>");
    for c in super::summary::COLUMNS {
        h.push_str(&format!("<th>{}</th>", escape(c)));
    }
    h.push_str("</tr>\n");
    for r in summary {
        h.push_str("<tr>");
        for c in super::summary::cells(r) {
            h.push_str(&format!("<td>{}</td>", escape(&c)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n<p>Losses are mean cross-entropy in nats per character. Files: <a href=\"summary.csv\">summary.csv</a>, <a href=\"metrics.csv\">metrics.csv</a>, <a href=\"samples.md\">samples.md</a>.</p>\n");
    h.push_str(&format!("<h2>Samples</h2>\n<pre>{}</pre>\n", escape(samples_md)));
    h.push_str(&provenance_table(provenance));
    h.push_str(&format!(
        "<h2>Spec: {}</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(spec_name),
        escape(spec_text)
    ));
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
                last.session.spec_sha256.chars().take(12).collect(),
                last.data_sha256.chars().take(12).collect(),
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
