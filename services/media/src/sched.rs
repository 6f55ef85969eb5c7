//! Scheduling policy of the forwarding threads.
//!
//! Operators who moved from rtpengine tune its packet threads with `--scheduling` and
//! `--priority` (real-time priority so media is never queued behind other work on a busy
//! host, or a nice value to yield to it). The same pair of settings is accepted here with
//! rtpengine's meaning, checked once at start-up, and applied by each worker thread to
//! itself: the threads are spawned inside [`crate::Relay::start`], so no caller could reach
//! them afterwards.

use std::fmt;
use std::str::FromStr;

/// rtpengine's `--scheduling` names, as written on its command line and in config files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduling {
    /// `default` or `none`: the thread keeps the policy it inherited.
    #[default]
    #[serde(alias = "none")]
    Default,
    /// `SCHED_FIFO`: real-time, runs until it blocks.
    Fifo,
    /// `SCHED_RR`: real-time with a time slice among equal priorities.
    Rr,
    /// `SCHED_OTHER`: the normal time-sharing policy.
    Other,
    /// `SCHED_BATCH`: time-sharing, treated as CPU-bound by the kernel.
    Batch,
    /// `SCHED_IDLE`: runs only when nothing else wants the CPU.
    Idle,
}

impl Scheduling {
    /// Every accepted spelling, for error messages.
    const NAMES: &'static str = "default, none, fifo, rr, other, batch, idle";

    fn name(self) -> &'static str {
        match self {
            Scheduling::Default => "default",
            Scheduling::Fifo => "fifo",
            Scheduling::Rr => "rr",
            Scheduling::Other => "other",
            Scheduling::Batch => "batch",
            Scheduling::Idle => "idle",
        }
    }
}

impl fmt::Display for Scheduling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheduling {
    type Err = ThreadPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let all = [
            Scheduling::Default,
            Scheduling::Fifo,
            Scheduling::Rr,
            Scheduling::Other,
            Scheduling::Batch,
            Scheduling::Idle,
        ];
        if s.eq_ignore_ascii_case("none") {
            return Ok(Scheduling::Default);
        }
        all.into_iter()
            .find(|p| s.eq_ignore_ascii_case(p.name()))
            .ok_or_else(|| {
                ThreadPolicyError(format!(
                    "unknown scheduling policy {s:?} (expected one of {})",
                    Scheduling::NAMES
                ))
            })
    }
}

/// A scheduling/priority pair that cannot work; the text names the policy and the range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ThreadPolicyError(String);

/// What each forwarding thread does to its own scheduling when it starts. Built from
/// rtpengine's pair with [`ThreadPolicy::new`], which rejects what the kernel would refuse
/// anyway (a real-time policy without a priority), so a typo fails at start-up rather than
/// as one warning per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThreadPolicy {
    /// Leave the thread exactly as it was spawned.
    #[default]
    Inherit,
    /// Keep the inherited policy and set this nice value (rtpengine's `--priority` with
    /// `default`/`none` or without `--scheduling`).
    Nice(i8),
    /// `SCHED_OTHER`, optionally with a nice value.
    Other(Option<i8>),
    /// `SCHED_BATCH`, optionally with a nice value.
    Batch(Option<i8>),
    /// `SCHED_IDLE` (the kernel takes no priority for it).
    Idle,
    /// `SCHED_FIFO` with a real-time priority in 1..=99.
    Fifo(u8),
    /// `SCHED_RR` with a real-time priority in 1..=99.
    RoundRobin(u8),
}

impl ThreadPolicy {
    /// Combines rtpengine's `--scheduling` and `--priority` with rtpengine's meaning: for the
    /// time-sharing policies (and `default`) the priority is a nice value in -20..=19, for
    /// `fifo`/`rr` a real-time priority in 1..=99 that must be given; `idle` takes none.
    pub fn new(scheduling: Scheduling, priority: Option<i32>) -> Result<Self, ThreadPolicyError> {
        let nice = |p: Option<i32>| -> Result<Option<i8>, ThreadPolicyError> {
            let Some(n) = p else { return Ok(None) };
            match i8::try_from(n) {
                Ok(v @ -20..=19) => Ok(Some(v)),
                _ => Err(ThreadPolicyError(format!(
                    "priority {n} is outside -20..=19 (with scheduling {scheduling} the \
                     priority is a nice value)"
                ))),
            }
        };
        let realtime = |p: Option<i32>| -> Result<u8, ThreadPolicyError> {
            let Some(n) = p else {
                return Err(ThreadPolicyError(format!(
                    "scheduling {scheduling} needs a priority in 1..=99"
                )));
            };
            match u8::try_from(n) {
                Ok(v @ 1..=99) => Ok(v),
                _ => Err(ThreadPolicyError(format!(
                    "priority {n} is outside 1..=99 (the real-time priority scheduling \
                     {scheduling} needs)"
                ))),
            }
        };
        Ok(match scheduling {
            Scheduling::Default => {
                nice(priority)?.map_or(ThreadPolicy::Inherit, ThreadPolicy::Nice)
            }
            Scheduling::Other => ThreadPolicy::Other(nice(priority)?),
            Scheduling::Batch => ThreadPolicy::Batch(nice(priority)?),
            Scheduling::Idle => match priority {
                None | Some(0) => ThreadPolicy::Idle,
                Some(n) => {
                    return Err(ThreadPolicyError(format!(
                        "scheduling idle takes no priority (got {n})"
                    )))
                }
            },
            Scheduling::Fifo => ThreadPolicy::Fifo(realtime(priority)?),
            Scheduling::Rr => ThreadPolicy::RoundRobin(realtime(priority)?),
        })
    }

    /// Applies the policy to the calling thread. Linux keeps policy and nice value per
    /// thread, so this touches no other thread of the process.
    pub fn apply_to_current_thread(self) -> std::io::Result<()> {
        let (policy, rt_priority, nice) = match self {
            ThreadPolicy::Inherit => return Ok(()),
            ThreadPolicy::Nice(n) => return sys::set_nice(n.into()),
            ThreadPolicy::Other(n) => (libc::SCHED_OTHER, 0, n),
            ThreadPolicy::Batch(n) => (libc::SCHED_BATCH, 0, n),
            ThreadPolicy::Idle => (libc::SCHED_IDLE, 0, None),
            ThreadPolicy::Fifo(p) => (libc::SCHED_FIFO, p.into(), None),
            ThreadPolicy::RoundRobin(p) => (libc::SCHED_RR, p.into(), None),
        };
        sys::set_scheduler(policy, rt_priority)?;
        match nice {
            Some(n) => sys::set_nice(n.into()),
            None => Ok(()),
        }
    }

    /// Applies the policy to the calling thread; a refusal (typically `EPERM` without
    /// `CAP_SYS_NICE` or an `RLIMIT_RTPRIO`) must not take media down, so it is logged and
    /// the thread runs on as it was.
    pub(crate) fn apply_or_warn(self, thread: &str) {
        match self.apply_to_current_thread() {
            Ok(()) if self == ThreadPolicy::Inherit => {}
            Ok(()) => tracing::debug!(thread, policy = %self, "thread scheduling applied"),
            Err(e) => tracing::warn!(
                thread,
                policy = %self,
                error = %e,
                "cannot apply thread scheduling; running with the default"
            ),
        }
    }
}

impl fmt::Display for ThreadPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ThreadPolicy::Inherit => f.write_str("default"),
            ThreadPolicy::Nice(n) => write!(f, "default, nice {n}"),
            ThreadPolicy::Other(None) => f.write_str("other"),
            ThreadPolicy::Other(Some(n)) => write!(f, "other, nice {n}"),
            ThreadPolicy::Batch(None) => f.write_str("batch"),
            ThreadPolicy::Batch(Some(n)) => write!(f, "batch, nice {n}"),
            ThreadPolicy::Idle => f.write_str("idle"),
            ThreadPolicy::Fifo(p) => write!(f, "fifo, priority {p}"),
            ThreadPolicy::RoundRobin(p) => write!(f, "rr, priority {p}"),
        }
    }
}

/// The two system calls, which neither std nor nix wraps.
mod sys {
    #![allow(unsafe_code)]

    use std::io;

    /// `sched_setscheduler(0, policy, {priority})`: pid 0 is the calling thread on Linux.
    pub(super) fn set_scheduler(policy: libc::c_int, priority: libc::c_int) -> io::Result<()> {
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: `param` is an initialised `sched_param` living across the call, which only
        // reads it; pid 0 makes the call act on the calling thread alone.
        let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `setpriority(PRIO_PROCESS, gettid(), nice)`: with a thread id, Linux sets the nice
    /// value of that thread only.
    pub(super) fn set_nice(nice: libc::c_int) -> io::Result<()> {
        let tid = nix::unistd::gettid().as_raw();
        let tid =
            libc::id_t::try_from(tid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain integer arguments; no memory is passed to the kernel.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(s: &str, p: Option<i32>) -> Result<ThreadPolicy, ThreadPolicyError> {
        ThreadPolicy::new(s.parse()?, p)
    }

    #[test]
    fn names_parse_like_rtpengine() {
        for (s, want) in [
            ("default", Scheduling::Default),
            ("none", Scheduling::Default),
            ("fifo", Scheduling::Fifo),
            ("rr", Scheduling::Rr),
            ("other", Scheduling::Other),
            ("batch", Scheduling::Batch),
            ("idle", Scheduling::Idle),
            ("FIFO", Scheduling::Fifo),
        ] {
            assert_eq!(s.parse::<Scheduling>(), Ok(want), "{s}");
        }
        let e = "deadline".parse::<Scheduling>().expect_err("unknown");
        assert!(e.to_string().contains("deadline"), "{e}");
        assert!(e.to_string().contains("fifo"), "{e}");
    }

    #[test]
    fn priority_means_nice_or_realtime_by_policy() {
        assert_eq!(policy("default", None), Ok(ThreadPolicy::Inherit));
        assert_eq!(policy("none", None), Ok(ThreadPolicy::Inherit));
        assert_eq!(policy("default", Some(-5)), Ok(ThreadPolicy::Nice(-5)));
        assert_eq!(policy("other", None), Ok(ThreadPolicy::Other(None)));
        assert_eq!(policy("other", Some(5)), Ok(ThreadPolicy::Other(Some(5))));
        assert_eq!(policy("batch", Some(19)), Ok(ThreadPolicy::Batch(Some(19))));
        assert_eq!(policy("idle", None), Ok(ThreadPolicy::Idle));
        assert_eq!(policy("fifo", Some(1)), Ok(ThreadPolicy::Fifo(1)));
        assert_eq!(policy("rr", Some(99)), Ok(ThreadPolicy::RoundRobin(99)));
    }

    #[test]
    fn out_of_range_priorities_are_rejected() {
        for (s, p, needle) in [
            ("fifo", None, "1..=99"),
            ("fifo", Some(0), "1..=99"),
            ("rr", Some(100), "1..=99"),
            ("fifo", Some(-1), "1..=99"),
            ("other", Some(20), "-20..=19"),
            ("batch", Some(-21), "-20..=19"),
            ("default", Some(50), "-20..=19"),
            ("idle", Some(3), "idle"),
        ] {
            let e = policy(s, p).expect_err(s);
            assert!(e.to_string().contains(needle), "{s} {p:?}: {e}");
        }
    }
}
