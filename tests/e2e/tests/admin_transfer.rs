//! `TransferCall` end to end: SIPp as the caller, as the callee and as the transfer target.
//! The operator first transfers to a target that is busy (the call goes on untouched),
//! then to one that answers: the target is called without an offer, the caller is
//! re-INVITEd with the target's session, the old callee gets BYE, and the caller's RTP,
//! which it only starts once the transfer is done, reaches the target and is echoed back
//! through the relay, whose counters and latched address show it.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use trunkline_e2e::pcap::make_pcap;
use trunkline_e2e::relay_metrics::relayed;
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, rtp_caller};
use trunkline_e2e::*;

const CALLEE: &str = "15550123";

#[test]
fn transfer_moves_the_callee_to_a_third_sipp_and_the_media_follows() -> Result<()> {
    let out = out_dir("admin_transfer")?;
    let sent = make_pcap(&out, 3)?;

    let b_mp = free_udp_block(UAS_IP, 4)?;
    let callee = Sipp::uas("uas_transferred_away.xml")
        .name("callee")
        .calls(1)
        .trace_msg()
        .args_media(b_mp)
        .timeout_secs(90)
        .resolve_port()?;
    let mut callee_run = callee.clone().spawn(&out)?;
    // Chosen once the callee holds its ports, so the two blocks cannot overlap.
    let c_mp = free_udp_block(UAS_IP, 4)?;
    let target = echo_callee("uas_transfer_target.xml", c_mp)
        .name("target")
        .timeout_secs(90)
        .resolve_port()?;
    let mut target_run = target.clone().spawn(&out)?;
    let busy = Sipp::uas("uas_busy.xml")
        .name("busy")
        .calls(1)
        .timeout_secs(90)
        .resolve_port()?;
    let mut busy_run = busy.clone().spawn(&out)?;

    let mut cfg = NodeConfig::new(callee.addr()?, Transport::Udp)?;
    cfg.id = format!("xfer{}", std::process::id() % 1_000_000);
    let toml = format!(
        "{}\n[[trunks]]\nname = \"third\"\naddress = \"{}\"\ntransport = \"udp\"\n\n\
         [[trunks]]\nname = \"busy\"\naddress = \"{}\"\ntransport = \"udp\"\n\n\
         [[routes]]\nprefix = \"3\"\ntrunk = \"third\"\n\n\
         [[routes]]\nprefix = \"4\"\ntrunk = \"busy\"\n",
        cfg.to_toml(),
        target.addr()?,
        busy.addr()?
    );
    let mut node = Node::start_toml(&cfg, &toml, &out)?;
    let admin = cfg.admin_addr().to_string();

    let a_mp = free_udp_block(UAC_IP, 4)?;
    let mut caller = rtp_caller("uac_transferred.xml", node.sip_addr(), a_mp)
        .name("caller")
        .duration_ms(5000)
        .timeout_secs(90)
        .arg("-s")
        .arg(CALLEE)
        .spawn(&out)?;

    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let v = trunkctl_json(&admin, &["calls", "list", "--state", "established"])?;
        if let Some(id) = v["calls"][0]["id"].as_str() {
            break id.to_string();
        }
        ensure!(
            Instant::now() < deadline,
            "the call never got established; node log:\n{}",
            tail(&node.log, 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // A watcher of this call sees the transfer among its events.
    let watch_path = out.join("watch.jsonl");
    let mut watcher = std::process::Command::new(trunkctl_binary())
        .args(["--server", &admin, "calls", "watch", &id, "-o", "json"])
        .env_remove("TRUNKCTL_SERVER")
        .env_remove("TRUNKCTL_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&watch_path)?)
        .stderr(std::fs::File::create(out.join("watch.stderr"))?)
        .spawn()
        .context("starting trunkctl calls watch")?;
    let synced = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&watch_path).is_ok_and(|t| t.contains("CALL_EVENT_TYPE_SYNCED"))
    });
    ensure!(synced, "the watcher never synced");

    // A target that is busy: the operator hears why, and the call goes on as it was.
    let (code, _, err) = trunkctl_at(&admin, &["calls", "transfer", &id, "4000"])?;
    ensure!(code == 1, "transfer to a busy target exited {code}: {err}");
    ensure!(
        err.contains("486"),
        "the error names the target's answer: {err}"
    );
    let v = trunkctl_json(&admin, &["calls", "get", &id])?;
    ensure!(
        v["state"] == "CALL_STATE_ESTABLISHED" && v["callee"]["trunk"] == "carrier",
        "after a failed transfer the call is unchanged: {v}"
    );
    busy_run.wait(Duration::from_secs(20))?.assert_all_ok(1)?;

    // Arguments the node refuses, naming the field (INVALID_ARGUMENT: exit code 2).
    let (code, _, err) = trunkctl_at(&admin, &["calls", "transfer", &id, "not a number"])?;
    ensure!(
        code == 2 && err.contains("number"),
        "bad number: {code} {err}"
    );
    let (code, _, err) = trunkctl_at(
        &admin,
        &["calls", "transfer", &id, "3000", "--trunk", "nope"],
    )?;
    ensure!(
        code == 2 && err.contains("nope"),
        "unknown trunk: {code} {err}"
    );

    let done = trunkctl_json(&admin, &["calls", "transfer", &id, "3000"])?;
    let call = &done["call"];
    ensure!(
        call["callee"]["trunk"] == "third"
            && call["callee"]["peer"] == target.addr()?.to_string().as_str(),
        "the callee side is the target now: {call}"
    );
    ensure!(
        call["calleeNumber"] == CALLEE && call["state"] == "CALL_STATE_ESTABLISHED",
        "the call keeps its numbers and state: {call}"
    );

    // The caller starts its RTP once the transfer is done; the target echoes it.
    let target_media = SocketAddr::new(IpAddr::V4(UAS_IP), c_mp).to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Value::Null;
    let flowed = loop {
        let v = trunkctl_json(&admin, &["calls", "get", &id])?;
        let m = &v["callee"]["media"][0];
        let packets: u64 = m["rtpPackets"].as_str().unwrap_or("0").parse().unwrap_or(0);
        if m["latchedAddress"] == target_media.as_str() && packets > 0 {
            break true;
        }
        last = v;
        if Instant::now() > deadline || !caller.is_running() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        flowed,
        "no RTP from the target {target_media} on the callee side; last GetCall: {last}"
    );

    caller.wait(Duration::from_secs(60))?.assert_all_ok(1)?;
    callee_run.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    target_run.wait(Duration::from_secs(30))?.assert_all_ok(1)?;

    let ended = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&watch_path).is_ok_and(|t| t.contains("CALL_EVENT_TYPE_ENDED"))
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    ensure!(ended, "the watcher never saw the call end");
    let types: Vec<String> = std::fs::read_to_string(&watch_path)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["callId"] == id.as_str())
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap_or(""),
                e["by"].as_str().unwrap_or("")
            )
        })
        .collect();
    let pos = |t: &str| types.iter().position(|x| x.starts_with(t));
    ensure!(
        pos("CALL_EVENT_TYPE_TRANSFERRED PARTY_CALLEE").is_some()
            && pos("CALL_EVENT_TYPE_TRANSFERRED") < pos("CALL_EVENT_TYPE_ENDED"),
        "events of the call: {types:?}"
    );
    ensure!(
        types
            .iter()
            .filter(|t| t.starts_with("CALL_EVENT_TYPE_TRANSFERRED"))
            .count()
            == 1,
        "one transfer done (the busy target's attempt is no event): {types:?}"
    );

    // The ended call is still readable, with the target as its callee.
    let v = trunkctl_json(&admin, &["calls", "get", &id])?;
    ensure!(
        v["state"] == "CALL_STATE_ENDED" && v["callee"]["trunk"] == "third",
        "ended call record: {v}"
    );
    let m = node.metrics()?;
    let relayed = relayed(&m);
    ensure!(
        relayed >= sent as f64,
        "the relay forwarded {relayed} packets for the {sent} the caller sent"
    );
    node.assert_healthy()?;
    Ok(())
}

#[test]
fn originate_bridges_two_sipp_parties_with_media_anchored() -> Result<()> {
    let out = out_dir("admin_originate")?;
    make_pcap(&out, 3)?;
    let a_mp = free_udp_block(UAS_IP, 4)?;
    let first = echo_callee("uas_originate_first.xml", a_mp)
        .name("first")
        .timeout_secs(60)
        .resolve_port()?;
    let mut first_run = first.clone().spawn(&out)?;
    let b_mp = free_udp_block(UAS_IP, 4)?;
    let second = Sipp::uas("uas_originate_second.xml")
        .name("second")
        .calls(1)
        .trace_msg()
        .args_media(b_mp)
        .timeout_secs(60)
        .resolve_port()?;
    let mut second_run = second.clone().spawn(&out)?;

    let mut cfg = NodeConfig::new(first.addr()?, Transport::Udp)?;
    cfg.id = format!("orig{}", std::process::id() % 1_000_000);
    let toml = format!(
        "{}\n[[trunks]]\nname = \"second\"\naddress = \"{}\"\ntransport = \"udp\"\n\n\
         [[routes]]\nprefix = \"5\"\ntrunk = \"second\"\n",
        cfg.to_toml(),
        second.addr()?,
    );
    let mut node = Node::start_toml(&cfg, &toml, &out)?;
    let admin = cfg.admin_addr().to_string();

    // Refused before anything is sent: a party the routing table cannot reach.
    let (code, _, err) = trunkctl_at(
        &admin,
        &["calls", "originate", "1001", "2002", "--b-trunk", "nope"],
    )?;
    ensure!(
        code == 2 && err.contains("b_trunk"),
        "unknown trunk: {code} {err}"
    );

    let placed = trunkctl_json(
        &admin,
        &["calls", "originate", "1001", "5002", "--wait", "30"],
    )?;
    let call = &placed["call"];
    let id = call["id"].as_str().unwrap_or_default().to_string();
    ensure!(
        call["state"] == "CALL_STATE_ESTABLISHED"
            && call["callerNumber"] == "1001"
            && call["calleeNumber"] == "5002"
            && call["caller"]["trunk"] == "carrier"
            && call["callee"]["trunk"] == "second"
            && call["mediaAnchored"] == true,
        "the placed call: {call}"
    );

    // The second party plays RTP, the first echoes it: both sides latched and counting.
    let first_media = SocketAddr::new(IpAddr::V4(UAS_IP), a_mp).to_string();
    let second_media = SocketAddr::new(IpAddr::V4(UAS_IP), b_mp).to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Value::Null;
    let flowed = loop {
        let v = trunkctl_json(&admin, &["calls", "get", &id])?;
        let a = &v["caller"]["media"][0];
        let b = &v["callee"]["media"][0];
        let count =
            |m: &Value| -> u64 { m["rtpPackets"].as_str().unwrap_or("0").parse().unwrap_or(0) };
        if a["latchedAddress"] == first_media.as_str()
            && b["latchedAddress"] == second_media.as_str()
            && count(a) > 0
            && count(b) > 0
        {
            break true;
        }
        last = v;
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        flowed,
        "media did not flow both ways through the relay; last GetCall: {last}"
    );

    let (code, _, err) = trunkctl_at(&admin, &["calls", "hangup", &id])?;
    ensure!(code == 0, "hangup exited {code}: {err}");
    first_run.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    second_run.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    let v = trunkctl_json(&admin, &["calls", "get", &id])?;
    ensure!(v["state"] == "CALL_STATE_ENDED", "after the hang-up: {v}");
    node.assert_healthy()?;
    Ok(())
}
