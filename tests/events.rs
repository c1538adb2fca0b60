//! The library reports through a sink instead of printing: what a caller installs receives the
//! warnings with their level and text.

use std::sync::Arc;

use gptlab::events::{Collect, Level, set_sink};

#[test]
fn a_set_aside_metrics_row_is_a_warning_event_a_caller_can_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.csv");
    let header = gptlab::run_dir::METRICS_HEADER.join(",");
    std::fs::write(&path, format!("{header}\nthis is not a row\n")).unwrap();
    let sink = Arc::new(Collect::default());
    set_sink(sink.clone());
    gptlab::run_dir::MetricsWriter::resume(&path, 1).unwrap();
    let events = sink.events();
    let warned = events
        .iter()
        .find(|e| e.text.contains("cannot be read as a metrics row"))
        .unwrap_or_else(|| panic!("no warning among {events:?}"));
    assert_eq!(warned.level, Level::Warning);
    assert!(warned.text.contains("set aside in"), "{}", warned.text);
    // And the missing row of step 1 is said too, as a warning.
    assert!(
        events
            .iter()
            .any(|e| e.level == Level::Warning && e.text.contains("no row for 1 of the steps")),
        "{events:?}"
    );
}
