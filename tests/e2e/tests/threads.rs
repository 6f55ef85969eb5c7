//! The scheduling policy the node's threads run with, read back from the kernel: the
//! runtime's threads (signalling, admin API, cluster) take `node.scheduling` (`batch` by
//! default), the media forwarding threads keep their own (`media.scheduling`).

use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use trunkline_e2e::*;

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// Policy and nice value of every thread of `pid`, by thread name: fields 41 and 19 of
/// `/proc/<pid>/task/<tid>/stat` (counted after the parenthesised name, which may hold
/// spaces).
fn policies(pid: u32) -> Result<BTreeMap<String, Vec<(u32, i32)>>> {
    let mut by_name: BTreeMap<String, Vec<(u32, i32)>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let comm = std::fs::read_to_string(dir.join("comm"))?.trim().to_owned();
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        let after = stat.rsplit_once(") ").context("stat without a name")?.1;
        // `after` starts at field 3 (state).
        let field = |n: usize| {
            after
                .split_whitespace()
                .nth(n - 3)
                .context("stat too short")
        };
        let policy: u32 = field(41)?.parse()?;
        let nice: i32 = field(19)?.parse()?;
        by_name.entry(comm).or_default().push((policy, nice));
    }
    Ok(by_name)
}

fn node_policies(test: &str, node_lines: &str) -> Result<BTreeMap<String, Vec<(u32, i32)>>> {
    let out = out_dir(test)?;
    // Nothing is called: the trunk only has to be an address.
    let trunk: SocketAddr = "127.0.0.1:9".parse()?;
    let cfg = NodeConfig::new(trunk, Transport::Udp)?;
    let base = cfg.to_toml();
    let header = format!("[node]\nid = \"{}\"\n", cfg.id);
    // Checked on the base text: with no extra lines the replacement changes nothing, so
    // only the header's presence shows the lines land in [node].
    ensure!(base.contains(&header), "no [node] section in {base}");
    let toml = base.replacen(&header, &format!("{header}{node_lines}\n"), 1);
    let mut node = Node::start_toml(&cfg, &toml, &out)?;
    let pid = node.pid().context("node has no pid")?;
    let got = policies(pid)?;
    node.assert_healthy()?;
    node.stop()?;
    Ok(got)
}

fn of<'a>(got: &'a BTreeMap<String, Vec<(u32, i32)>>, name: &str) -> Result<&'a [(u32, i32)]> {
    let v = got
        .get(name)
        .with_context(|| format!("no {name} thread in {got:?}"))?;
    Ok(v.as_slice())
}

#[test]
fn runtime_threads_run_batch_and_media_threads_keep_the_default() -> Result<()> {
    let got = node_policies("threads_default", "")?;
    let runtime = of(&got, "tokio-rt-worker")?;
    ensure!(
        runtime.iter().all(|p| *p == (SCHED_BATCH, 0)),
        "runtime threads: {runtime:?}, want SCHED_BATCH ({SCHED_BATCH}) each"
    );
    let media: Vec<(u32, i32)> = got
        .iter()
        .filter(|(name, _)| name.starts_with("media-worker"))
        .flat_map(|(_, p)| p.iter().copied())
        .collect();
    ensure!(!media.is_empty(), "no media-worker thread in {got:?}");
    ensure!(
        media.iter().all(|p| *p == (SCHED_OTHER, 0)),
        "media threads: {media:?}, want SCHED_OTHER"
    );
    Ok(())
}

#[test]
fn node_scheduling_is_applied_to_the_runtime_threads() -> Result<()> {
    let got = node_policies("threads_nice", "scheduling = \"batch\"\npriority = 5")?;
    let runtime = of(&got, "tokio-rt-worker")?;
    ensure!(
        runtime.iter().all(|p| *p == (SCHED_BATCH, 5)),
        "runtime threads: {runtime:?}, want SCHED_BATCH at nice 5"
    );
    let media = of(&got, "media-worker-0")?;
    ensure!(media == [(SCHED_OTHER, 0)], "media thread: {media:?}");
    let got = node_policies("threads_other", "scheduling = \"default\"")?;
    let runtime = of(&got, "tokio-rt-worker")?;
    ensure!(
        runtime.iter().all(|p| p.0 == SCHED_OTHER),
        "runtime threads: {runtime:?}, want the inherited SCHED_OTHER"
    );
    Ok(())
}
