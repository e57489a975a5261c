//! Configuring and starting a pool.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::queue::{Queue, Shared};
use super::worker::work;
use super::{Worker, WorkerPool};
use crate::ConfigError;
use crate::rt::{DefaultRuntime, Runtime};
use crate::task::wakers::WakerSlots;

/// The most workers a pool starts: each is spawned (and its handle kept) up front, so an
/// unbounded count would spawn without end or overflow the handles' allocation.
const MAX_WORKERS: usize = 1 << 16;

impl WorkerPool<(), ()> {
    /// Configures a pool: by default as many workers as the machine runs threads in parallel
    /// (`std::thread::available_parallelism`, 1 if unknown), a queue of 100 jobs and no job
    /// timeout, on the default runtime.
    pub fn builder() -> WorkerPoolBuilder {
        WorkerPoolBuilder {
            rt: DefaultRuntime::default(),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            queue: 100,
            job_timeout: None,
        }
    }
}

/// Configures a [`WorkerPool`]; see [`WorkerPool::builder`].
#[must_use]
#[derive(Debug, Clone)]
pub struct WorkerPoolBuilder<R = DefaultRuntime> {
    rt: R,
    workers: usize,
    queue: usize,
    job_timeout: Option<Duration>,
}

impl<R> WorkerPoolBuilder<R> {
    /// How many workers run jobs at once (at most 65,536: each is a task spawned at start).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How many jobs may wait for a worker (default 100).
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// Bounds each job (default: none); a job that runs longer is dropped, and its handle
    /// reads [`Exit::Err`](crate::task::Exit::Err) with [`Elapsed`](crate::time::Elapsed).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// Spawns the workers on `rt`.
    pub fn runtime<R2: Runtime>(self, rt: R2) -> WorkerPoolBuilder<R2> {
        WorkerPoolBuilder {
            rt,
            workers: self.workers,
            queue: self.queue,
            job_timeout: self.job_timeout,
        }
    }
}

impl<R: Runtime> WorkerPoolBuilder<R> {
    /// Starts the workers, each running `handler(job)` for the jobs it takes from the
    /// queue, each bounded by the job timeout if one is set.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for zero workers, a zero queue or a zero timeout;
    /// [`ConfigError::OutOfRange`] for more than 65,536 workers;
    /// [`ConfigError::DurationOverflow`] for a timeout beyond `u64::MAX` nanoseconds.
    pub fn start<J, T, F, Fut>(self, handler: F) -> Result<WorkerPool<J, T, R>, ConfigError>
    where
        J: Send + 'static,
        T: Send + 'static,
        F: Fn(J) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let Self {
            rt,
            workers,
            queue,
            job_timeout,
        } = self;
        if workers == 0 {
            return Err(ConfigError::Zero { field: "workers" });
        }
        if workers > MAX_WORKERS {
            return Err(ConfigError::OutOfRange {
                field: "workers",
                value: workers as f64,
                allowed: "<= 65536",
            });
        }
        if queue == 0 {
            return Err(ConfigError::Zero { field: "queue" });
        }
        if let Some(limit) = job_timeout {
            crate::time::positive_duration("job_timeout", limit)?;
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(queue.min(4096)),
                closed: false,
                submitters: WakerSlots::default(),
                workers: Vec::new(),
            }),
            capacity: queue,
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            aborted: AtomicU64::new(0),
        });
        let handler = Arc::new(handler);
        let workers = (0..workers)
            .map(|_| {
                let (shared, handler, rt2) =
                    (Arc::clone(&shared), Arc::clone(&handler), rt.clone());
                let worker: Worker = Box::new(
                    rt.spawn(async move { work(shared, handler, rt2, job_timeout).await }),
                );
                worker
            })
            .collect();
        Ok(WorkerPool {
            closer: super::queue::CloseOnDrop(Arc::clone(&shared)),
            shared,
            workers: Mutex::new(workers),
            rt,
        })
    }
}
