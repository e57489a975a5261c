//! `tidewall tour`: measured scenarios of the main patterns (the README lists which), most of
//! them against a real HTTP service on loopback.

mod bounded;
mod capacity;
pub(crate) mod client;
mod config;
mod http_client;
mod http_config;
mod overload;
mod pool;
mod redis;
mod report;
mod resilience;
mod scenarios;
pub(crate) mod server;
mod service;
mod streams;
mod tasks;
mod tower;

use std::time::Instant;

use anyhow::bail;
use clap::{Args, ValueEnum};
use tidewall::rt::{AsyncStd, SmolRuntime, Tokio};

use report::Report;

/// The worker thread count used for multi-threaded runtimes, equal on each.
const WORKER_THREADS: usize = 2;

/// Descriptors the tour may hold open at once: a client socket and the server's end for each
/// request in flight, up to about 850 at the peak of its overload section (about 650 with
/// `--quick`), and spare.
pub(crate) const OPEN_FILES: u64 = 1024;

#[derive(Args, Debug)]
pub(crate) struct TourArgs {
    /// The runtime the client side of every scenario runs on. The Redis sections (--redis,
    /// --redis-cluster) are the exception: tidewall-redis runs on tokio only, so with smol or
    /// async-std they run on a tokio multi-thread runtime of their own (2 workers); the report
    /// says where they ran.
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Tokio)]
    runtime: RuntimeChoice,
    /// Smaller workloads, for CI.
    #[arg(long)]
    quick: bool,
    /// Print machine-readable JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also run three sections through this Redis (`redis://127.0.0.1:6379`): three simulated
    /// replicas share a rate limit and a bulkhead, and decide a hot limit exactly and in lease
    /// mode.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The same three sections on a Redis Cluster reached first through these nodes
    /// (`redis://127.0.0.1:7000,redis://127.0.0.1:7001`).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    redis_cluster: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RuntimeChoice {
    /// tokio, multi-thread scheduler with 2 workers.
    Tokio,
    /// tokio, current-thread scheduler.
    TokioCurrent,
    /// smol: an explicit executor on 2 worker threads.
    Smol,
    /// async-std (legacy: discontinued upstream), its global executor.
    AsyncStd,
}

impl RuntimeChoice {
    fn describe(self) -> String {
        match self {
            Self::Tokio => format!("tokio multi-thread ({WORKER_THREADS} workers)"),
            Self::TokioCurrent => "tokio current-thread".into(),
            Self::Smol => format!("smol explicit executor ({WORKER_THREADS} worker threads)"),
            Self::AsyncStd => "async-std (legacy, discontinued upstream; global executor)".into(),
        }
    }
}

/// The chosen runtime, started once: the tour runs on it in two parts, with the Redis sections
/// between them.
enum Started {
    Tokio(tokio::runtime::Runtime),
    Smol(SmolRuntime),
    AsyncStd,
}

impl Started {
    fn new(choice: RuntimeChoice) -> anyhow::Result<Self> {
        Ok(match choice {
            RuntimeChoice::Tokio => Self::Tokio(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WORKER_THREADS)
                    .enable_all()
                    .build()?,
            ),
            RuntimeChoice::TokioCurrent => Self::Tokio(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            ),
            RuntimeChoice::Smol => Self::Smol(SmolRuntime::multi_threaded(WORKER_THREADS)?),
            RuntimeChoice::AsyncStd => Self::AsyncStd,
        })
    }

    fn sections(
        &self,
        part: Part,
        server: &server::Server,
        size: scenarios::Size,
    ) -> Vec<report::Section> {
        match self {
            Self::Tokio(rt) => rt.block_on(part.run(Tokio, server, size)),
            Self::Smol(rt) => rt.block_on(part.run(rt.handle(), server, size)),
            Self::AsyncStd => async_std::task::block_on(part.run(AsyncStd, server, size)),
        }
    }

    /// The Redis sections on `target`, and where they ran: on this runtime if it is tokio's,
    /// else on a tokio runtime of their own (tidewall-redis runs on tokio only).
    fn redis(
        &self,
        target: &redis::Target,
        size: scenarios::Size,
    ) -> (Vec<report::Section>, &'static str) {
        if let Self::Tokio(rt) = self {
            return (
                rt.block_on(redis::all(target, size)),
                "on the chosen tokio runtime",
            );
        }
        let own = "on a tokio multi-thread runtime of their own (2 workers): tidewall-redis \
                   runs on tokio only";
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .enable_all()
            .build()
        {
            Ok(rt) => (rt.block_on(redis::all(target, size)), own),
            Err(error) => (vec![redis::failed_to_start(target, &error)], own),
        }
    }
}

/// The tour's parts on the chosen runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Every section but the shutdown's.
    Local,
    /// The graceful shutdown on a real SIGTERM, which leaves signal handlers installed.
    Shutdown,
}

impl Part {
    async fn run<R: client::Net>(
        self,
        rt: R,
        server: &server::Server,
        size: scenarios::Size,
    ) -> Vec<report::Section> {
        match self {
            Self::Local => tour(rt, server, size).await,
            Self::Shutdown => service::shutdown(rt).await,
        }
    }
}

/// What runs, in order: the Redis sections come before the shutdown section, whose signal
/// handlers stay installed for the life of the process (with them, Ctrl-C would no longer end
/// the tour while Redis is measured).
fn steps(args: &TourArgs) -> Vec<Step> {
    let mut steps = vec![Step::Part(Part::Local)];
    if let Some(url) = &args.redis {
        steps.push(Step::Redis(redis::Target::Server(url.clone())));
    }
    if !args.redis_cluster.is_empty() {
        steps.push(Step::Redis(redis::Target::Cluster(
            args.redis_cluster.clone(),
        )));
    }
    steps.push(Step::Part(Part::Shutdown));
    steps
}

#[derive(Debug)]
enum Step {
    Part(Part),
    Redis(redis::Target),
}

pub(crate) fn run(args: &TourArgs) -> anyhow::Result<()> {
    let server = server::start()?;
    let size = if args.quick {
        scenarios::Size::Quick
    } else {
        scenarios::Size::Full
    };
    let started = Instant::now();
    let runtime = Started::new(args.runtime)?;
    let mut sections = Vec::new();
    let mut redis_runtime = None;
    // Nothing from here on returns early: a failure is a failed check in the report, which
    // is printed whatever happened.
    for step in steps(args) {
        match step {
            Step::Part(part) => sections.extend(runtime.sections(part, &server, size)),
            Step::Redis(target) => {
                let (found, on) = runtime.redis(&target, size);
                sections.extend(found);
                redis_runtime = Some(on.to_owned());
            }
        }
    }
    let report = Report {
        runtime: args.runtime.describe(),
        redis_runtime,
        quick: args.quick,
        total: started.elapsed(),
        sections,
    };
    if args.json {
        report.print_json()?;
    } else {
        report.print_tables();
    }
    let end = Ending::of(&report);
    for line in &end.notes {
        note(line);
    }
    if let Some(failed) = end.failed {
        bail!(failed);
    }
    Ok(())
}

/// How the tour ends once its report is printed.
#[derive(Debug, PartialEq, Eq)]
struct Ending {
    /// Notes for stderr, whether or not a check failed.
    notes: Vec<String>,
    /// The error the command ends with (a non-zero exit) when a check failed.
    failed: Option<String>,
}

impl Ending {
    fn of(report: &Report) -> Self {
        let unmeasured = report.checks_with(report::Status::NotMeasurable);
        let notes = if unmeasured.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "{} check(s) not measurable on this platform (neither passed nor failed): {}",
                unmeasured.len(),
                unmeasured.join("; ")
            )]
        };
        let failed = report.failed_checks();
        let failed = (!failed.is_empty())
            .then(|| format!("{} check(s) failed: {}", failed.len(), failed.join("; ")));
        Self { notes, failed }
    }
}

/// A line on stderr, beside the report on stdout.
#[allow(clippy::print_stderr, reason = "a note beside the report")]
pub(crate) fn note(text: &str) {
    eprintln!("note: {text}");
}

/// Every section but the shutdown's, in order: the basic scenarios, the resilience policies
/// (the adaptive limiter under overload after the configuration reload), streams, tasks, then
/// supervision.
async fn tour<R: client::Net>(
    rt: R,
    server: &server::Server,
    size: scenarios::Size,
) -> Vec<report::Section> {
    let mut sections = scenarios::all(rt.clone(), server, size).await;
    sections.extend(resilience::all(rt.clone(), server, size).await);
    sections.extend(tower::all(rt.clone(), server, size).await);
    sections.extend(http_client::all(rt.clone(), server, size).await);
    sections.extend(config::all(rt.clone(), server, size).await);
    sections.extend(overload::all(rt.clone(), server, size).await);
    sections.extend(streams::all(rt.clone(), size).await);
    sections.extend(tasks::all(rt.clone(), size).await);
    sections.extend(service::supervisors(rt).await);
    sections
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use std::time::Duration;

    use super::report::{Report, Section};
    use super::{Ending, Part, Step, TourArgs, steps};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tour: TourArgs,
    }

    fn steps_of(args: &[&str]) -> Vec<Step> {
        steps(&Cli::parse_from(std::iter::once("tour").chain(args.iter().copied())).tour)
    }

    /// The shutdown section leaves SIGINT handled by the runtime: anything after it could not
    /// be stopped with Ctrl-C.
    #[test]
    fn the_shutdown_section_comes_last_after_the_redis_sections() {
        for args in [
            &[][..],
            &["--redis", "redis://127.0.0.1:6379"][..],
            &[
                "--redis",
                "redis://a:1",
                "--redis-cluster",
                "redis://b:1,redis://c:1",
            ][..],
        ] {
            let steps = steps_of(args);
            assert!(
                matches!(steps.first(), Some(Step::Part(Part::Local))),
                "{steps:?}"
            );
            assert!(
                matches!(steps.last(), Some(Step::Part(Part::Shutdown))),
                "{steps:?}"
            );
            let redis = steps.iter().filter(|s| matches!(s, Step::Redis(_))).count();
            assert_eq!(redis + 2, steps.len(), "{steps:?}");
        }
        assert_eq!(
            steps_of(&["--redis-cluster", "redis://b:1,redis://c:1"])
                .iter()
                .filter(|s| matches!(s, Step::Redis(_)))
                .count(),
            1
        );
    }

    fn report(checks: impl FnOnce(&mut Section)) -> Report {
        let mut section = Section::new("streams", "api");
        checks(&mut section);
        Report {
            runtime: "tokio".into(),
            redis_runtime: None,
            quick: true,
            total: Duration::from_secs(1),
            sections: vec![section],
        }
    }

    const UNMEASURED: &str = "1 check(s) not measurable on this platform (neither passed nor \
                              failed): streams: peak RSS bounded (no /proc/self/clear_refs)";

    /// The note on checks that were not measurable is printed whether or not another check
    /// failed, and only a failed check fails the command.
    #[test]
    fn the_unmeasurable_note_is_printed_with_or_without_a_failure() {
        let unmeasurable = |s: &mut Section| {
            s.check("counted", true)
                .not_measurable("peak RSS bounded", "no /proc/self/clear_refs");
        };
        let with_failure = Ending::of(&report(|s| {
            unmeasurable(s);
            s.check("ordered", false);
        }));
        assert_eq!(
            with_failure,
            Ending {
                notes: vec![UNMEASURED.to_owned()],
                failed: Some("1 check(s) failed: streams: ordered".to_owned()),
            }
        );
        let without = Ending::of(&report(unmeasurable));
        assert_eq!(
            without,
            Ending {
                notes: vec![UNMEASURED.to_owned()],
                failed: None,
            }
        );
        let all_passed = Ending::of(&report(|s| {
            s.check("counted", true);
        }));
        assert_eq!(
            all_passed,
            Ending {
                notes: Vec::new(),
                failed: None,
            }
        );
    }
}
