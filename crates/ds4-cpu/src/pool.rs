//! Work splitting over threads: a fork/join of contiguous ranges.
//!
//! A decode step forks and joins a few hundred times (every matrix product,
//! the attention heads), so the fork must be cheap: spawning scoped threads
//! costs tens of µs per thread, more than a small product takes. Ranges go to
//! a process-wide pool of parked-or-spinning workers instead (DEPENDENCIES.md:
//! ~0.3 µs dispatch). A call that finds the pool busy (another thread's
//! fork, or a fork from inside a range) falls back to scoped threads, so any
//! use is correct, only slower.

use std::any::Any;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Splits `0..n` into at most `threads` contiguous ranges of at least
/// `min_per_thread` items, runs `f` on each (the caller's thread takes part
/// of them) and returns the results in range order.
pub fn map_ranges<T, F>(
    threads: usize,
    n: usize,
    min_per_thread: usize,
    f: F,
) -> Vec<(usize, usize, T)>
where
    T: Send,
    F: Fn(usize, usize) -> T + Sync,
{
    let parts = threads.min(n / min_per_thread.max(1)).max(1);
    if parts == 1 {
        return vec![(0, n, f(0, n))];
    }
    let per = n.div_ceil(parts);
    let bounds: Vec<(usize, usize)> = (0..parts)
        .map(|p| (p * per, ((p + 1) * per).min(n)))
        .filter(|(a, b)| a < b)
        .collect();
    let slots: Vec<Mutex<Option<T>>> = bounds.iter().map(|_| Mutex::new(None)).collect();
    let pool = pool();
    pool.ensure_workers(threads - 1);
    let task = |i: usize| {
        let (a, b) = bounds[i];
        let r = f(a, b);
        if let Ok(mut s) = slots[i].lock() {
            *s = Some(r);
        }
    };
    if !pool.run(bounds.len(), &task) {
        scoped(bounds.len(), &task);
    }
    bounds
        .iter()
        .zip(slots)
        .map(|(&(a, b), s)| {
            let r = s
                .into_inner()
                .ok()
                .flatten()
                .expect("every range ran exactly once");
            (a, b, r)
        })
        .collect()
}

/// Runs `task(0..parts)` on scoped threads (the caller takes part 0).
fn scoped(parts: usize, task: &(dyn Fn(usize) + Sync)) {
    std::thread::scope(|s| {
        for i in 1..parts {
            s.spawn(move || task(i));
        }
        task(0);
    });
}

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// The shared state of the pool. `state` packs the job's epoch (bits
/// 32..64), its part count (16..32) and the next unclaimed part (0..16);
/// claiming a part is a compare-and-swap on it, so a worker can only take
/// parts of the job that is published now.
struct Pool {
    state: AtomicU64,
    /// The published job; written only while no part of the previous job
    /// can still be claimed or running (see `run`).
    job: Mutex<Option<TaskPtr>>,
    /// Parts of the current job finished (by anyone).
    done: AtomicUsize,
    /// A fork in flight (0/1): a second caller falls back to scoped threads.
    busy: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    sleepers: Mutex<usize>,
    wake: Condvar,
    /// Worker threads started: the most any caller asked for (its
    /// `threads` − 1), so a `-t N` run never has more than N threads busy.
    workers: AtomicUsize,
    spawning: Mutex<()>,
}

/// A task with its lifetime erased (see the SAFETY note in `run`).
#[derive(Clone, Copy)]
struct TaskPtr(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync` and only called while the caller of `run`
// keeps it alive.
unsafe impl Send for TaskPtr {}

const PART_BITS: u64 = 16;
const PART_MASK: u64 = (1 << PART_BITS) - 1;

fn pack(epoch: u64, parts: u64, next: u64) -> u64 {
    (epoch << 32) | (parts << PART_BITS) | next
}

fn unpack(s: u64) -> (u64, u64, u64) {
    (s >> 32, (s >> PART_BITS) & PART_MASK, s & PART_MASK)
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        Box::leak(Box::new(Pool {
            state: AtomicU64::new(0),
            job: Mutex::new(None),
            done: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            workers: AtomicUsize::new(0),
            spawning: Mutex::new(()),
        }))
    })
}

impl Pool {
    /// Starts workers until there are `n` (capped at what a job can use).
    fn ensure_workers(&'static self, n: usize) {
        let n = n.min(PART_MASK as usize - 1);
        if self.workers.load(Ordering::Acquire) >= n {
            return;
        }
        let Ok(_guard) = self.spawning.lock() else {
            return;
        };
        while self.workers.load(Ordering::Acquire) < n {
            let i = self.workers.load(Ordering::Acquire);
            let started = std::thread::Builder::new()
                .name(format!("ds4-cpu-{i}"))
                .spawn(move || self.work());
            if started.is_err() {
                // Fewer workers: the caller runs the parts nobody takes.
                return;
            }
            self.workers.fetch_add(1, Ordering::Release);
        }
    }

    /// Runs `task(0..parts)` on the workers and the calling thread, and
    /// returns once all parts have finished; `false` (nothing run) when the
    /// pool is busy or cannot take the job.
    fn run(&self, parts: usize, task: &(dyn Fn(usize) + Sync)) -> bool {
        if self.workers.load(Ordering::Acquire) == 0 || parts as u64 > PART_MASK {
            return false;
        }
        if self
            .busy
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // SAFETY: the reference is used only by parts claimed below, and this
        // function does not return before `done == parts`, i.e. before every
        // claimed part has finished; no part can be claimed afterwards (the
        // state says `next == parts` until the next job replaces it).
        let erased: &'static (dyn Fn(usize) + Sync + 'static) =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), _>(task) };
        if let Ok(mut j) = self.job.lock() {
            *j = Some(TaskPtr(erased));
        }
        self.done.store(0, Ordering::Relaxed);
        let (epoch, _, _) = unpack(self.state.load(Ordering::Relaxed));
        let epoch = (epoch + 1) & 0xffff_ffff;
        self.state
            .store(pack(epoch, parts as u64, 0), Ordering::Release);
        if let Ok(sleepers) = self.sleepers.lock() {
            if *sleepers > 0 {
                self.wake.notify_all();
            }
        }
        // The caller works too, then waits for the parts others took.
        while self.claim_and_run(epoch) {}
        while self.done.load(Ordering::Acquire) < parts {
            std::hint::spin_loop();
        }
        if let Ok(mut j) = self.job.lock() {
            *j = None;
        }
        let panic = self.panic.lock().ok().and_then(|mut p| p.take());
        self.busy.store(0, Ordering::Release);
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
        true
    }

    /// Claims the next part of job `epoch` and runs it; `false` when there
    /// is none left (or the job is not current).
    fn claim_and_run(&self, epoch: u64) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let (e, parts, next) = unpack(s);
            if e != epoch || next >= parts {
                return false;
            }
            match self.state.compare_exchange_weak(
                s,
                pack(e, parts, next + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let task = self.job.lock().ok().and_then(|j| *j);
                    if let Some(TaskPtr(t)) = task {
                        // SAFETY: see `run`: the task outlives every claimed part.
                        let t = unsafe { &*t };
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            t(next as usize)
                        }));
                        if let Err(p) = r {
                            if let Ok(mut slot) = self.panic.lock() {
                                slot.get_or_insert(p);
                            }
                        }
                    }
                    self.done.fetch_add(1, Ordering::Release);
                    return true;
                }
                Err(now) => s = now,
            }
        }
    }

    /// A worker: take parts of published jobs; spin a while when idle, then
    /// park until the next job.
    fn work(&self) {
        loop {
            let (epoch, parts, next) = unpack(self.state.load(Ordering::Acquire));
            if next < parts {
                self.claim_and_run(epoch);
                continue;
            }
            let idle = Instant::now();
            while self.state.load(Ordering::Acquire) == pack(epoch, parts, next)
                && idle.elapsed() < SPIN
            {
                std::hint::spin_loop();
            }
            if self.state.load(Ordering::Acquire) != pack(epoch, parts, next) {
                continue;
            }
            let Ok(mut sleepers) = self.sleepers.lock() else {
                return;
            };
            *sleepers += 1;
            // Re-checked under the lock the publisher takes to notify, so a
            // job published after this check finds `sleepers > 0`.
            while self.state.load(Ordering::Acquire) == pack(epoch, parts, next) {
                sleepers = match self.wake.wait(sleepers) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
            *sleepers -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_in_order_and_match_sequential() {
        for threads in [1, 2, 3, 8, 64] {
            for n in [0, 1, 5, 64, 1000] {
                let parts = map_ranges(threads, n, 3, |a, b| (a..b).map(|i| i * i).sum::<usize>());
                let mut at = 0;
                for &(a, b, _) in &parts {
                    assert_eq!(a, at);
                    at = b;
                }
                assert_eq!(at, n);
                let total: usize = parts.iter().map(|p| p.2).sum();
                assert_eq!(total, (0..n).map(|i| i * i).sum::<usize>());
            }
        }
    }

    #[test]
    fn many_forks_from_several_threads_and_nested() {
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(move || {
                    for k in 0..2000 {
                        let r = map_ranges(4, 100 + k % 7, 1, |a, b| {
                            // A fork inside a range falls back to scoped threads.
                            let inner = if k % 500 == 0 {
                                map_ranges(2, b - a, 1, |x, y| y - x)
                                    .iter()
                                    .map(|p| p.2)
                                    .sum::<usize>()
                            } else {
                                b - a
                            };
                            inner
                        });
                        assert_eq!(r.iter().map(|p| p.2).sum::<usize>(), 100 + k % 7);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_range_reaches_the_caller_and_the_pool_still_works() {
        let r = std::panic::catch_unwind(|| {
            map_ranges(4, 40, 1, |a, _| {
                assert!(a != 10, "range at 10 fails");
                a
            })
        });
        assert!(r.is_err());
        let ok = map_ranges(4, 40, 1, |a, b| b - a);
        assert_eq!(ok.iter().map(|p| p.2).sum::<usize>(), 40);
    }
}
