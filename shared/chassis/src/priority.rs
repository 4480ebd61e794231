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
    for tid in thread_ids(std::process::id())? {
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

/// The ids of the threads of process `pid` (this one's or another's).
#[cfg(target_os = "linux")]
pub fn thread_ids(pid: u32) -> std::io::Result<Vec<i32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) {
            ids.push(tid);
        }
    }
    Ok(ids)
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

    fn own_nice() -> i32 {
        thread_nice(rustix::thread::gettid().as_raw_nonzero().get()).expect("nice")
    }

    // It raises every thread of the test process: under `cargo test` the
    // other tests' threads too, which only slows them a little. So only the
    // threads this test starts are asserted on.
    #[test]
    fn every_thread_is_raised_and_later_threads_inherit_it() {
        let floor = (own_nice() + 3).min(19);
        // A thread that exists before the call is raised too.
        let (started, raised) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        let earlier = std::thread::scope(|scope| {
            let earlier = scope.spawn(|| {
                started.wait();
                raised.wait();
                own_nice()
            });
            started.wait();
            at_least(floor).expect("raised");
            raised.wait();
            earlier.join().expect("thread")
        });
        assert_eq!((earlier, own_nice()), (floor, floor));
        let later = std::thread::spawn(own_nice).join().expect("thread");
        assert_eq!(later, floor);
        // Only raised: a lower floor leaves a thread where it is.
        at_least(floor - 1).expect("nothing to lower");
        assert_eq!(own_nice(), floor);
    }
}
