//! Black-box, adversarial tests of `Registry::reload` / `reload_file` called from a listener
//! on the thread already reloading that registry, written from the public docs only: the
//! reentrant reload is refused with `Problem::Reentrant` (empty path), the reload in progress
//! finishes unaffected, other registries reload from the listener, listeners may look the
//! registry up, and nothing is left marked or locked afterwards (panics, many threads, chains
//! of registries, keyed breakers, `reload_file`, the reload counter).
#![cfg(all(feature = "toml", feature = "test-util"))]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tidewall::config::{Config, Invalid, Problem, Registry, Reload};
use tidewall::telemetry::EventKind;
use tidewall::testing::FakeClock;

type Reg = Registry<FakeClock>;
type Shared = Arc<OnceLock<Arc<Reg>>>;

const WAIT: Duration = Duration::from_secs(60);

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// A breaker whose window has `calls` calls (a change of it resets the breaker) and a
/// bulkhead of `capacity` (a change of it is a retune).
fn text(calls: u32, capacity: u32) -> String {
    format!(
        "[instances.hosts.breaker]\nconsecutive_failures = 2\nwindow_calls = {calls}\n\
         [instances.hosts.bulkhead]\nmax_concurrent = {capacity}\nmax_queue = 0\n"
    )
}

fn window(registry: &Reg) -> Option<u32> {
    registry.config().instances["hosts"]
        .breaker
        .as_ref()
        .and_then(|b| b.window_calls)
}

/// Runs `f` on a new thread and waits for it at most a minute: a deadlock fails the test.
fn on_thread<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    finished
        .recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("{what}: did not finish within a minute ({e}): deadlocked?"))
}

/// Reloads `registry` with `text` on a thread of its own (see [`on_thread`]); returns the
/// breakers the reload reset.
fn resets_on_thread(registry: &Arc<Reg>, what: &str, text: &str) -> Result<usize, Invalid> {
    let (reloading, config) = (Arc::clone(registry), config(text));
    on_thread(what, move || {
        reloading.reload(config).map(|r| r.reset.len())
    })
}

fn assert_reentrant(answer: &Result<Reload, Invalid>, what: &str) {
    let refused = answer
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("{what}: a reentrant reload was applied"));
    assert_eq!(refused.problem(), &Problem::Reentrant, "{what}: {refused}");
    assert_eq!(refused.path(), "", "{what}: Reentrant has an empty path");
}

/// A registry on a fake clock whose listener runs `on_reset` on every state change.
fn registry_with(initial: &str, on_reset: impl Fn() + Send + Sync + 'static) -> Arc<Reg> {
    let registry = Registry::builder(config(initial))
        .runtime(FakeClock::new())
        .on_event(move |event| {
            if matches!(event.kind, EventKind::StateChanged { .. }) {
                on_reset();
            }
        })
        .build()
        .unwrap();
    let registry = Arc::new(registry);
    registry.breaker("hosts").unwrap();
    registry
}

/// `reload_file` from the listener is refused as `Reentrant` exactly like `reload`: not read
/// as a file, not `Problem::Read`, not applied; the outer reload's configuration is in force.
#[test]
fn reload_file_from_a_listener_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewall.toml");
    std::fs::write(&path, text(30, 9)).unwrap();
    let missing = dir.path().join("missing.toml");
    let cell: Shared = Arc::default();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (seen, told, file, absent) = (
        Arc::clone(&cell),
        Arc::clone(&answers),
        path.clone(),
        missing.clone(),
    );
    let registry = registry_with(&text(10, 2), move || {
        let registry = seen.get().expect("set before any reload");
        let from_file = registry.reload_file(&file);
        let from_missing = registry.reload_file(&absent);
        told.lock().unwrap().push((from_file, from_missing));
    });
    assert!(cell.set(Arc::clone(&registry)).is_ok());
    let bulkhead = registry.bulkhead("hosts").unwrap();

    let outer = resets_on_thread(&registry, "the outer reload", &text(20, 5));
    assert_eq!(outer, Ok(1), "the outer reload finishes, with its reset");
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert_eq!(answers.len(), 1, "one reset heard once: {answers:?}");
    let (from_file, from_missing) = &answers[0];
    assert_reentrant(from_file, "reload_file of a readable file");
    // A missing file: `reload_file` documents `Problem::Read` first ("otherwise as
    // reload"), so either refusal is within the docs; it must not be anything else.
    let missing_refused = from_missing
        .as_ref()
        .expect_err("reload_file of a missing file from a listener");
    assert!(
        matches!(
            missing_refused.problem(),
            Problem::Reentrant | Problem::Read(_)
        ),
        "{missing_refused}"
    );
    assert_eq!(window(&registry), Some(20), "the outer reload's window");
    assert_eq!(bulkhead.capacity(), 5, "the outer reload's capacity");

    // And reload_file works from this thread afterwards.
    registry.reload_file(&path).unwrap();
    assert_eq!((window(&registry), bulkhead.capacity()), (Some(30), 9));
}

/// A listener of A reloads B (its window changes shape, so B's breaker resets), and B's
/// listener, on the same thread, reloads A: A is being reloaded on this thread, so that is
/// `Reentrant`, not a deadlock. B's reload itself is applied.
#[test]
fn a_chain_through_another_registry_back_to_the_first_is_refused() {
    let (a_cell, b_cell): (Shared, Shared) = (Arc::default(), Arc::default());
    let a_log = Arc::new(Mutex::new(Vec::new()));
    let b_log = Arc::new(Mutex::new(Vec::new()));
    let (b_seen, a_told) = (Arc::clone(&b_cell), Arc::clone(&a_log));
    let a = registry_with(&text(10, 2), move || {
        let b = b_seen.get().expect("set before any reload");
        let answer = b.reload(config(&text(40, 4))).map(|r| r.reset.len());
        a_told.lock().unwrap().push(answer);
    });
    let (a_seen, b_told) = (Arc::clone(&a_cell), Arc::clone(&b_log));
    let b = registry_with(&text(10, 2), move || {
        let a = a_seen.get().expect("set before any reload");
        let answer = a.reload(config(&text(50, 6)));
        // Looking A up while A reloads on this very thread is allowed.
        let breakers = a.breakers().len();
        b_told.lock().unwrap().push((answer, breakers));
    });
    assert!(a_cell.set(Arc::clone(&a)).is_ok());
    assert!(b_cell.set(Arc::clone(&b)).is_ok());

    let outer = resets_on_thread(&a, "A's reload through B's listener", &text(20, 3));
    assert_eq!(outer, Ok(1), "A's reload finishes with its reset");
    let a_answers = a_log.lock().unwrap().clone();
    assert_eq!(
        a_answers,
        vec![Ok(1)],
        "B reloads from A's listener, with its reset"
    );
    let b_answers = std::mem::take(&mut *b_log.lock().unwrap());
    assert_eq!(b_answers.len(), 1, "B's reset heard once: {b_answers:?}");
    assert_reentrant(
        &b_answers[0].0,
        "A reloaded from B's listener within A's reload",
    );
    assert_eq!(b_answers[0].1, 1, "A's breakers listed during its reload");
    assert_eq!(
        window(&a),
        Some(20),
        "A: its own reload, not B's listener's"
    );
    assert_eq!(window(&b), Some(40), "B: the reload from A's listener");
    assert_eq!(a.bulkhead("hosts").unwrap().capacity(), 3);

    // Reloading B directly (not within A's reload): B's listener now reloads A for real.
    let outer = resets_on_thread(&b, "B's reload", &text(60, 7));
    assert_eq!(outer, Ok(1));
    // A's reload from B's listener resets A's breaker (20 -> 50): A's listener then reloads B
    // on the thread already reloading B: refused.
    let b_answers = std::mem::take(&mut *b_log.lock().unwrap());
    assert_eq!(b_answers.len(), 1, "{b_answers:?}");
    assert_eq!(
        b_answers[0].0.as_ref().map(|r| r.reset.len()),
        Ok(1),
        "A is not being reloaded on this thread now: applied"
    );
    let a_answers = a_log.lock().unwrap().clone();
    assert_eq!(a_answers.len(), 2, "{a_answers:?}");
    let refused = a_answers[1]
        .as_ref()
        .expect_err("B reloaded from A's listener within B's reload");
    assert_eq!(refused.problem(), &Problem::Reentrant);
    assert_eq!(window(&a), Some(50));
    assert_eq!(window(&b), Some(60));
}

/// A listener that panics during a reload: the panic is caught around the outer reload (or
/// the registry swallows it); either way this thread is no longer marked as reloading (a
/// reload from it, and a reentrant reload in a listener, behave as ever) and nothing is left
/// locked (another thread reloads and looks it up).
#[test]
fn a_panicking_listener_leaves_no_stale_mark_and_nothing_locked() {
    let cell: Shared = Arc::default();
    let panic_next = Arc::new(AtomicBool::new(true));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (seen, panicking, told) = (
        Arc::clone(&cell),
        Arc::clone(&panic_next),
        Arc::clone(&answers),
    );
    let registry = registry_with(&text(10, 2), move || {
        assert!(
            !panicking.swap(false, SeqCst),
            "a listener that panics once"
        );
        let registry = seen.get().expect("set before any reload");
        told.lock()
            .unwrap()
            .push(registry.reload(config(&text(99, 9))).map(|r| r.retuned));
    });
    assert!(cell.set(Arc::clone(&registry)).is_ok());

    let reloading = Arc::clone(&registry);
    let (first, second, third) = on_thread("reloads after a listener's panic", move || {
        let first = catch_unwind(AssertUnwindSafe(|| {
            reloading
                .reload(config(&text(20, 3)))
                .map(|r| r.reset.len())
        }))
        .map_err(|_| "panicked");
        // The same thread: not marked as reloading any more.
        let second = reloading
            .reload(config(&text(30, 4)))
            .map(|r| r.reset.len());
        let third = reloading
            .reload(config(&text(31, 5)))
            .map(|r| r.reset.len());
        (first, second, third)
    });
    match first {
        Ok(Ok(1)) | Err("panicked") => {}
        other => panic!("the reload whose listener panicked: {other:?}"),
    }
    assert_eq!(second, Ok(1), "a reload on the same thread after the panic");
    assert_eq!(third, Ok(1), "and another");
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert_eq!(answers.len(), 2, "the two later resets heard: {answers:?}");
    for (i, answer) in answers.iter().enumerate() {
        let refused = answer
            .as_ref()
            .expect_err("a reentrant reload after the panic");
        assert_eq!(refused.problem(), &Problem::Reentrant, "answer {i}");
    }
    assert_eq!(window(&registry), Some(31));
    assert_eq!(registry.bulkhead("hosts").unwrap().capacity(), 5);

    // Nothing left locked: another thread reloads and looks the registry up.
    let other = Arc::clone(&registry);
    let from_elsewhere = on_thread("a reload from another thread", move || {
        let reload = other.reload(config(&text(31, 6))).map(|r| r.retuned);
        let listed = (other.breakers().len(), other.bulkheads().len());
        (reload.is_ok(), listed)
    });
    assert_eq!(from_elsewhere, (true, (1, 1)));
    assert_eq!(registry.bulkhead("hosts").unwrap().capacity(), 6);
}

/// The mark is this thread's, not the registry's: while one thread's reload is inside its
/// listener, a reload of the same registry from another thread waits and is applied (not
/// refused as `Reentrant`), and lookups from that thread work meanwhile.
#[test]
fn a_reload_from_another_thread_during_a_listener_waits_and_is_applied() {
    let (inside, entered) = mpsc::channel::<()>();
    let inside = Mutex::new(Some(inside));
    let registry = registry_with(&text(10, 2), move || {
        if let Some(inside) = inside.lock().unwrap().take() {
            let _ = inside.send(());
            // Keep the reload in progress for a while.
            std::thread::sleep(Duration::from_millis(300));
        }
    });

    let first = Arc::clone(&registry);
    let (first_done, first_finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = first_done.send(first.reload(config(&text(20, 3))).map(|r| r.reset.len()));
    });
    entered
        .recv_timeout(WAIT)
        .expect("the first reload's listener runs");
    // The first reload is inside its listener now.
    let second = Arc::clone(&registry);
    let second = on_thread("a reload from another thread", move || {
        let listed = second.breakers().len();
        let reload = second.reload(config(&text(20, 8))).map(|r| r.retuned);
        (listed, reload)
    });
    assert_eq!(
        second.0, 1,
        "a lookup from another thread during the reload"
    );
    let retuned = second.1.unwrap_or_else(|e| {
        panic!(
            "another thread's reload is not reentrant: {:?} {e}",
            e.problem()
        )
    });
    assert!(retuned >= 1, "the bulkhead retuned");
    assert_eq!(
        first_finished
            .recv_timeout(WAIT)
            .expect("the first reload finishes"),
        Ok(1)
    );
    assert_eq!(window(&registry), Some(20));
    assert_eq!(
        registry.bulkhead("hosts").unwrap().capacity(),
        8,
        "the second reload, applied after the first"
    );
}

/// The docs' advice: reload from another thread instead. A listener that spawns a thread to
/// reload (without waiting for it) gets its reload applied after the one in progress.
#[test]
fn a_listener_reloading_from_a_spawned_thread_is_applied_after_the_reload() {
    let cell: Shared = Arc::default();
    let (result, results) = mpsc::channel();
    let result = Mutex::new(Some(result));
    let seen = Arc::clone(&cell);
    let registry = registry_with(&text(10, 2), move || {
        if let Some(result) = result.lock().unwrap().take() {
            let registry = Arc::clone(seen.get().expect("set before any reload"));
            std::thread::spawn(move || {
                let _ = result.send(registry.reload(config(&text(20, 7))).map(|r| r.retuned));
            });
        }
    });
    assert!(cell.set(Arc::clone(&registry)).is_ok());
    let outer = resets_on_thread(&registry, "the outer reload", &text(20, 3));
    assert_eq!(outer, Ok(1));
    let later = results
        .recv_timeout(WAIT)
        .expect("the spawned reload finishes");
    assert!(later.is_ok(), "the spawned reload is applied: {later:?}");
    assert_eq!(registry.bulkhead("hosts").unwrap().capacity(), 7);
}

/// Many threads reload the same registry, each reload changing the window's shape (so every
/// one resets the breaker and its listener tries a reentrant reload): every outer reload is
/// applied, every listener's reload is `Reentrant`, one per reset, and nothing deadlocks.
#[test]
fn many_threads_reloading_while_listeners_try_reentrant_reloads() {
    const THREADS: u32 = 4;
    const EACH: u32 = 25;
    let cell: Shared = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let applied = Arc::new(AtomicU64::new(0));
    let (seen, refusals, wrongly) = (
        Arc::clone(&cell),
        Arc::clone(&refused),
        Arc::clone(&applied),
    );
    let registry = registry_with(&text(50, 2), move || {
        let registry = seen.get().expect("set before any reload");
        match registry.reload(config(&text(9_999, 1))) {
            Err(e) if e.problem() == &Problem::Reentrant && e.path().is_empty() => {
                refusals.fetch_add(1, SeqCst);
            }
            _ => {
                wrongly.fetch_add(1, SeqCst);
            }
        }
    });
    assert!(cell.set(Arc::clone(&registry)).is_ok());
    let (done, finished) = mpsc::channel();
    for t in 0..THREADS {
        let (registry, done) = (Arc::clone(&registry), done.clone());
        std::thread::spawn(move || {
            let mut resets = 0_u64;
            let mut errors = Vec::new();
            for i in 0..EACH {
                // A window no other reload uses: always a change of shape.
                let calls = 100 + t * EACH + i;
                match registry.reload(config(&text(calls, 2 + i % 5))) {
                    Ok(reload) => resets += u64::try_from(reload.reset.len()).unwrap(),
                    Err(e) => errors.push(e.to_string()),
                }
                let _ = registry.breakers();
            }
            let _ = done.send((resets, errors));
        });
    }
    drop(done);
    let mut resets = 0;
    for _ in 0..THREADS {
        let (r, errors) = finished
            .recv_timeout(WAIT)
            .expect("every reloading thread finishes: no deadlock");
        assert!(errors.is_empty(), "outer reloads refused: {errors:?}");
        resets += r;
    }
    assert_eq!(
        resets,
        u64::from(THREADS * EACH),
        "every reload reset the breaker"
    );
    assert_eq!(
        applied.load(SeqCst),
        0,
        "a listener's reload was not refused as Reentrant"
    );
    assert_eq!(
        refused.load(SeqCst),
        resets,
        "one refused reentrant reload per reset"
    );
    assert_ne!(
        window(&registry),
        Some(9_999),
        "no reentrant reload took effect"
    );
    assert_ne!(registry.bulkhead("hosts").unwrap().capacity(), 1);
}

/// Keyed breakers reset by a reload each tell the listener; every reentrant reload they make
/// is refused, the reload finishes, and the keys' breakers are reset to closed.
#[test]
fn keyed_breakers_resetting_with_a_reentrant_listener() {
    let cell: Shared = Arc::default();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let armed = Arc::new(AtomicBool::new(false));
    let (seen, told, arm) = (Arc::clone(&cell), Arc::clone(&answers), Arc::clone(&armed));
    let registry = registry_with(&text(10, 2), move || {
        if !arm.load(SeqCst) {
            // The keys' breakers opening, before the reload: not part of the attack.
            told.lock().unwrap().push((Err(None), true));
            return;
        }
        let registry = seen.get().expect("set before any reload");
        let mine = registry.reload(config(&text(77, 1))).map_err(Some);
        // Lookups of the keyed table during its own reset.
        let keys = registry.keyed_breaker::<u8>("hosts").map(|t| t.len());
        told.lock().unwrap().push((mine, keys.is_ok()));
    });
    assert!(cell.set(Arc::clone(&registry)).is_ok());
    let table = registry.keyed_breaker::<u8>("hosts").unwrap();
    for key in 0..8_u8 {
        for _ in 0..2 {
            let _ = futures_util::FutureExt::now_or_never(
                table.call(&key, || async { Err::<(), _>("down") }),
            );
        }
    }
    let opened = answers.lock().unwrap().len();
    assert!(opened >= 8, "each key's breaker opened, heard: {opened}");

    armed.store(true, SeqCst);
    let outer = resets_on_thread(&registry, "a reload resetting keyed breakers", &text(20, 3));
    assert!(outer.is_ok(), "the reload finishes: {outer:?}");
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let during: Vec<_> = answers.into_iter().skip(opened).collect();
    assert!(
        during.len() >= 9,
        "the breaker's and all 8 keys' resets heard: {}",
        during.len()
    );
    for (i, (mine, looked_up)) in during.into_iter().enumerate() {
        let mine = mine.map_err(|e| e.expect("a reentrant reload's answer"));
        assert_reentrant(&mine, &format!("reset {i}"));
        assert!(looked_up, "reset {i}: the keyed table looked up");
    }
    assert_eq!(window(&registry), Some(20));
    assert_eq!(registry.bulkhead("hosts").unwrap().capacity(), 3);
    for key in 0..8_u8 {
        assert_eq!(
            table.state(&key),
            Some(tidewall::breaker::State::Closed),
            "key {key} reset to closed"
        );
    }
}

/// With `metrics`: the refused reentrant reload counts as `refused`, the outer one as
/// `applied` (both series registered from the start).
#[cfg(feature = "metrics")]
#[test]
fn the_refused_reentrant_reload_counts_as_refused() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let cell: Shared = Arc::default();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (seen, told) = (Arc::clone(&cell), Arc::clone(&answers));
    let registry = metrics::with_local_recorder(&recorder, || {
        registry_with(&text(10, 2), move || {
            let registry = seen.get().expect("set before any reload");
            let answer = registry.reload(config(&text(30, 4)));
            told.lock().unwrap().push(answer.map(|r| r.retuned));
        })
    });
    assert!(cell.set(Arc::clone(&registry)).is_ok());
    // One snapshot for both series: the debugging recorder's snapshot resets its counters.
    let counts = || {
        let snapshot = snapshotter.snapshot().into_vec();
        ["applied", "refused"].map(|outcome| {
            snapshot.iter().find_map(|(key, _, _, value)| {
                let key = key.key();
                (key.name() == "tidewall_config_reloads_total"
                    && key
                        .labels()
                        .any(|l| l.key() == "outcome" && l.value() == outcome))
                .then_some(value)
                .and_then(|value| match value {
                    DebugValue::Counter(n) => Some(*n),
                    _ => None,
                })
            })
        })
    };
    let outer = resets_on_thread(&registry, "the outer reload", &text(20, 3));
    assert_eq!(outer, Ok(1));
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        answers[0].as_ref().map_err(Invalid::problem),
        Err(&Problem::Reentrant)
    );
    assert_eq!(
        counts(),
        [Some(1), Some(1)],
        "the outer reload applied, the reentrant one refused"
    );
}
