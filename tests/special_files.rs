//! Inputs that are not ordinary files — devices, pipes, folders, links to them, files too
//! large — are refused with a clear error (exit 2) before a byte is read without limit.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{gptlab, tiny_spec, write_spec};
use rand::{Rng, SeedableRng};

/// Makes a named pipe at `path` (nobody ever writes to it: reading it would block for ever).
fn fifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// Every kind of spec path that is not a readable regular file of sane size, by name.
fn hostile_specs(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = vec![];
    let link = |name: &str, target: &Path| {
        let p = dir.join(name);
        std::os::unix::fs::symlink(target, &p).unwrap();
        p
    };
    out.push(("link to /dev/zero".into(), link("zero.toml", Path::new("/dev/zero"))));
    out.push((
        "link to /dev/urandom".into(),
        link("random.toml", Path::new("/dev/urandom")),
    ));
    out.push(("/dev/null itself".into(), "/dev/null".into()));
    let pipe = dir.join("pipe.toml");
    fifo(&pipe);
    out.push(("a named pipe".into(), pipe));
    let folder = dir.join("folder.toml");
    std::fs::create_dir(&folder).unwrap();
    out.push(("a folder".into(), folder));
    out.push(("a link loop".into(), {
        let a = dir.join("loop_a.toml");
        std::os::unix::fs::symlink(dir.join("loop_b.toml"), &a).unwrap();
        std::os::unix::fs::symlink(&a, dir.join("loop_b.toml")).unwrap();
        a
    }));
    out.push(("a dangling link".into(), link("dangling.toml", &dir.join("nowhere"))));
    let big = dir.join("big.toml");
    let comment = format!("# {}\n", "x".repeat(1022));
    std::fs::write(&big, comment.repeat(17 * 1024)).unwrap(); // 17 MiB of comments
    out.push(("a spec over the size limit".into(), big));
    let binary = dir.join("binary.toml");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    std::fs::write(&binary, (0..4096).map(|_| rng.r#gen::<u8>()).collect::<Vec<u8>>()).unwrap();
    out.push(("random bytes".into(), binary));
    out
}

#[test]
fn a_spec_that_is_not_an_ordinary_file_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    for (what, path) in hostile_specs(tmp.path()) {
        for cmd in ["validate", "plan", "run", "report", "status", "params"] {
            let assert = gptlab()
                .arg(cmd)
                .arg(&path)
                .current_dir(tmp.path())
                .timeout(Duration::from_secs(60))
                .assert();
            let out = assert.get_output();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} on {what}: {stderr}");
            assert!(
                stderr.contains(path.to_str().unwrap()),
                "{cmd} on {what}: not named: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{cmd} on {what}: {stderr}");
        }
    }
}

#[test]
fn list_reports_each_hostile_spec_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("experiments");
    std::fs::create_dir(&dir).unwrap();
    hostile_specs(&dir);
    tiny_spec(&dir, "fine", "");
    let assert = gptlab()
        .args(["list", dir.to_str().unwrap()])
        .timeout(Duration::from_secs(60))
        .assert()
        .code(2);
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(stdout.contains("fine.toml") && stdout.contains("fine "), "{stdout}");
    for name in ["zero.toml", "random.toml", "pipe.toml", "big.toml"] {
        assert!(
            stdout.lines().any(|l| l.contains(name) && l.contains("INVALID")),
            "{name}: {stdout}"
        );
    }
    assert!(stdout.contains("is not a regular file"), "{stdout}");
    assert!(stdout.contains("is larger than the"), "{stdout}");
}

fn empty_folder(dir: &std::path::Path) -> std::path::PathBuf {
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    empty
}

#[test]
fn a_corpus_that_is_not_an_ordinary_file_is_a_spec_error() {
    let tmp = tempfile::tempdir().unwrap();
    let zero = tmp.path().join("zero.txt");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let pipe = tmp.path().join("pipe.txt");
    fifo(&pipe);
    for (data, says) in [
        (zero, "is not a regular file"),
        (pipe, "is not a regular file"),
        (empty_folder(tmp.path()), "has no file matching"),
    ] {
        let text = common::TINY_SPEC.replace("CORPUS", data.to_str().unwrap());
        let spec = write_spec(tmp.path(), "c.toml", &text);
        gptlab()
            .arg("validate")
            .arg(&spec)
            .timeout(Duration::from_secs(60))
            .assert()
            .code(2)
            .stderr(predicates::str::contains("key `data.path`"))
            .stderr(predicates::str::contains(says));
    }
}

#[test]
fn a_model_config_that_is_not_an_ordinary_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("config.json");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    gptlab()
        .args(["params", link.to_str().unwrap()])
        .timeout(Duration::from_secs(60))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("is not a regular file"));
}
