//! The forwarding threads apply `MediaConfig::thread_policy` to themselves. This file is
//! its own test binary (one process, one relay), so the only `media-worker-*` threads
//! found under /proc are the ones started here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{poll, THREAD_POLICY_RS};
use trunkline_media::{MediaConfig, Relay, Scheduling, ThreadPolicy};

/// The nice value in a `/proc/.../stat` line: field 19 (proc(5)). Fields after `(comm)`
/// start at field 3, and the name may hold spaces or parentheses, so split after the last ')'.
fn nice_in_stat(stat: &str) -> i32 {
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace()
        .nth(19 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// Nice values of this process's threads whose name starts with `prefix`.
fn nice_of_threads(prefix: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread exited meanwhile
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            out.push(nice_in_stat(&stat));
        }
    }
    out
}

fn own_nice() -> i32 {
    nice_in_stat(&std::fs::read_to_string("/proc/thread-self/stat").unwrap())
}

#[test]
fn workers_take_the_configured_nice_value() {
    let before = own_nice();
    // Raising one's own nice value needs no privilege, so this holds in any container
    // (5 unless the tests already run niced).
    let target = (before + 5).min(19);
    let policy = ThreadPolicy::new(Scheduling::Other, Some(target)).unwrap();
    let relay = Relay::start(
        MediaConfig {
            workers: 2,
            thread_policy: policy,
            ..THREAD_POLICY_RS.config(0, 50)
        },
        None,
    )
    .unwrap();
    // Until both workers have set their value, or what they show when the wait runs out.
    let seen = poll(|| {
        let seen = nice_of_threads("media-worker-");
        (seen.len() == 2 && seen.iter().all(|&n| n == target)).then_some(seen)
    })
    .unwrap_or_else(|| nice_of_threads("media-worker-"));
    assert_eq!(
        seen,
        vec![target, target],
        "nice values of the media-worker threads"
    );
    // Per thread, not per process: the thread that started the relay is untouched.
    assert_eq!(own_nice(), before);
    relay.shutdown();
}
