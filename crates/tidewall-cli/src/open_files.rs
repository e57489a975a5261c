//! The limit on open files. The service runs in this process, so each connection holds two
//! descriptors here, the client's socket and the server's end of it: `tidewall overload`
//! holds about 1,200 at the peak of its 3x phase, the tour up to about 850 at the peak of its
//! overload section (about 650 with `--quick`), and a soft limit of 1024 is common (a login
//! session's default on most Linux distributions, recent Docker and containerd). At start-up
//! the process raises its soft limit to its hard one (Unix), and says on stderr when that
//! still leaves too few: past the limit, connections fail.

/// The process's limit on open files, soft and hard; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) soft: Option<u64>,
    pub(crate) hard: Option<u64>,
}

/// Raises the soft limit as far as the hard limit and the kernel allow; the limit then in
/// force. `None` off Unix, which has no such limit on sockets.
#[cfg(unix)]
pub(crate) fn raise() -> Option<Limit> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    for soft in raised_soft_limits(now.current, now.maximum) {
        let raised = Rlimit {
            current: soft,
            maximum: now.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            break;
        }
    }
    let then = getrlimit(Resource::Nofile);
    Some(Limit {
        soft: then.current,
        hard: then.maximum,
    })
}

#[cfg(not(unix))]
pub(crate) fn raise() -> Option<Limit> {
    None
}

/// The soft limit macOS accepts at most (`OPEN_MAX`), whatever the hard limit says.
const CAPPED: u64 = 10_240;

/// The soft limits to try, in order, from `soft` under `hard` (`None`: unlimited): the hard
/// limit, then, for a kernel that refuses it, [`CAPPED`]. Only limits above `soft`.
fn raised_soft_limits(soft: Option<u64>, hard: Option<u64>) -> Vec<Option<u64>> {
    let Some(soft) = soft else {
        return Vec::new();
    };
    let mut limits = Vec::new();
    if hard.is_none_or(|hard| hard > soft) {
        limits.push(hard);
    }
    if hard.is_none_or(|hard| hard > CAPPED) && CAPPED > soft {
        limits.push(Some(CAPPED));
    }
    limits
}

/// The note for stderr when `limit` leaves fewer than `needed` descriptors for `what`
/// (the command, as a reader knows it); `None` when it leaves enough.
pub(crate) fn shortfall(limit: Limit, needed: u64, what: &str) -> Option<String> {
    let soft = limit.soft?;
    let hard = limit
        .hard
        .map_or_else(|| "unlimited".to_owned(), |hard| hard.to_string());
    (soft < needed).then(|| {
        format!(
            "open files are limited to {soft} here (hard limit {hard}), below the about \
             {needed} {what} may hold at once: a connection past the limit fails, and so \
             does its request. To be sure of the figures, raise the limit (`ulimit -n \
             {needed}`; above the hard limit, as root or with a container's \
             `--ulimit nofile={needed}`)."
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{CAPPED, Limit, raised_soft_limits, shortfall};

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one_or_else_to_the_cap() {
        assert_eq!(
            raised_soft_limits(Some(1024), Some(524_288)),
            [Some(524_288), Some(CAPPED)]
        );
        assert_eq!(raised_soft_limits(Some(256), None), [None, Some(CAPPED)]);
        assert_eq!(raised_soft_limits(Some(1024), Some(4096)), [Some(4096)]);
        // Nothing to raise: already at the hard limit, unlimited, or above the cap.
        assert!(raised_soft_limits(Some(4096), Some(4096)).is_empty());
        assert!(raised_soft_limits(None, None).is_empty());
        assert_eq!(raised_soft_limits(Some(20_000), None), [None]);
    }

    #[test]
    fn a_limit_below_the_need_is_noted_and_one_above_it_is_not() {
        let limit = |soft, hard| Limit { soft, hard };
        let note = shortfall(limit(Some(1024), Some(1024)), 1328, "`tidewall overload`")
            .expect("1024 < 1328");
        assert!(
            note.starts_with(
                "open files are limited to 1024 here (hard limit 1024), below the about 1328 \
                 `tidewall overload` may hold at once"
            ),
            "{note}"
        );
        assert!(note.contains("ulimit -n 1328"), "{note}");
        assert_eq!(shortfall(limit(Some(1328), Some(1328)), 1328, "x"), None);
        assert_eq!(shortfall(limit(None, None), 1328, "x"), None);
        assert!(
            shortfall(limit(Some(256), None), 1024, "the tour")
                .is_some_and(|note| note.contains("(hard limit unlimited)"))
        );
    }

    /// Raising never lowers the limit, and leaves the soft limit at the hard one or at the cap.
    #[cfg(unix)]
    #[test]
    fn raising_leaves_the_soft_limit_at_its_highest() {
        let raised = super::raise().expect("a limit on Unix");
        assert!(
            raised.soft.is_none() || raised.soft == raised.hard || raised.soft >= Some(CAPPED),
            "{raised:?}"
        );
        assert_eq!(
            super::raise(),
            Some(raised),
            "a second raise changes nothing"
        );
    }
}
