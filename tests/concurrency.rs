//! Reports written at once: each report folder is always one report, never files of two.

mod common;

use std::process::{Command, Stdio};

use common::{OutDirs, gptlab, tiny_spec};

#[test]
fn reports_written_at_once_leave_one_whole_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let spec = tiny_spec(
        tmp.path(),
        "both",
        "[[run]]\nname = \"absolute\"\n[[run]]\nname = \"rope\"\nmodel.position = \"rope\"\n",
    );
    gptlab()
        .arg("run")
        .arg(&spec)
        .args(out.args())
        .args(["-q", "--no-report"])
        .assert()
        .success();
    let bin = assert_cmd::cargo::cargo_bin("gptlab");
    let report = |only: Option<&str>| {
        let mut cmd = Command::new(&bin);
        cmd.arg("report").arg(&spec).args(out.args()).arg("--no-samples");
        if let Some(run) = only {
            cmd.args(["--only", run]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
    };
    let folder = out.reports.join("both");
    for round in 0..12 {
        // A whole report and a report of one run, started together.
        let mut children = vec![
            report(None),
            report(Some("absolute")),
            report(None),
            report(Some("absolute")),
        ];
        for c in &mut children {
            assert!(c.wait().unwrap().success(), "round {round}");
        }
        let seeds = std::fs::read_to_string(folder.join("seeds.csv")).unwrap();
        let md = std::fs::read_to_string(folder.join("summary.md")).unwrap();
        let page = std::fs::read_to_string(folder.join("index.html")).unwrap();
        let metrics = std::fs::read_to_string(folder.join("metrics.csv")).unwrap();
        let whole = seeds.lines().any(|l| l.starts_with("rope,"));
        // Each file of the folder is of the same report: with rope or without it, all alike.
        assert_eq!(
            md.contains("| rope |"),
            whole,
            "round {round}: summary.md of the other report"
        );
        assert_eq!(
            page.contains("<td>rope</td>"),
            whole,
            "round {round}: index.html of the other report"
        );
        assert_eq!(
            metrics.lines().any(|l| l.starts_with("rope,")),
            whole,
            "round {round}: metrics.csv of the other report"
        );
        // Nothing is left beside it.
        let stray: Vec<String> = std::fs::read_dir(&out.reports)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "both")
            .collect();
        assert!(stray.is_empty(), "round {round}: left behind {stray:?}");
        let tmp_files: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(tmp_files.is_empty(), "round {round}: {tmp_files:?}");
    }
}

#[test]
fn one_file_written_by_several_writers_at_once_is_always_one_writer_s() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("status.json");
    std::thread::scope(|s| {
        for i in 0..8u8 {
            let path = &path;
            s.spawn(move || {
                for _ in 0..50 {
                    gptlab::fsio::write_atomic(path, &vec![b'a' + i; 4096 + i as usize]).unwrap();
                }
            });
        }
    });
    let bytes = std::fs::read(&path).unwrap();
    let first = bytes[0];
    assert!(bytes.iter().all(|&b| b == first), "bytes of two writers in one file");
    assert_eq!(bytes.len(), 4096 + (first - b'a') as usize);
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "temporary files left behind");
}
