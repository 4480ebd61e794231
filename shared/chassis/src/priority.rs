//! The service's CPU priority on a shared host (`server.nice`).
//!
//! On two cores shared with its database and its callers, a GetAccount
//! that waits a few milliseconds for a core is what a caller feels, while
//! an ingest batch is throughput work that queues anyway. Scoring runs at
//! nice 10 by default so that lifecycle's reads, and anything else at the
//! usual priority, take a free core first (docs/performance.md, round 30).
//! Nice orders threads within one scheduling group. Where the kernel groups
//! processes by session (autogroup: a process started from a shell, by a
//! plain init, or by a systemd unit without a CPU controller), a service
//! leading its own session is a group of its own, and its threads' nice
//! orders them only against each other; so such a service sets its group's
//! nice too (`session_group_at_least`). Services in containers of their own
//! (Kubernetes pods) compete through their CPU requests instead.

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

/// When this process leads its session, raises the session's scheduling
/// group (its autogroup, `/proc/self/autogroup`) to at least `nice` and
/// returns the group's nice; `None` when the process does not lead its
/// session (the group is its parent's too, and not this service's to
/// lower) or the kernel keeps no such groups or has them turned off
/// (`kernel.sched_autogroup_enabled = 0`). Like `at_least`, it only raises.
/// The kernel applies a group's nice only to processes in the root CPU
/// cgroup: in a container it is written and has no effect.
///
/// Why: a kernel that groups by session shares the CPU between groups first
/// and by nice within a group second, so a service alone in its group at
/// thread nice 10 still takes a full share against lifecycle's group and
/// the database's. PostgreSQL starts each backend in a session of its own,
/// each a group (docs/performance.md, round 31).
#[cfg(target_os = "linux")]
pub fn session_group_at_least(nice: i32) -> std::io::Result<Option<i32>> {
    if session_id()? != std::process::id() {
        return Ok(None);
    }
    if !autogroups_on()? {
        return Ok(None);
    }
    let current = match autogroup_nice(std::process::id()) {
        Ok(current) => current,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    if current >= nice {
        return Ok(Some(current));
    }
    // The kernel takes one such change per 100 ms from the whole host
    // (EAGAIN), so a neighbour starting at the same moment can be in the way.
    use backon::{BlockingRetryable, ConstantBuilder};
    let again = Some(rustix::io::Errno::AGAIN.raw_os_error());
    (|| std::fs::write("/proc/self/autogroup", nice.to_string()))
        .retry(
            ConstantBuilder::default()
                .with_delay(std::time::Duration::from_millis(110))
                .with_max_times(10),
        )
        .when(|error| error.raw_os_error() == again)
        .call()?;
    Ok(Some(nice))
}

#[cfg(not(target_os = "linux"))]
pub fn session_group_at_least(_nice: i32) -> std::io::Result<Option<i32>> {
    Ok(None)
}

/// Whether the kernel groups processes by session (built with autogroup,
/// and `kernel.sched_autogroup_enabled` not 0).
#[cfg(target_os = "linux")]
pub fn autogroups_on() -> std::io::Result<bool> {
    match std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled") {
        Ok(enabled) => Ok(enabled.trim() != "0"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// This process's session id, from `/proc/self/stat`; 0 when its session's
/// leader is outside its pid namespace. (Read rather than asked of
/// `getsid`, whose wrapper takes 0 for a pid it cannot be.)
#[cfg(target_os = "linux")]
fn session_id() -> std::io::Result<u32> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    session_in(&stat)
        .ok_or_else(|| std::io::Error::other(format!("a stat line it cannot read: {stat:?}")))
}

/// The session field of a `/proc/PID/stat` line: "pid (comm) state ppid
/// pgrp session ...", where comm may hold spaces and parentheses, so the
/// fields are counted from its last ')'.
#[cfg(target_os = "linux")]
fn session_in(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')
        .and_then(|(_, fields)| fields.split_whitespace().nth(3))
        .and_then(|session| session.parse().ok())
}

/// The nice value of the scheduling group (autogroup) of process `pid`,
/// from `/proc/PID/autogroup` ("/autogroup-42 nice 10").
#[cfg(target_os = "linux")]
pub fn autogroup_nice(pid: u32) -> std::io::Result<i32> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/autogroup"))?;
    line.split_whitespace()
        .skip_while(|word| *word != "nice")
        .nth(1)
        .and_then(|nice| nice.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("an autogroup line it cannot read: {line:?}")))
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

    // Checked against the getsid call itself, through nix: rustix's wrapper
    // panics on the 0 a pid namespace answers when the session's leader is
    // outside it, which is how CI runs the tests.
    #[test]
    fn the_session_id_is_the_one_the_kernel_reports() {
        let kernel = nix::unistd::getsid(None).expect("getsid");
        assert_eq!(
            i32::try_from(session_id().expect("session id")).expect("a pid"),
            kernel.as_raw()
        );
    }

    #[test]
    fn the_session_is_counted_after_the_commands_last_parenthesis() {
        assert_eq!(session_in("42 (cascade-scoring) S 1 42 42 0 -1"), Some(42));
        assert_eq!(session_in("42 (a) b (c) S 7 9 0 0 -1"), Some(0));
        assert_eq!(session_in("42 (no closing S 1 42 42"), None);
        assert_eq!(session_in("42 (short) S 1"), None);
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
