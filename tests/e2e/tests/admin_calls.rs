//! The admin API's `CallService` end to end, through `trunkctl`, with SIPp as the caller
//! and as the trunk: calls listed with their numbers and states, one call's whole life
//! watched in order, and every call hung up by the operator with both SIPp sides checking
//! the BYE's RFC 3326 Reason header.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trunkline_e2e::*;

const CALLS: u64 = 50;
const CALLEE: &str = "15550123";

fn listed(admin: &str, args: &[&str]) -> Result<Vec<Value>> {
    let mut all = vec!["calls", "list"];
    all.extend_from_slice(args);
    let v = trunkctl_json(admin, &all)?;
    Ok(v["calls"].as_array().cloned().unwrap_or_default())
}

/// A `trunkctl calls watch -o json` running in the background, its lines in a file.
struct Watcher {
    child: Child,
    path: std::path::PathBuf,
}

impl Watcher {
    fn start(admin: &str, out: &std::path::Path) -> Result<Watcher> {
        let path = out.join("watch.jsonl");
        let child = Command::new(trunkctl_binary())
            .args(["--server", admin, "calls", "watch", "-o", "json"])
            .env_remove("TRUNKCTL_SERVER")
            .env_remove("TRUNKCTL_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&path)?)
            .stderr(std::fs::File::create(out.join("watch.stderr"))?)
            .spawn()
            .context("starting trunkctl calls watch")?;
        Ok(Watcher { child, path })
    }

    fn events(&self) -> Result<Vec<Value>> {
        let mut text = String::new();
        std::fs::File::open(&self.path)?.read_to_string(&mut text)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("watch line: {l}")))
            .collect()
    }

    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events()?;
            if pred(&events) {
                return Ok(events);
            }
            if Instant::now() > deadline {
                bail!(
                    "watch: {what} not seen in {timeout:?}; got {} events",
                    events.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count_type(events: &[Value], ty: &str) -> usize {
    events.iter().filter(|e| e["type"] == ty).count()
}

#[test]
fn trunkctl_lists_watches_and_hangs_up_calls_carried_by_sipp() -> Result<()> {
    let out = out_dir("admin_calls")?;
    let uas_builder = Sipp::uas("uas_hangup_by_node.xml")
        .calls(CALLS)
        .timeout_secs(120)
        .resolve_port()?;
    let mut cfg = NodeConfig::new(uas_builder.addr()?, Transport::Udp)?;
    // An id of this run: a stale node on the port would answer with other ids.
    cfg.id = format!("calls{}", std::process::id() % 1_000_000);
    let mut node = Node::start(&cfg, &out)?;
    let admin = cfg.admin_addr().to_string();
    let mut uas = uas_builder.spawn(&out)?;

    // The watcher subscribes before any call exists, so it sees every call's whole life.
    let watcher = Watcher::start(&admin, &out)?;
    watcher.wait_for("SYNCED", Duration::from_secs(10), |e| {
        count_type(e, "CALL_EVENT_TYPE_SYNCED") == 1
    })?;

    let mut uac = Sipp::uac("uac_hangup_by_node.xml", node.sip_addr())
        .calls(CALLS)
        .rate(25)
        .timeout_secs(120)
        .arg("-s")
        .arg(CALLEE)
        .spawn(&out)?;

    // All 50 established, with the numbers SIPp sent and the trunk they went to.
    let deadline = Instant::now() + Duration::from_secs(30);
    let calls = loop {
        let calls = listed(&admin, &["--state", "established"])?;
        if calls.len() as u64 == CALLS {
            break calls;
        }
        ensure!(
            Instant::now() < deadline,
            "only {} of {CALLS} calls established; node log:\n{}",
            calls.len(),
            tail(&node.log, 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut callers = HashSet::new();
    for c in &calls {
        ensure!(
            c["state"] == "CALL_STATE_ESTABLISHED",
            "state {}",
            c["state"]
        );
        ensure!(c["nodeId"] == cfg.id.as_str(), "nodeId {}", c["nodeId"]);
        ensure!(
            c["calleeNumber"] == CALLEE,
            "calleeNumber {}",
            c["calleeNumber"]
        );
        let caller = c["callerNumber"].as_str().unwrap_or_default().to_string();
        ensure!(caller.starts_with("+4930555"), "callerNumber {caller:?}");
        callers.insert(caller);
        ensure!(
            c["caller"]["trunk"] == "",
            "a caller from the access side: {}",
            c["caller"]
        );
        ensure!(
            c["callee"]["trunk"] == "carrier",
            "routed to {}",
            c["callee"]
        );
        ensure!(
            c["callee"]["peer"] == uas.addr.to_string().as_str(),
            "callee peer {}",
            c["callee"]["peer"]
        );
        ensure!(
            c["answeredAt"].is_string(),
            "answeredAt {}",
            c["answeredAt"]
        );
        ensure!(c["mediaAnchored"] == true, "media not anchored: {c}");
    }
    ensure!(
        callers.len() as u64 == CALLS,
        "caller numbers not distinct: {callers:?}"
    );

    // The table for people: a header and one row per call.
    let (code, table, err) = trunkctl(&["--server", &admin, "calls", "list"], &[])?;
    ensure!(code == 0, "calls list exited {code}: {err}");
    ensure!(
        table.lines().count() as u64 == CALLS + 1,
        "table rows: {table}"
    );
    ensure!(table.starts_with("ID"), "table header: {table}");

    // Paging and filters.
    ensure!(
        listed(&admin, &["--page-size", "20"])?.len() == 20,
        "page of 20"
    );
    let all = listed(&admin, &["--page-size", "20", "--all"])?;
    let ids: HashSet<&str> = all.iter().filter_map(|c| c["id"].as_str()).collect();
    ensure!(
        ids.len() as u64 == CALLS,
        "all pages: {} distinct calls",
        ids.len()
    );
    ensure!(
        listed(&admin, &["--callee", "1555"])?.len() as u64 == CALLS,
        "callee prefix"
    );
    ensure!(
        listed(&admin, &["--callee", "999"])?.is_empty(),
        "callee filter"
    );
    ensure!(
        listed(&admin, &["--trunk", "carrier"])?.len() as u64 == CALLS,
        "trunk filter"
    );
    ensure!(
        listed(&admin, &["--trunk", "elsewhere"])?.is_empty(),
        "other trunk"
    );
    let (code, _, err) = trunkctl(
        &["--server", &admin, "calls", "list", "--callee", "12 3"],
        &[],
    )?;
    ensure!(
        code == 2 && err.contains("callee_number"),
        "malformed number: exit {code} ({err})"
    );

    // One call in detail: both legs, distinct Call-IDs, the relay ports of each side.
    let first = calls[0]["id"].as_str().context("call id")?.to_string();
    let one = trunkctl_json(&admin, &["calls", "get", &first])?;
    ensure!(one["id"] == first.as_str(), "get answered {}", one["id"]);
    let (a_cid, b_cid) = (&one["caller"]["sipCallId"], &one["callee"]["sipCallId"]);
    ensure!(
        a_cid.is_string() && b_cid.is_string() && a_cid != b_cid,
        "Call-IDs {a_cid} {b_cid}"
    );
    for leg in ["caller", "callee"] {
        let relay = one[leg]["media"][0]["relayAddress"]
            .as_str()
            .unwrap_or_default();
        ensure!(
            !relay.is_empty(),
            "{leg} has no relay address: {}",
            one[leg]
        );
    }
    let (code, detail, err) = trunkctl(&["--server", &admin, "calls", "get", &first], &[])?;
    ensure!(
        code == 0 && detail.contains("ESTABLISHED"),
        "calls get: {code} {err} {detail}"
    );

    // Hang every call up; both SIPp sides check the Reason header of their BYE.
    for c in &calls {
        let id = c["id"].as_str().context("call id")?;
        let (code, said, err) = trunkctl(&["--server", &admin, "calls", "hangup", id], &[])?;
        ensure!(code == 0, "hangup {id} exited {code}: {err}");
        ensure!(said.contains(id), "hangup said {said:?}");
    }
    let r = uac.wait(Duration::from_secs(60))?;
    r.assert_all_ok(CALLS)?;
    let r = uas.wait(Duration::from_secs(30))?;
    r.assert_all_ok(CALLS)?;

    // The whole life of the first call, in order, as the watcher saw it.
    let events = watcher.wait_for("every call's end", Duration::from_secs(10), |e| {
        count_type(e, "CALL_EVENT_TYPE_ENDED") as u64 == CALLS
    })?;
    let life: Vec<&Value> = events
        .iter()
        .filter(|e| e["callId"] == first.as_str())
        .collect();
    let types: Vec<&str> = life.iter().filter_map(|e| e["type"].as_str()).collect();
    ensure!(
        types
            == [
                "CALL_EVENT_TYPE_CREATED",
                "CALL_EVENT_TYPE_RINGING",
                "CALL_EVENT_TYPE_ANSWERED",
                "CALL_EVENT_TYPE_ENDED"
            ],
        "the first call's life: {types:?}"
    );
    let seqs: Vec<u64> = life.iter().filter_map(|e| e["sequence"].as_u64()).collect();
    ensure!(seqs == [1, 2, 3, 4], "sequence numbers {seqs:?}");
    let ended = life[3];
    ensure!(ended["by"] == "PARTY_NODE", "ended by {}", ended["by"]);
    ensure!(ended["status"] == 200, "ended with {}", ended["status"]);
    ensure!(
        ended["call"]["end"]["cause"] == "local",
        "cause {}",
        ended["call"]["end"]
    );
    ensure!(
        life[1]["status"] == 180,
        "ringing status {}",
        life[1]["status"]
    );
    ensure!(
        count_type(&events, "CALL_EVENT_TYPE_EVENTS_LOST") == 0,
        "the watcher lost events"
    );

    // Errors a client can act on: ended, unknown, malformed.
    let (code, _, err) = trunkctl(&["--server", &admin, "calls", "hangup", &first], &[])?;
    ensure!(
        code == 1 && err.contains("FailedPrecondition"),
        "hangup of an ended call: {code} {err}"
    );
    let unknown = format!("{}-ffffff", cfg.id);
    let (code, _, err) = trunkctl(&["--server", &admin, "calls", "get", &unknown], &[])?;
    ensure!(code == 3, "unknown call: exit {code} ({err})");
    let (code, _, err) = trunkctl(&["--server", &admin, "calls", "get", "not a call"], &[])?;
    ensure!(
        code == 2 && err.contains("id"),
        "malformed id: exit {code} ({err})"
    );

    // Nothing left up; the ended calls are still there to read.
    ensure!(listed(&admin, &[])?.is_empty(), "calls left after hangup");
    let ended = listed(&admin, &["--state", "ended"])?;
    ensure!(
        ended.len() as u64 == CALLS,
        "recently ended: {}",
        ended.len()
    );
    ensure!(
        ended.iter().all(|c| c["end"]["endedBy"] == "PARTY_NODE"),
        "ended calls: {:?}",
        ended.first()
    );

    drop(watcher);
    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}

const WATCH: &str = "trunkline.admin.v1.CallService/WatchCalls";

/// `admin_client.py ADDR stream WatchCalls {} ...` in the background, stdout to `file`.
fn stream_client(admin: &str, file: &std::path::Path, args: &[&str]) -> Result<Child> {
    Command::new(grpc_python()?)
        .arg(workspace_root().join("tests/grpc/admin_client.py"))
        .args([admin, "stream", WATCH, "{}"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(file)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting the gRPC stream client")
}

/// A watcher that never reads while 10 000 calls run: the node does not buffer for it
/// without bound (it is told how many events it lost, and the stream ends with
/// DATA_LOSS), the calls are not slowed, watchers past `max_watchers` are refused, and
/// 1 000 streams opened and dropped give every slot back.
#[test]
fn a_watcher_that_never_reads_loses_events_and_costs_bounded_memory() -> Result<()> {
    const LOAD: u64 = 10_000;
    let out = out_dir("admin_calls_slow_watcher")?;
    let mut uas = Sipp::uas("uas_basic.xml")
        .calls(LOAD)
        .timeout_secs(180)
        .spawn(&out)?;
    let mut cfg = NodeConfig::new(uas.addr, Transport::Udp)?;
    cfg.id = format!("slow{}", std::process::id() % 1_000_000);
    let toml = cfg
        .to_toml()
        .replace("[admin]\n", "[admin]\nmax_watchers = 4\n");
    ensure!(
        toml.contains("max_watchers = 4"),
        "the test did not set max_watchers"
    );
    let mut node = Node::start_toml(&cfg, &toml, &out)?;
    let admin = cfg.admin_addr().to_string();

    // One watcher that reads nothing for 40 s, three that read their first message and
    // hold their stream: four slots taken, a fifth refused.
    let slow_out = out.join("slow_watcher.jsonl");
    let mut slow = stream_client(&admin, &slow_out, &["40"])?;
    let mut holders = Vec::new();
    for i in 0..3 {
        let file = out.join(format!("holder{i}.jsonl"));
        holders.push((stream_client(&admin, &file, &["0", "1", "3600"])?, file));
    }
    let held = wait_until(Duration::from_secs(20), || {
        holders
            .iter()
            .all(|(_, f)| std::fs::read_to_string(f).is_ok_and(|t| t.contains("SYNCED")))
    });
    ensure!(held, "three watchers did not get their first event");
    let (ok, said) = grpc_client(cfg.admin_addr(), &["stream", WATCH, "{}", "0", "1"])?;
    ensure!(
        !ok && said.contains("RESOURCE_EXHAUSTED"),
        "a fifth watcher: {said}"
    );
    for (h, _) in &mut holders {
        let _ = h.kill();
        let _ = h.wait();
    }

    // 10 000 short calls while the slow watcher reads nothing.
    let rss_before = node.rss_kib()?;
    let uac = Sipp::uac("uac_basic.xml", node.sip_addr())
        .calls(LOAD)
        .rate(500)
        .duration_ms(0)
        .timeout_secs(180);
    run_pair(uac, &mut uas, &out, LOAD, Duration::from_secs(180))?;
    let rss_after = node.rss_kib()?;

    // The slow watcher was told what it lost, and its stream ended with DATA_LOSS.
    let deadline = Instant::now() + Duration::from_secs(60);
    while slow.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = slow.kill();
            bail!("the slow watcher's stream never ended");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(&slow_out)?;
    let last = text.lines().last().unwrap_or_default();
    ensure!(
        last.starts_with("ERROR DATA_LOSS"),
        "the slow stream ended with {last:?}"
    );
    let lost: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "CALL_EVENT_TYPE_EVENTS_LOST")
        .collect();
    ensure!(lost.len() == 1, "EVENTS_LOST messages: {}", lost.len());
    let n: u64 = lost[0]["eventsLost"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("eventsLost")?;
    ensure!(n > 0, "EVENTS_LOST without a count");
    let events = text.lines().filter(|l| l.starts_with('{')).count() as u64;
    ensure!(
        events < LOAD * 4,
        "the slow watcher received {events} events: the node buffered them all"
    );
    // A buffer for every event of 10 000 calls would be tens of MiB; the node holds a
    // bounded ring. Generous: the relay's sockets and the allocator vary between runs.
    ensure!(
        rss_after < rss_before + 64 * 1024,
        "node RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // 1 000 streams opened and dropped; every slot comes back.
    let (ok, said) = grpc_client(cfg.admin_addr(), &["churn", WATCH, "{}", "1000"])?;
    ensure!(ok, "churn: {said}");
    let mut again = Vec::new();
    for i in 0..4 {
        let file = out.join(format!("again{i}.jsonl"));
        again.push((stream_client(&admin, &file, &["0", "1", "3600"])?, file));
    }
    let held = wait_until(Duration::from_secs(20), || {
        again
            .iter()
            .all(|(_, f)| std::fs::read_to_string(f).is_ok_and(|t| t.contains("SYNCED")))
    });
    for (h, _) in &mut again {
        let _ = h.kill();
        let _ = h.wait();
    }
    ensure!(
        held,
        "after 1 000 dropped streams, four watchers no longer fit"
    );

    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}
