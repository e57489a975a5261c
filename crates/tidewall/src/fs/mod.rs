//! Cancel-safe atomic file writes.
//!
//! [`write_atomic`] replaces a file so that readers, crashes and cancellation only ever see the
//! old contents or the complete new contents, never a truncated or partial file:
//!
//! 1. write the new contents to a fresh temporary file in the *same directory* (so the rename
//!    below stays on one file system), carrying over the old file's permissions: given to
//!    the open that creates it (Unix: no other user can open it in between), set exactly
//!    once it is created, and again after the contents are written, since a write by a
//!    process without `CAP_FSETID` clears the setuid and setgid bits (which then survive as
//!    far as the OS lets the writer set them);
//! 2. `fsync` the temporary file, so its data is durable before it becomes visible;
//! 3. `rename` it over the target, which is atomic on POSIX file systems;
//! 4. `fsync` the directory, so the rename itself survives a crash (Unix).
//!
//! Each step runs on the runtime's blocking pool ([`Spawn::spawn_blocking`]), never on the
//! async threads; only removing the temporary file of a write dropped, or whose write step
//! failed or was cancelled by its runtime, before its rename runs where the future is dropped
//! or polled.
//!
//! **Cancel safety**: dropping the future at any await point leaves the old file or the complete
//! new one. Before the rename, the temporary file is removed on drop; a rename already handed to
//! the blocking pool still completes (and then the new file is complete, since it was synced
//! first), but the directory is then not synced. This is tested by dropping the future at every
//! await point.
//!
//! **Symbolic links**: a `path` that is a link is replaced by a regular file (the link's
//! target is left as it was), with the permissions of the file the link pointed to. Write to
//! the target's own path to replace the target. The temporary file's name is the target's
//! (at most its first 64 bytes, cut at a character boundary) behind a dot (hidden, as
//! editors' are) and with a unique suffix of at most 46 bytes, so names near the file
//! system's limit fit.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("config.json");
//! tidewall::fs::write_atomic(&tidewall::rt::Tokio, &path, b"{\"version\": 2}".to_vec()).await?;
//! assert_eq!(std::fs::read(&path)?, b"{\"version\": 2}");
//! # Ok(()) }
//! ```

mod temp;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use temp::TempFile;

use crate::rt::Spawn;

/// Atomically replaces (or creates) `path` with `contents`; see the [module docs](self).
///
/// # Errors
///
/// Any I/O error from creating, writing, syncing or renaming; an error up to the rename leaves
/// the target untouched and the temporary file removed. The directory sync comes after the
/// rename, so its error leaves the complete new contents in place (not yet known durable). A
/// blocking step that panicked, or that its runtime cancelled (as tokio does to blocking jobs
/// not yet started when it shuts down), is reported as an [`io::Error`] of kind `Other`, never
/// `Interrupted`: loops that retry `Interrupted` at once would spin against a runtime that is
/// going away.
///
/// # Cancel safety
///
/// Dropping the future at any await point leaves the old file or the complete new one (see
/// the [module docs](self)).
pub async fn write_atomic<R: Spawn>(
    rt: &R,
    path: impl AsRef<Path>,
    contents: Vec<u8>,
) -> io::Result<()> {
    let path = path.as_ref().to_path_buf();
    let dir = parent_dir(&path)?;
    let target = path.clone();
    let (temp, file, permissions) = blocking(rt, move || TempFile::create_beside(&target)).await?;
    // Closed on the blocking thread too: a close can block (NFS flushes on close).
    blocking(rt, move || {
        let mut file = file;
        file.write_all(&contents)?;
        if let Some(permissions) = permissions {
            file.set_permissions(permissions)?;
        }
        file.sync_all()
    })
    .await?;
    // The temporary file goes with the rename: dropped mid-rename, the future leaves the
    // rename to finish on its thread (and a failed one removes the file there).
    blocking(rt, move || {
        std::fs::rename(temp.path(), &path)?;
        temp.committed();
        Ok(())
    })
    .await?;
    blocking(rt, move || sync_dir(&dir)).await
}

fn parent_dir(path: &Path) -> io::Result<PathBuf> {
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        ));
    }
    Ok(match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    })
}

async fn blocking<R: Spawn, T: Send + 'static>(
    rt: &R,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    // `Other` for a cancelled step too (see `write_atomic`'s errors).
    match rt.spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) => Err(io::Error::other(format!("blocking file step: {err}"))),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directory handles cannot be synced portably; NTFS journals the rename itself.
    Ok(())
}
