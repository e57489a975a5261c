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
            match create_new(&path, permissions.as_ref()) {
                Ok(file) => {
                    let temp = Self { path, armed: true };
                    // Exactly the target's bits (the open's mode was narrowed by the umask),
                    // before the contents are written.
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

/// Creates `path`, failing if it exists. On Unix with `permissions`, their mode is the open's
/// own: a file created open to everyone and narrowed afterwards could be opened by another
/// user in between, who would keep reading it (access is checked only at the open).
fn create_new(path: &Path, permissions: Option<&Permissions>) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(permissions) = permissions {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(permissions.mode() & 0o777);
    }
    #[cfg(not(unix))]
    let _ = permissions;
    options.open(path)
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: if a rename already moved it, there is nothing to remove.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A file created for a private target is never open to more users than the target, not
    /// even before its permissions are set: whatever the umask, the open's mode is the
    /// target's, never the default 0o666.
    #[test]
    fn a_private_target_s_temporary_file_is_private_from_its_creation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".secret.tmp");
        let private = Permissions::from_mode(0o600);
        let file = create_new(&path, Some(&private)).unwrap();
        let mode = file.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o600, 0, "created with mode {mode:o}");
    }
}
