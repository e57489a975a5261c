//! What the task-report tests share: an `Exit` read into a comparable value, the two
//! stopped endings, a seeded pick.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use crate::support::Rng;
use tidewall::task::{Ending, Exit};

/// An `Exit` with the payload read, comparable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Ok(u32),
    Err(u32),
    Panicked(String),
    Aborted,
}

pub fn seen(exit: &Exit<u32, u32, tidewall::rt::Panic>) -> Seen {
    match exit {
        Exit::Ok(v) => Seen::Ok(*v),
        Exit::Err(e) => Seen::Err(*e),
        Exit::Panicked(p) => Seen::Panicked(p.message().unwrap_or("?").to_owned()),
        Exit::Aborted => Seen::Aborted,
        other => panic!("an Exit this test does not know: {other:?}"),
    }
}

pub fn stopped(took: Duration) -> Ending {
    Ending::Stopped { took }
}

pub fn aborted(took: Duration) -> Ending {
    Ending::Aborted { took }
}

pub fn pick<T: Copy>(rng: &mut Rng, from: &[T]) -> T {
    from[usize::try_from(rng.below(from.len() as u64)).unwrap()]
}
