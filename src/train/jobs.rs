//! Training several runs at once, each on its own share of the cores.
//!
//! One run of a small model cannot keep many cores busy (its matrix products are too small to
//! split well), so a sweep on a many-core machine finishes sooner with several runs side by
//! side. Each concurrent run gets its own rayon pool of `threads / jobs` threads, so the runs
//! never compete for the same workers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use dfdx::tensor::Cpu;

use crate::model::Backend;
use crate::plan::RunPlan;

/// How many runs train at once, and how many threads they share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobLayout {
    /// Runs trained at the same time.
    pub jobs: usize,
    /// Threads of each run's pool.
    pub threads_per_run: usize,
}

impl JobLayout {
    /// `jobs` runs at once (at most `runs` and at most `threads`, at least 1) dividing
    /// `threads` between them, each getting at least one: `threads` is the total, never
    /// exceeded.
    pub fn new(jobs: usize, threads: usize, runs: usize) -> Self {
        let jobs = jobs.min(threads).clamp(1, runs.max(1));
        Self {
            jobs,
            threads_per_run: (threads / jobs).max(1),
        }
    }
}

/// Calls `work` for each of `runs` in turn on `dev`; stops starting new runs once `stop` is
/// set. For devices that are not shared between threads (CUDA).
pub fn train_in_turn<'a, D: Backend>(runs: &[&'a RunPlan], dev: &D, stop: &AtomicBool, work: impl Fn(&D, &'a RunPlan)) {
    for &plan in runs {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        work(dev, plan);
    }
}

/// Calls `work` for each of `runs` on the CPU, `layout.jobs` at a time, each worker with its
/// own pool of `layout.threads_per_run` threads (`work` runs inside it). Stops starting new
/// runs once `stop` is set; runs under way stop themselves with a checkpoint.
pub fn train_in_parallel<'a>(
    runs: &[&'a RunPlan],
    layout: JobLayout,
    stop: &AtomicBool,
    work: impl Fn(&Cpu, &'a RunPlan) + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..layout.jobs {
            scope.spawn(|| {
                let pool = match rayon::ThreadPoolBuilder::new()
                    .num_threads(layout.threads_per_run)
                    .build()
                    .context("starting a run's thread pool")
                {
                    Ok(pool) => pool,
                    Err(e) => {
                        first_error.lock().expect("not poisoned").get_or_insert(e);
                        return;
                    }
                };
                let dev = Cpu::default();
                while !stop.load(Ordering::SeqCst) {
                    let Some(&plan) = runs.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        break;
                    };
                    pool.install(|| work(&dev, plan));
                }
            });
        }
    });
    match first_error.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::JobLayout;

    #[test]
    fn layout_divides_threads_and_never_exceeds_the_runs_or_the_threads() {
        assert_eq!(
            JobLayout::new(1, 16, 4),
            JobLayout {
                jobs: 1,
                threads_per_run: 16
            }
        );
        assert_eq!(
            JobLayout::new(4, 16, 4),
            JobLayout {
                jobs: 4,
                threads_per_run: 4
            }
        );
        assert_eq!(
            JobLayout::new(8, 16, 3),
            JobLayout {
                jobs: 3,
                threads_per_run: 5
            }
        );
        // --threads is the total: 4 jobs on 2 threads train 2 runs at once, one thread each.
        assert_eq!(
            JobLayout::new(4, 2, 4),
            JobLayout {
                jobs: 2,
                threads_per_run: 1
            }
        );
        assert_eq!(
            JobLayout::new(3, 1, 3),
            JobLayout {
                jobs: 1,
                threads_per_run: 1
            }
        );
        assert_eq!(
            JobLayout::new(0, 2, 0),
            JobLayout {
                jobs: 1,
                threads_per_run: 2
            }
        );
    }
}
