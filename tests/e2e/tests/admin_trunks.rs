//! Trunks and routes changed through the admin API while calls run, with SIPp as the
//! caller and as two carriers: the next call follows the new table, the call in progress
//! keeps its trunk — even when that trunk is deleted and the carrier then hangs up — and
//! a change that would leave a route naming a missing trunk is refused, saying which. A
//! trunk applied with the sections of a node file (rewrites, trusted identity) keeps them:
//! its rewrite shows at the far end.

use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use trunkline_e2e::*;

#[test]
fn trunks_and_routes_change_for_new_calls_and_leave_running_calls_alone() -> Result<()> {
    let out = out_dir("admin_trunks")?;
    // Carrier A answers and hangs up 8 s later; carrier B answers and waits for the BYE.
    let mut carrier_a = Sipp::uas("uas_callee_bye_later.xml")
        .name("carrier_a")
        .calls(1)
        .duration_ms(8000)
        .timeout_secs(60)
        .spawn(&out)?;
    let mut carrier_b = Sipp::uas("uas_basic.xml")
        .name("carrier_b")
        .trace_msg()
        .calls(1)
        .timeout_secs(60)
        .spawn(&out)?;
    let mut cfg = NodeConfig::new(carrier_a.addr, Transport::Udp)?;
    cfg.id = format!("trk{}", std::process::id() % 1_000_000);
    // Callers on 127.0.0.2 (and the harness's probes from 127.0.0.1) only: the carriers
    // (127.0.0.3) are trusted as trunks or not at all, so a deleted trunk's requests are
    // a stranger's.
    cfg.sip_extra.push(format!(
        "access_sources = [\"{NODE_IP}/32\", \"{UAC_IP}/32\"]"
    ));
    let mut node = Node::start(&cfg, &out)?;
    let admin = cfg.admin_addr().to_string();

    // Call 1 goes to carrier A, the only trunk, and stays up.
    let mut caller1 = Sipp::uac("uac_callee_bye.xml", node.sip_addr())
        .name("caller1")
        .calls(1)
        .timeout_secs(60)
        .spawn(&out)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = trunkctl_json(&admin, &["calls", "list", "--state", "established"])?;
        if v["calls"].as_array().is_some_and(|c| c.len() == 1) {
            ensure!(
                v["calls"][0]["callee"]["trunk"] == "carrier",
                "call 1 went to {}",
                v["calls"][0]["callee"]
            );
            break;
        }
        ensure!(Instant::now() < deadline, "call 1 was not established");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Carrier B added; every new call goes to it; carrier A deleted while call 1 is up.
    let trunks_file = out.join("trunks.toml");
    std::fs::write(
        &trunks_file,
        format!(
            "[[trunks]]\nname = \"carrier2\"\naddress = \"{}\"\ntransport = \"udp\"\n\
             trusted_identity = true\n\n[[trunks.rewrites]]\ndirection = \"outbound\"\n\
             field = \"ruri\"\npattern = '^1555(\\d+)$'\nreplace = '+1555$1'\n",
            carrier_b.addr
        ),
    )?;
    let (code, table, err) = trunkctl_at(
        &admin,
        &[
            "trunks",
            "apply",
            "-f",
            trunks_file.to_str().unwrap_or_default(),
        ],
    )?;
    ensure!(
        code == 0 && table.contains("carrier2"),
        "trunks apply: {code} {err} {table}"
    );
    let routes_file = out.join("routes.toml");
    std::fs::write(
        &routes_file,
        "[[routes]]\nprefix = \"1555\"\ntrunk = \"carrier2\"\n\n\
         [[routes]]\nprefix = \"1666\"\nprovisional_timeout_ms = 1500\n\
         trunks = [{ name = \"carrier2\", priority = 1, weight = 5 }]\n\n\
         [routing]\ndefault_trunk = \"carrier2\"\n",
    )?;
    let routes = trunkctl_json(
        &admin,
        &[
            "routes",
            "apply",
            "-f",
            routes_file.to_str().unwrap_or_default(),
        ],
    )?;
    ensure!(
        routes["routes"][0]["prefix"] == "1555" && routes["defaultTrunk"] == "carrier2",
        "routes apply answered {routes}"
    );
    // A route list with its priority, weight and timer comes back as applied.
    let listed = &routes["routes"][1];
    ensure!(
        listed["trunks"][0]["name"] == "carrier2"
            && listed["trunks"][0]["priority"] == 1
            && listed["trunks"][0]["weight"] == 5
            && listed["provisionalTimeoutMs"] == 1500,
        "the route list came back as {listed}"
    );
    let (code, said, err) = trunkctl_at(&admin, &["trunks", "delete", "carrier"])?;
    ensure!(code == 0, "delete carrier: {code} {err} {said}");
    let listed = trunkctl_json(&admin, &["trunks", "list"])?;
    let names: Vec<&str> = listed["trunks"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    ensure!(names == ["carrier2"], "trunks after the change: {names:?}");
    let shown = &listed["trunks"][0];
    ensure!(
        shown["trustedIdentity"] == true && shown["rewrites"][0]["replace"] == "+1555$1",
        "carrier2 came back as {shown}"
    );

    // Call 2 follows the new table.
    let mut caller2 = Sipp::uac("uac_basic.xml", node.sip_addr())
        .name("caller2")
        .calls(1)
        .duration_ms(500)
        .timeout_secs(30)
        .arg("-s")
        .arg("15550123")
        .spawn(&out)?;
    caller2.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    carrier_b.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    // The number as carrier2's outbound rewrite made it.
    let seen = std::fs::read_to_string(carrier_b.messages_log())?;
    ensure!(
        seen.contains("INVITE sip:+15550123@"),
        "carrier2 did not get the rewritten number:\n{}",
        tail(&carrier_b.messages_log(), 30)
    );

    // Call 1 was left alone: its carrier, no longer a trunk of the node, hangs up and
    // the BYE still reaches the caller.
    caller1.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    carrier_a.wait(Duration::from_secs(30))?.assert_all_ok(1)?;

    // Changes that would leave the table naming a missing trunk are refused, saying which.
    let (code, _, err) = trunkctl_at(&admin, &["trunks", "delete", "carrier2"])?;
    ensure!(
        code == 1
            && err.contains("FailedPrecondition")
            && err.contains("1555")
            && err.contains("default_trunk"),
        "deleting a routed trunk: {code} {err}"
    );
    let bad_routes = out.join("bad-routes.toml");
    std::fs::write(
        &bad_routes,
        "[[routes]]\nprefix = \"44\"\ntrunk = \"nosuch\"\n",
    )?;
    let (code, _, err) = trunkctl_at(
        &admin,
        &[
            "routes",
            "apply",
            "-f",
            bad_routes.to_str().unwrap_or_default(),
        ],
    )?;
    ensure!(
        code == 1 && err.contains("FailedPrecondition") && err.contains("nosuch"),
        "a route to a missing trunk: {code} {err}"
    );
    let routes = trunkctl_json(&admin, &["routes", "list"])?;
    ensure!(
        routes["routes"][0]["trunk"] == "carrier2",
        "a refused change changed the table: {routes}"
    );
    let bad_trunk = out.join("bad-trunk.toml");
    std::fs::write(
        &bad_trunk,
        "[[trunks]]\nname = \"x\"\naddress = \"not-an-address\"\n",
    )?;
    let (code, _, err) = trunkctl_at(
        &admin,
        &[
            "trunks",
            "apply",
            "-f",
            bad_trunk.to_str().unwrap_or_default(),
        ],
    )?;
    ensure!(
        code == 2 && err.contains("address"),
        "a malformed trunk: {code} {err}"
    );
    let (code, _, err) = trunkctl_at(&admin, &["trunks", "get", "carrier"])?;
    ensure!(code == 3, "a deleted trunk: {code} {err}");

    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}
