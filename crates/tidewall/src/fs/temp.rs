//! The temporary file that becomes the target, removed unless committed.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The most bytes of the target's name that the temporary file's name starts with: the
/// suffix adds at most 46 bytes, and a name near the file system's limit (255 bytes) must
/// still fit.
const NAME_BYTES: usize = 64;

/// Removes the temporary file when dropped, unless [`TempFile::committed`] was called.
#[derive(Debug)]
pub(super) struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates a new, empty temporary file next to `target`, with `target`'s permissions if it
    /// exists, which it also returns: they must be set again once the contents are written (a
    /// write clears the setuid and setgid bits). The name is unique within the process and
    /// `create_new` refuses to reuse one.
    pub(super) fn create_beside(target: &Path) -> io::Result<(Self, File, Option<Permissions>)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let mut end = name.len().min(NAME_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let name = &name[..end];
        let permissions = std::fs::metadata(target).ok().map(|m| m.permissions());
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                target.with_file_name(format!(".{name}.tidewall-{}-{n}.tmp", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let temp = Self { path, armed: true };
                    // Set before the contents are written too, so that they are never open to
                    // more users than the old ones were.
                    if let Some(permissions) = &permissions {
                        file.set_permissions(permissions.clone())?;
                    }
                    return Ok((temp, file, permissions));
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The file was renamed into place: nothing to clean up.
    pub(super) fn committed(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: if a rename already moved it, there is nothing to remove.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
