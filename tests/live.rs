//! The live page: while runs train, `reports/<exp>/index.html` is redrawn at every evaluation,
//! reloads itself and says how far each run is; the finished report does not reload.

mod common;

/// Stands in for the kill test in a build without the hook, so it fails saying why.
#[cfg(not(feature = "fault-injection"))]
#[test]
fn the_page_is_live_while_training_and_final_after() {
    panic!(
        "this test kills gptlab through the test-only `fault-injection` feature: run `cargo test --features fault-injection` (`just test` does)"
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn the_page_is_live_while_training_and_final_after() {
    use predicates::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let spec = common::tiny_spec(
        dir.path(),
        "live",
        "[[run]]\nname = \"a\"\n[[run]]\nname = \"b\"\nmodel.position = \"rope\"\n",
    );
    let out = common::OutDirs::new();
    let page = out.reports.join("live/index.html");
    // Killed after step 12 of run `a`: the last page drawn is the one of its evaluation at 10.
    common::gptlab()
        .args(["run", spec.to_str().unwrap()])
        .args(out.args())
        .env("GPTLAB_FAULT", "step-end@12")
        .assert()
        .failure();
    let live = std::fs::read_to_string(&page).expect("a live page while training");
    assert!(live.contains("<meta http-equiv=\"refresh\" content=\"30\">"), "{live}");
    assert!(live.contains("<strong>Live</strong>: written "), "{live}");
    assert!(live.contains("Training: a: step 10 of 16."), "{live}");
    assert!(!live.contains("class=\"sample\""), "a live page has no samples");
    common::gptlab()
        .args(["run", spec.to_str().unwrap()])
        .args(out.args())
        .assert()
        .success()
        .stderr(
            predicate::str::is_match(r"live report: \d+ pages in [0-9.]+ s \([0-9.]+% of the \d+ s of training\)")
                .unwrap(),
        );
    let done = std::fs::read_to_string(&page).unwrap();
    assert!(
        !done.contains("http-equiv=\"refresh\""),
        "the finished report must not reload"
    );
    assert!(!done.contains("id=\"live\""));
}
