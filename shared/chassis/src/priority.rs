//! The service's CPU priority on a shared host (`server.nice`).
//!
//! On two cores shared with its database and its callers, a GetAccount
//! that waits a few milliseconds for a core is what a caller feels, while
//! an ingest batch is throughput work that queues anyway. Scoring runs at
//! nice 10 by default so that lifecycle's reads, and anything else at the
//! usual priority, take a free core first (docs/performance.md, round 30).
//! Nice orders threads within one cgroup: services in containers of their
//! own (Kubernetes pods) compete through their CPU requests instead.

/// Raises every thread of this process to at least `nice` and returns how
/// many threads it raised. Linux keeps a nice value per thread and a new
/// thread takes its creator's, so doing this before the service starts its
/// work covers the threads it starts later too. It only ever raises: a
/// process started at a higher nice keeps it, and lowering one needs a
/// privilege a service should not have.
#[cfg(target_os = "linux")]
pub fn at_least(nice: i32) -> std::io::Result<usize> {
    let mut raised = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread that ended since the listing has nothing to raise.
        let Ok(current) = thread_nice(tid) else {
            continue;
        };
        if current < nice {
            rustix::process::setpriority_process(rustix::process::Pid::from_raw(tid), nice)?;
            raised += 1;
        }
    }
    Ok(raised)
}

#[cfg(not(target_os = "linux"))]
pub fn at_least(_nice: i32) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "server.nice is applied on Linux only",
    ))
}

/// The nice value of a thread, this process's or another's (on Linux a
/// thread id names one thread where a process id would be taken).
#[cfg(target_os = "linux")]
pub fn thread_nice(tid: i32) -> std::io::Result<i32> {
    let pid = rustix::process::Pid::from_raw(tid)
        .ok_or_else(|| std::io::Error::other(format!("{tid} is not a thread id")))?;
    Ok(rustix::process::getpriority_process(Some(pid))?)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nices() -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter_map(|tid| thread_nice(tid).ok())
            .collect()
    }

    // Each test runs in a process of its own (nextest), so raising this
    // one's threads touches no other test.
    #[test]
    fn every_thread_is_raised_and_later_threads_inherit_it() {
        let before = nices();
        let floor = before.iter().copied().max().expect("a thread") + 3;
        let floor = floor.min(19);
        // A thread that exists before the call is raised too.
        let (started, stop) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                started.wait();
                stop.wait();
            });
            started.wait();
            at_least(floor).expect("raised");
            assert!(nices().iter().all(|&n| n == floor), "{:?}", nices());
            stop.wait();
        });
        let later = std::thread::spawn(|| {
            thread_nice(rustix::thread::gettid().as_raw_nonzero().get()).expect("nice")
        })
        .join()
        .expect("thread");
        assert_eq!(later, floor);
        // Only raised: a lower floor leaves every thread where it is.
        assert_eq!(at_least(floor - 1).expect("nothing to do"), 0);
        assert!(nices().iter().all(|&n| n == floor), "{:?}", nices());
    }
}
