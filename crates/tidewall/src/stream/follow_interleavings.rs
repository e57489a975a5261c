//! Every interleaving of a writer's rotation with the follower's file-system calls: the
//! writer's steps run between any two calls of a check, and between checks (the stream not
//! polled for a while), and the lines that come out are compared with the lines written.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::{Splitter, check};

/// A writer's steps, each run just before the follower's file-system call number `at[i]`
/// (counted from 0 over the whole run, the gaps between polls included).
struct Script<'a> {
    steps: &'a [&'a dyn Fn()],
    at: &'a [usize],
    done: usize,
    calls: usize,
}

impl Script<'_> {
    fn step(&mut self) {
        while self.done < self.steps.len() && self.at[self.done] <= self.calls {
            (self.steps[self.done])();
            self.done += 1;
        }
        self.calls += 1;
    }

    fn finish(&mut self) {
        for step in &self.steps[self.done..] {
            step();
        }
        self.done = self.steps.len();
    }
}

/// `Follow` without a runtime: the same checks and the same state between them, driven the
/// way `poll_next` drives them.
struct Follower {
    path: PathBuf,
    open: Option<super::Open>,
    splitter: Splitter,
    lines: VecDeque<io::Result<Vec<u8>>>,
}

impl Follower {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            open: None,
            splitter: Splitter::new(1024),
            lines: VecDeque::new(),
        }
    }

    /// One poll after the period: checks until nothing more is waiting.
    fn poll(&mut self, script: &mut Script<'_>) {
        loop {
            let (open, checked) = check(&self.path, self.open.take(), None, &mut || {
                script.step();
            });
            self.open = open;
            let check = checked.expect("no i/o error in these scripts");
            if check.restarted {
                self.splitter.restart();
            }
            self.splitter.split(&check.data, &mut self.lines);
            if !check.more {
                return;
            }
        }
    }

    fn lines(&mut self) -> Vec<String> {
        self.lines
            .drain(..)
            .map(|line| String::from_utf8(line.unwrap()).unwrap())
            .collect()
    }
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Polls between steps of the script.
const ROUNDS: usize = 3;
/// Call numbers a step may be placed at (the runs here make at most this many calls); a
/// step placed past the run's last call runs after it, and a few more polls follow.
const PLACES: usize = 16;

/// Calls `run` with every non-decreasing placement of `steps` steps over `PLACES` places.
fn every_placement(steps: usize, run: &mut impl FnMut(&[usize])) {
    fn go(at: &mut Vec<usize>, steps: usize, from: usize, run: &mut impl FnMut(&[usize])) {
        if at.len() == steps {
            run(at);
            return;
        }
        for place in from..=PLACES {
            at.push(place);
            go(at, steps, place, run);
            at.pop();
        }
    }
    go(&mut Vec::new(), steps, 0, run);
}

/// Runs the follower on `path` (already holding `first`, read by a first poll) through
/// `steps` placed at `at`, then polls until all is read; returns the lines after `first`.
fn follow_through(path: &Path, first: &str, steps: &[&dyn Fn()], at: &[usize]) -> Vec<String> {
    let mut follower = Follower::new(path);
    let mut idle = Script {
        steps: &[],
        at: &[],
        done: 0,
        calls: 0,
    };
    follower.poll(&mut idle);
    assert_eq!(follower.lines(), [first]);
    let mut script = Script {
        steps,
        at,
        done: 0,
        calls: 0,
    };
    for _ in 0..ROUNDS {
        // Not polled for a while: the writer may act here too.
        script.step();
        follower.poll(&mut script);
    }
    assert!(
        script.calls <= PLACES,
        "a step can be placed before every call"
    );
    script.finish();
    for _ in 0..3 {
        follower.poll(&mut idle);
    }
    follower.lines()
}

#[test]
fn a_rotation_at_any_point_of_any_check_loses_and_repeats_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let rotated = dir.path().join("app.log.1");
    let old_last = || append(&path, "old-2\n");
    let rename = || std::fs::rename(&path, &rotated).unwrap();
    let create = || std::fs::write(&path, "new-1\n").unwrap();
    let new_more = || append(&path, "new-2\n");
    let steps: [&dyn Fn(); 4] = [&old_last, &rename, &create, &new_more];
    let mut runs = 0;
    every_placement(steps.len(), &mut |at| {
        let _ = std::fs::remove_file(&rotated);
        std::fs::write(&path, "old-1\n").unwrap();
        let lines = follow_through(&path, "old-1", &steps, at);
        assert_eq!(lines, ["old-2", "new-1", "new-2"], "steps at calls {at:?}");
        runs += 1;
    });
    assert_eq!(runs, 4845, "C(16 + 4, 4) placements");
}

#[test]
fn a_copy_truncate_at_any_point_of_any_check_delivers_every_later_line_once_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let copy = dir.path().join("app.log.1");
    let old_last = || append(&path, "old-2\n");
    let copy_truncate = || {
        std::fs::copy(&path, &copy).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
    };
    let short = || append(&path, "new-1\n");
    let long = || {
        append(
            &path,
            "new-2, longer than everything that was read before\n",
        )
    };
    let steps: [&dyn Fn(); 4] = [&old_last, &copy_truncate, &short, &long];
    every_placement(steps.len(), &mut |at| {
        std::fs::write(&path, "old-1\n").unwrap();
        let lines = follow_through(&path, "old-1", &steps, at);
        // `old-2` is read only if a check ran between its write and the truncation; what
        // was written after the truncation is always read, once, whole.
        let after = [
            "new-1",
            "new-2, longer than everything that was read before",
        ];
        let with_old = ["old-2", after[0], after[1]];
        assert!(
            lines == after || lines == with_old,
            "steps at calls {at:?}: {lines:?}"
        );
    });
}
