//! What the supervisor tests share (supervisor_restarts.rs, supervisor_strategies.rs,
//! supervisor_shutdown.rs): a fixed backoff, an event log, stop tokens cancelled on a
//! schedule, and children that fail or run until told to stop.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::task::{
    CancellationToken,
    supervisor::{ChildSpec, SupervisorEvent},
};
use tidewall::testing::Clocked;
use tidewall::{Backoff, Jitter};

/// A constant backoff without jitter that never runs out.
pub fn fixed(delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap()
}

/// Supervisor events with the virtual time each came at.
pub type Log = Arc<Mutex<Vec<(Duration, SupervisorEvent)>>>;

/// Records every event with its virtual time since `start`.
pub fn recorder<R: Runtime>(rt: &R) -> (Log, impl Fn(&SupervisorEvent) + Send + Sync + 'static) {
    let log: Log = Arc::default();
    let (sink, rt, start) = (Arc::clone(&log), rt.clone(), rt.now());
    (log, move |event: &SupervisorEvent| {
        sink.lock().unwrap().push((rt.now() - start, event.clone()));
    })
}

pub fn starts(log: &Log, name: &str) -> Vec<Duration> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|(at, e)| match e {
            SupervisorEvent::Started { child, .. } if &**child == name => Some(*at),
            _ => None,
        })
        .collect()
}

/// A stop token that a task cancels with `reason` after `after` of virtual time.
pub fn cancelled_after<R: Runtime>(
    rt: &Clocked<R>,
    after: Duration,
    reason: &'static str,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let (stopper, rt2) = (stop.clone(), rt.clone());
    drop(rt.spawn(async move {
        rt2.sleep(after).await;
        stopper.cancel(reason);
    }));
    stop
}

/// A child that fails `after` each start.
pub fn failing<R: Runtime>(rt: &R, name: &str, after: Duration) -> ChildSpec {
    let rt = rt.clone();
    ChildSpec::new(name, move |_stop| {
        let rt = rt.clone();
        async move {
            rt.sleep(after).await;
            Err::<(), _>("lost connection")
        }
    })
}

/// A child that runs until told to stop.
pub fn steady<R: Runtime>(rt: &R, name: &str) -> ChildSpec {
    let _ = rt;
    ChildSpec::new(name, |stop: CancellationToken| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    })
}
