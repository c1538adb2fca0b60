//! `index.html`: one page with the figures, the summary, the samples and the spec.

use super::summary::RunSummary;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page. Each figure marks itself `loaded` or is replaced by a visible notice if its
/// file is missing, so a broken figure is obvious to a reader (and checkable by a browser test).
pub fn page(
    experiment: &str,
    figures: &[(String, String)],
    summary: &[RunSummary],
    samples_md: &str,
    spec_name: &str,
    spec_text: &str,
    notes: &[String],
) -> String {
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
    h.push_str(&format!(
        "<h2>Spec: {}</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(spec_name),
        escape(spec_text)
    ));
    h
}
