//! Reloading a registry when its configuration file changes (features `watch` and `toml`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;

use super::{Invalid, Problem, Registry, Reload};
use crate::rt::{Clock, Runtime};
use crate::stream::{DirWatch, WatchError};

/// Reloads `registry` from the TOML file at `path` whenever the file changes, waiting
/// `debounce` after a change for the writes that follow it; see [`ConfigWatch`].
///
/// The reloads happen as the returned stream is polled (the example drains it on a task of
/// its own): while it is not polled, nothing is reloaded. Each reload reads the file on the
/// thread that polls it. A change made before the watch starts is not seen: start it, then
/// [`Registry::reload_file`] once if the file may have changed since it was read.
///
/// The file's directory is watched, not the file, so an editor or a deployment that
/// replaces the file (writes a new one, then renames it over the old) is seen too. A `path`
/// that is a symbolic link is read through it, and a change of what it resolves to is a change
/// of the file: a Kubernetes ConfigMap volume updates its files by swapping the `..data` link
/// beside them, so they never change by name; an edit to a target in the same directory is
/// seen too. Only the link's directory is watched: edits in place to a target in another
/// directory are not seen.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use futures_util::StreamExt;
/// use tidewall::config::{watch_file_on, Config, Registry};
/// use tidewall::rt::Tokio;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::from_toml(&std::fs::read_to_string("tidewall.toml")?)?;
/// let registry = Arc::new(Registry::new(config)?);
/// let mut reloads = watch_file_on(&Tokio, Arc::clone(&registry), "tidewall.toml", Duration::from_millis(200))?;
/// tokio::spawn(async move {
///     while let Some(outcome) = reloads.next().await {
///         match outcome {
///             Ok(reload) => println!("reloaded: {reload:?}"),
///             Err(refused) => eprintln!("tidewall.toml refused, the old one stays: {refused}"),
///         }
///     }
/// });
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`WatchError`] when the directory cannot be watched or `debounce` is zero.
pub fn watch_file_on<R: Runtime, C: Clock>(
    rt: &R,
    registry: Arc<Registry<C>>,
    path: impl AsRef<Path>,
    debounce: Duration,
) -> Result<ConfigWatch<R, C>, WatchError> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The watcher reports absolute paths: compare against the file's, resolved once.
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let file = dir.join(path.file_name().unwrap_or(path.as_os_str()));
    let changes = crate::stream::watch_dir_on(rt, &dir, debounce)?;
    let resolved = resolved(&file);
    Ok(ConfigWatch {
        changes,
        file,
        resolved,
        registry,
    })
}

/// The stream [`watch_file_on`] returns: one item per change of the file, the
/// [`Reload`] it made or why it was refused (the old configuration then stays in force,
/// whole). Dropping it stops watching.
///
/// Each item reads and parses the file inside `poll_next`: a configuration file is small,
/// and the read is what the item reports on.
pub struct ConfigWatch<R: Runtime, C> {
    changes: DirWatch<R>,
    file: PathBuf,
    /// What the file resolves to, when it is a symbolic link: a new target is a change.
    resolved: Option<PathBuf>,
    registry: Arc<Registry<C>>,
}

/// The path `file` resolves to, if it is a symbolic link.
fn resolved(file: &Path) -> Option<PathBuf> {
    let link = std::fs::symlink_metadata(file)
        .ok()?
        .file_type()
        .is_symlink();
    link.then(|| std::fs::canonicalize(file).ok()).flatten()
}

impl<R: Runtime, C: Clock> Stream for ConfigWatch<R, C> {
    type Item = Result<Reload, Invalid>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match ready!(Pin::new(&mut this.changes).poll_next(cx)) {
                Some(Ok(batch)) => {
                    // A link's new target changes the file without naming it.
                    let target = resolved(&this.file);
                    let relinked = target != this.resolved;
                    this.resolved = target;
                    // An overflowed batch may have lost the file's event: read it to be sure.
                    let named = batch.paths.contains(&this.file)
                        || (this.resolved.as_ref()).is_some_and(|t| batch.paths.contains(t));
                    if relinked || named || batch.overflowed {
                        return Poll::Ready(Some(this.registry.reload_file(&this.file)));
                    }
                }
                Some(Err(error)) => {
                    let problem = Problem::Read(error.to_string());
                    return Poll::Ready(Some(Err(Invalid::new(String::new(), problem))));
                }
                None => return Poll::Ready(None),
            }
        }
    }
}

impl<R: Runtime, C> std::fmt::Debug for ConfigWatch<R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatch")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}
