//! Records the git commit gptlab is built from, and whether the tree had changes, for the
//! provenance of every run. Without git (a crate tarball) both are "unknown", not an error.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).filter(|c| !c.is_empty());
    let dirty = commit
        .as_ref()
        // Without optional locks, `status` does not write a refreshed `.git/index`, which
        // would be newer than this script's run and rebuild gptlab on the next `cargo build`.
        .and_then(|_| git(&["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"]))
        .map(|s| if s.is_empty() { "false" } else { "true" });
    println!(
        "cargo:rustc-env=GPTLAB_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rustc-env=GPTLAB_GIT_DIRTY={}", dirty.unwrap_or("unknown"));
    // A new commit, a staged change or an edited source changes the answer.
    for path in [
        ".git/HEAD",
        ".git/index",
        ".git/refs",
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
