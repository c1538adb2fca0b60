//! Durable file writes, the crate's one way to put bytes on disk that must survive a crash,
//! and the one content hash (SHA-256) that checkpoints, data and specs are identified by.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Creates (or truncates) `path`, writes `bytes` and syncs the file to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Syncs a folder, making renames inside it durable; best effort, since not every platform
/// lets a folder be opened.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A temporary name beside `path` of this process's and this call's own: two processes (or
/// threads) writing one file at once each rename a whole file into place instead of
/// interleaving in one temporary file.
pub fn temp_beside(path: &Path) -> std::path::PathBuf {
    path.with_extension(format!(
        "{}.{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        unique_suffix()
    ))
}

/// Whether `e` says the disk (or the user's quota on it) is full: the machine's problem, not
/// the input's.
pub fn disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed, so a
/// reader sees the old contents or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    let written = write_synced(&tmp, bytes).and_then(|()| {
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if written.is_err() {
        // A full disk or a failed rename leaves no part-written file beside the real one.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// A folder written as a set: files go into a staging folder beside `dir`, and
/// [`StagedDir::publish`] swaps it in whole, so a reader (or a second writer) sees the old
/// folder or the new one, never files of both. Two writers publishing at once each swap in a
/// complete folder; the last swap wins.
pub struct StagedDir {
    dir: std::path::PathBuf,
    staging: std::path::PathBuf,
}

impl StagedDir {
    /// A new empty staging folder for `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(".{name}.staging-{}", unique_suffix()));
        fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            staging,
        })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Puts the staged folder in place of `dir` (atomically where the file system can
    /// exchange two names, as Linux's local file systems and NFS can) and removes the old one.
    pub fn publish(self) -> Result<()> {
        let old = self.staging.with_file_name(format!(
            "{}.old",
            self.staging.file_name().unwrap_or_default().to_string_lossy()
        ));
        for _ in 0..100 {
            match fs::rename(&self.staging, &self.dir) {
                Ok(()) => {
                    sync_dir(self.dir.parent().unwrap_or(Path::new(".")));
                    return Ok(());
                }
                // `dir` exists (and is not empty): swap the two.
                Err(_) if self.dir.is_dir() => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("renaming {} to {}", self.staging.display(), self.dir.display()));
                }
            }
            if exchange(&self.staging, &self.dir).is_ok() {
                // `staging` now holds the old folder.
                fs::remove_dir_all(&self.staging)
                    .with_context(|| format!("removing the old {}", self.staging.display()))?;
                return Ok(());
            }
            // No exchange on this file system: move the old folder aside, then rename. A
            // writer racing here finds `dir` gone or back and tries again.
            if fs::rename(&self.dir, &old).is_ok() {
                let _ = fs::remove_dir_all(&old);
            }
        }
        anyhow::bail!(
            "could not put {} in place of {} (another process kept replacing it)",
            self.staging.display(),
            self.dir.display()
        )
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        // Not published (an error on the way): nothing half-written is left beside `dir`.
        let _ = fs::remove_dir_all(&self.staging);
    }
}

/// Exchanges the names `a` and `b` atomically (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths that live across the call; AT_FDCWD makes
    // them relative to the working directory, as the rest of gptlab's paths are.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// `<pid>-<n>`: unique among the temporary names this process makes.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The most a spec file may hold: a spec is settings, not data (a generated one with 50,000
/// `[[run]]`s is about 1 MB).
pub const MAX_SPEC_BYTES: u64 = 16 << 20;
/// The most a metadata file gptlab reads may hold (`meta.json`, `vocab.json`, `config.json`,
/// `status.json`, `provenance.json`).
pub const MAX_META_BYTES: u64 = 64 << 20;

/// Reads `path` whole when it is a regular file (symbolic links followed) of at most `max`
/// bytes; `what` names it in the error. A device (`/dev/zero`), a FIFO or a folder would be
/// read without end or not at all, so they are refused before a byte is read; the cap is
/// checked again while reading, for a file that grows.
pub fn read_capped(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    read_capped_or_why(path, max).map_err(|why| anyhow::anyhow!("{what} {}: {why}", path.display()))
}

/// [`read_capped`], with the reason alone as the error (for a caller that names the file).
pub fn read_capped_or_why(path: &Path, max: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "is not a regular file ({}); give the path of a file",
            kind_of(&meta)
        ));
    }
    let too_big = || format!("is larger than the {max} bytes allowed");
    if meta.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    fs::File::open(path)
        .and_then(|f| f.take(max.saturating_add(1)).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

/// [`read_capped_or_why`] as UTF-8 text.
pub fn read_text_capped_or_why(path: &Path, max: u64) -> std::result::Result<String, String> {
    String::from_utf8(read_capped_or_why(path, max)?).map_err(|e| {
        format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// [`read_capped`] as UTF-8 text.
pub fn read_text_capped(path: &Path, max: u64, what: &str) -> Result<String> {
    read_text_capped_or_why(path, max).map_err(|why| anyhow::anyhow!("{what} {}: {why}", path.display()))
}

/// What a non-regular file is, in words.
fn kind_of(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// SHA-256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// Lower-case hexadecimal of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, read in blocks (a corpus need not fit in memory).
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for_each_block(path, |block| {
        hasher.update(block);
        std::ops::ControlFlow::<()>::Continue(())
    })
    .with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

/// The size of the blocks files are read in ([`for_each_block`], [`for_each_block_in`]).
pub const BLOCK: usize = 1 << 20;

/// Calls `f` with the bytes `range` of `path` in order, in blocks of 1 MiB, each with whether
/// it is the last, until the range ends (`Ok(None)`) or `f` breaks with a value
/// (`Ok(Some(value))`). The range was measured before (a corpus's split): a file that no
/// longer holds it "changed while it was being read".
pub fn for_each_block_in<B>(
    path: &Path,
    range: std::ops::Range<u64>,
    mut f: impl FnMut(&[u8], bool) -> std::ops::ControlFlow<B>,
) -> std::result::Result<Option<B>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let changed = || format!("`{}` changed while it was being read", path.display());
    let mut file = fs::File::open(path).map_err(|e| format!("`{}` cannot be read: {e}", path.display()))?;
    file.seek(SeekFrom::Start(range.start)).map_err(|_| changed())?;
    let (mut left, mut buf) = (range.end.saturating_sub(range.start), vec![0u8; BLOCK]);
    while left > 0 {
        let want = (left as usize).min(buf.len());
        file.read_exact(&mut buf[..want]).map_err(|_| changed())?;
        left -= want as u64;
        if let std::ops::ControlFlow::Break(value) = f(&buf[..want], left == 0) {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// Calls `f` with the bytes of `path` in order, in blocks of 1 MiB, until the file ends
/// (`Ok(None)`) or `f` breaks with a value (`Ok(Some(value))`): a file need not fit in memory.
pub fn for_each_block<B>(
    path: &Path,
    mut f: impl FnMut(&[u8]) -> std::ops::ControlFlow<B>,
) -> std::io::Result<Option<B>> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if let std::ops::ControlFlow::Break(value) = f(&buf[..n]) {
            return Ok(Some(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty folder where the file should go: the rename fails.
        let target = dir.path().join("status.json");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();
        assert!(write_atomic(&target, b"{}").is_err());
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["status.json"], "a temporary file was left behind");
        // And a write that works leaves only the file.
        let ok = dir.path().join("ok.json");
        write_atomic(&ok, b"{}").unwrap();
        assert_eq!(fs::read(&ok).unwrap(), b"{}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
