//! The gRPC admin API end to end, driven by a generic client (Python grpcio with its
//! reflection and health packages, from PyPI) that has no .proto file: everything it
//! calls it learns from the node's reflection service, as grpcurl or an operator's own
//! tooling would. SIP peers are scripted over UDP.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use trunkline_e2e::scripted::{cseq_method, method, reply, summary, wait_for};
use trunkline_e2e::*;

const NODE_SERVICE: &str = "trunkline.admin.v1.NodeService";

/// Calls `NodeService/<method>` with a JSON request; the JSON response, or the error line.
fn call(admin: SocketAddr, method: &str, request: &str) -> Result<Result<Value, String>> {
    let (ok, out) = grpc_client(
        admin,
        &["call", &format!("{NODE_SERVICE}/{method}"), request],
    )?;
    if !ok {
        return Ok(Err(out));
    }
    Ok(Ok(serde_json::from_str(&out).with_context(|| {
        format!("{method} answered no JSON: {out}")
    })?))
}

fn health(admin: SocketAddr, service: &str) -> Result<String> {
    let (ok, out) = grpc_client(admin, &["health", service])?;
    ensure!(ok, "health check of {service:?} failed: {out}");
    Ok(out)
}

/// Sends an INVITE from `caller` and returns the first final response it gets.
fn invite(caller: &UdpSocket, node: SocketAddr, n: u32) -> Result<String> {
    let me = caller.local_addr()?;
    let msg = format!(
        "INVITE sip:+15550100@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKadm{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=adm{n}\r\nTo: <sip:+15550100@{node}>\r\n\
         Call-ID: admin-{n}@127.0.0.2\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{me}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    caller.send_to(msg.as_bytes(), node)?;
    let mut seen = Vec::new();
    let (fin, _) = wait_for(caller, Duration::from_secs(10), &mut seen, |m| {
        status_code(m).is_some_and(|s| s >= 200) && cseq_method(m) == "INVITE"
    })
    .with_context(|| format!("INVITE {n} got no final answer: {:?}", summary(&seen)))?;
    let to = header(&fin, "To", Some("t")).context("final response without To")?;
    let ack = format!(
        "ACK sip:+15550100@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKadm{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=adm{n}\r\nTo: {to}\r\n\
         Call-ID: admin-{n}@127.0.0.2\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    caller.send_to(ack.as_bytes(), node)?;
    Ok(fin)
}

#[test]
fn a_generic_client_finds_the_node_service_and_drains_the_node() -> Result<()> {
    let out = out_dir("admin_node")?;
    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    let mut cfg = NodeConfig::new(trunk.local_addr()?, Transport::Udp)?;
    // An id of this run: a stale node on the port would answer with another.
    cfg.id = format!("adm{}", std::process::id() % 1_000_000);
    let mut node = Node::start(&cfg, &out)?;
    let admin = cfg.admin_addr();

    // Reflection: the services and methods, with no .proto file on the client's side.
    let (ok, services) = grpc_client(admin, &["services"])?;
    ensure!(ok, "listing services failed: {services}");
    for want in [
        NODE_SERVICE,
        "trunkline.admin.v1.CallService",
        "grpc.health.v1.Health",
    ] {
        ensure!(
            services.lines().any(|l| l == want),
            "reflection does not list {want}: {services}"
        );
    }
    let (ok, methods) = grpc_client(admin, &["methods", NODE_SERVICE])?;
    ensure!(ok, "listing methods failed: {methods}");
    ensure!(
        methods.lines().collect::<Vec<_>>() == ["GetNode", "Drain", "Undrain", "ListNodes"],
        "NodeService methods: {methods}"
    );

    // GetNode describes this node.
    let n = call(admin, "GetNode", "{}")?.map_err(anyhow::Error::msg)?;
    ensure!(
        n["id"] == cfg.id.as_str(),
        "GetNode answered for {}",
        n["id"]
    );
    ensure!(n["state"] == "NODE_STATE_ACTIVE", "state {}", n["state"]);
    ensure!(
        n["adminAddress"] == admin.to_string().as_str(),
        "adminAddress {}",
        n["adminAddress"]
    );
    let sip = cfg.sip_addr().to_string();
    ensure!(
        n["sipListeners"].as_array().is_some_and(|l| l
            .iter()
            .any(|x| x["transport"] == "udp" && x["address"] == sip.as_str())),
        "sipListeners {} lack udp {sip}",
        n["sipListeners"]
    );
    ensure!(
        n["uptime"].as_str().is_some_and(|u| u.ends_with('s')),
        "uptime {}",
        n["uptime"]
    );
    ensure!(health(admin, "")? == "SERVING", "not SERVING at start");

    // CallService through reflection too: an idle node lists no calls.
    let (ok, methods) = grpc_client(admin, &["methods", "trunkline.admin.v1.CallService"])?;
    ensure!(ok, "listing CallService methods failed: {methods}");
    ensure!(
        methods.lines().collect::<Vec<_>>()
            == [
                "ListCalls",
                "GetCall",
                "WatchCalls",
                "HangupCall",
                "TransferCall",
                "OriginateCall"
            ],
        "CallService methods: {methods}"
    );
    let (ok, listed) = grpc_client(
        admin,
        &["call", "trunkline.admin.v1.CallService/ListCalls", "{}"],
    )?;
    ensure!(ok && listed == "{}", "ListCalls on an idle node: {listed}");

    // Drain: reported, refused at the SIP edge with 503 + Retry-After, not sent on.
    let n = call(admin, "Drain", "{}")?.map_err(anyhow::Error::msg)?;
    ensure!(
        n["state"] == "NODE_STATE_DRAINING",
        "after Drain: {}",
        n["state"]
    );
    ensure!(
        health(admin, "")? == "NOT_SERVING",
        "overall health while draining"
    );
    ensure!(
        health(admin, NODE_SERVICE)? == "NOT_SERVING",
        "NodeService health while draining"
    );
    let caller = UdpSocket::bind((UAC_IP, 0))?;
    let refused = invite(&caller, node.sip_addr(), 1)?;
    ensure!(
        status_code(&refused) == Some(503),
        "while draining an INVITE got {:?}",
        refused.lines().next()
    );
    ensure!(
        header(&refused, "Retry-After", None).is_some(),
        "503 without Retry-After"
    );
    let mut at_trunk = Vec::new();
    ensure!(
        wait_for(&trunk, Duration::from_millis(500), &mut at_trunk, |m| {
            method(m) == Some("INVITE")
        })
        .is_none(),
        "a drained node sent the INVITE on"
    );

    // Undrain: calls go through again.
    let n = call(admin, "Undrain", "{}")?.map_err(anyhow::Error::msg)?;
    ensure!(
        n["state"] == "NODE_STATE_ACTIVE",
        "after Undrain: {}",
        n["state"]
    );
    ensure!(health(admin, "")? == "SERVING", "not SERVING after Undrain");
    let trunk_addr = trunk.local_addr()?.to_string();
    let caller2 = UdpSocket::bind((UAC_IP, 0))?;
    let node_sip = node.sip_addr();
    let handle = std::thread::spawn(move || invite(&caller2, node_sip, 2));
    let (b_invite, from) = wait_for(&trunk, Duration::from_secs(5), &mut at_trunk, |m| {
        method(m) == Some("INVITE")
    })
    .context("after Undrain the INVITE did not reach the trunk")?;
    trunk.send_to(
        reply(&b_invite, 486, "busy", &trunk_addr, None).as_bytes(),
        from,
    )?;
    let fin = handle
        .join()
        .map_err(|_| anyhow::anyhow!("caller thread panicked"))??;
    ensure!(
        status_code(&fin) == Some(486),
        "after Undrain the call ended with {:?}",
        fin.lines().next()
    );

    // Errors a client can act on.
    let other = call(admin, "GetNode", r#"{"nodeId": "elsewhere"}"#)?;
    ensure!(
        other
            .as_ref()
            .is_err_and(|e| e.starts_with("ERROR NOT_FOUND")),
        "GetNode of another node: {other:?}"
    );
    let bad = call(admin, "Drain", r#"{"nodeId": "no such id"}"#)?;
    ensure!(
        bad.as_ref()
            .is_err_and(|e| e.starts_with("ERROR INVALID_ARGUMENT") && e.contains("node_id")),
        "Drain with a malformed id: {bad:?}"
    );

    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}

/// The admin API has no authentication yet: a node asked to serve it beyond loopback
/// refuses to start and says why.
#[test]
fn the_admin_api_is_refused_on_a_non_loopback_address() -> Result<()> {
    let out = out_dir("admin_not_loopback")?;
    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    let cfg = NodeConfig::new(trunk.local_addr()?, Transport::Udp)?;
    let toml = cfg.to_toml().replace(
        &format!("[admin]\nlisten = \"{}\"", cfg.admin_addr()),
        &format!("[admin]\nlisten = \"0.0.0.0:{}\"", cfg.admin_port),
    );
    ensure!(
        toml.contains("0.0.0.0:"),
        "the test did not change admin.listen"
    );
    let started = Node::start_toml(&cfg, &toml, &out);
    let err = match started {
        Ok(mut node) => {
            let _ = node.stop();
            anyhow::bail!("the node started with its admin API on 0.0.0.0");
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("admin.listen") && err.contains("loopback"),
        "start-up failed without naming admin.listen: {err}"
    );
    Ok(())
}

/// `trunkctl` against a node it started: tables for people, JSON and YAML for scripts,
/// the server from `--server` or `TRUNKCTL_SERVER`, and the documented exit codes.
#[test]
fn trunkctl_reads_and_drains_the_node_with_documented_exit_codes() -> Result<()> {
    let out = out_dir("admin_trunkctl")?;
    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    let mut cfg = NodeConfig::new(trunk.local_addr()?, Transport::Udp)?;
    cfg.id = format!("ctl{}", std::process::id() % 1_000_000);
    let mut node = Node::start(&cfg, &out)?;
    let admin = cfg.admin_addr().to_string();

    let (code, json, err) = trunkctl(&["--server", &admin, "node", "get", "-o", "json"], &[])?;
    ensure!(code == 0, "node get exited {code}: {err}");
    let n: Value = serde_json::from_str(&json).with_context(|| format!("not JSON: {json}"))?;
    ensure!(
        n["id"] == cfg.id.as_str(),
        "node get answered for {}",
        n["id"]
    );
    ensure!(n["state"] == "NODE_STATE_ACTIVE", "state {}", n["state"]);
    // Standalone, the node lists itself alone.
    let listed = trunkctl_json(&admin, &["node", "list"])?;
    ensure!(
        listed["clustered"] == false
            && listed["nodes"].as_array().map(Vec::len) == Some(1)
            && listed["nodes"][0]["id"] == cfg.id.as_str()
            && listed["nodes"][0]["local"] == true,
        "node list of a standalone node: {listed}"
    );

    let (code, table, err) = trunkctl(&["node", "drain"], &[("TRUNKCTL_SERVER", &admin)])?;
    ensure!(code == 0, "node drain exited {code}: {err}");
    let state_row = table
        .lines()
        .find(|l| l.starts_with("STATE"))
        .with_context(|| format!("no STATE row: {table}"))?;
    ensure!(
        state_row.ends_with("DRAINING"),
        "after drain: {state_row:?}"
    );
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with("ID") && l.ends_with(&cfg.id)),
        "table without this node's id: {table}"
    );
    ensure!(
        health(cfg.admin_addr(), "")? == "NOT_SERVING",
        "drained node still SERVING"
    );

    let (code, yaml, err) = trunkctl(&["--server", &admin, "node", "undrain", "-o", "yaml"], &[])?;
    ensure!(code == 0, "node undrain exited {code}: {err}");
    ensure!(
        yaml.lines().any(|l| l == "state: NODE_STATE_ACTIVE"),
        "after undrain: {yaml}"
    );

    let (code, _, err) = trunkctl(
        &["--server", &admin, "node", "get", "--node", "elsewhere"],
        &[],
    )?;
    ensure!(code == 3, "unknown node: exit {code} ({err})");
    let (code, _, err) = trunkctl(
        &["--server", &admin, "node", "get", "--node", "no such id"],
        &[],
    )?;
    ensure!(code == 2, "malformed node id: exit {code} ({err})");
    let (code, _, err) = trunkctl(&["--server", &admin, "node", "frobnicate"], &[])?;
    ensure!(code == 2, "usage error: exit {code} ({err})");
    let (code, completions, _) = trunkctl(&["completions", "bash"], &[])?;
    ensure!(
        code == 0 && completions.contains("_trunkctl"),
        "bash completions: exit {code}"
    );

    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    // The node is gone: the server cannot be reached.
    let (code, _, err) = trunkctl(&["--server", &admin, "node", "get"], &[])?;
    ensure!(code == 1, "no server: exit {code} ({err})");
    Ok(())
}

/// Bearer tokens with two roles: no token or a wrong one is UNAUTHENTICATED, a viewer
/// reads but may not drain or hang up (PERMISSION_DENIED), an operator may, and the log
/// says who did it. Health stays open for probes.
#[test]
fn tokens_gate_the_api_by_role() -> Result<()> {
    let out = out_dir("admin_tokens")?;
    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    let mut cfg = NodeConfig::new(trunk.local_addr()?, Transport::Udp)?;
    cfg.id = format!("tok{}", std::process::id() % 1_000_000);
    let operator = format!("op-{:016x}", std::process::id() as u64 * 0x9e37_79b9);
    let viewer = format!("view-{:016x}", std::process::id() as u64 * 0x7f4a_7c15);
    let tokens = out.join("admin-tokens");
    std::fs::write(
        &tokens,
        format!("# test tokens\noperator:night-shift:{operator}\nviewer:grafana:{viewer}\n"),
    )?;
    let toml = cfg.to_toml().replace(
        "[admin]\n",
        &format!("[admin]\ntokens_file = \"{}\"\n", tokens.display()),
    );
    let mut node = Node::start_toml(&cfg, &toml, &out)?;
    let admin = cfg.admin_addr().to_string();
    let ctl = |token: Option<&str>, args: &[&str]| {
        let mut all = vec!["--server", admin.as_str()];
        if let Some(t) = token {
            all.extend_from_slice(&["--token", t]);
        }
        all.extend_from_slice(args);
        trunkctl(&all, &[])
    };

    let (code, _, err) = ctl(None, &["node", "get"])?;
    ensure!(
        code == 1 && err.contains("Unauthenticated"),
        "no token: {code} {err}"
    );
    let (code, _, err) = ctl(Some("not-the-right-token-at-all"), &["node", "get"])?;
    ensure!(
        code == 1 && err.contains("Unauthenticated"),
        "wrong token: {code} {err}"
    );
    let (code, _, err) = ctl(None, &["calls", "list"])?;
    ensure!(
        code == 1 && err.contains("Unauthenticated"),
        "calls without token: {code} {err}"
    );

    // The viewer reads, and is refused what changes anything.
    let (code, _, err) = ctl(Some(&viewer), &["node", "get"])?;
    ensure!(code == 0, "viewer node get: {code} {err}");
    let (code, _, err) = ctl(Some(&viewer), &["calls", "list"])?;
    ensure!(code == 0, "viewer calls list: {code} {err}");
    let (code, _, err) = ctl(Some(&viewer), &["node", "drain"])?;
    ensure!(
        code == 1 && err.contains("PermissionDenied") && err.contains("grafana"),
        "viewer drain: {code} {err}"
    );
    let some_call = format!("{}-1", cfg.id);
    let (code, _, err) = ctl(Some(&viewer), &["calls", "hangup", &some_call])?;
    ensure!(
        code == 1 && err.contains("PermissionDenied"),
        "viewer hangup: {code} {err}"
    );
    for args in [
        vec!["calls", "transfer", some_call.as_str(), "3000"],
        vec!["calls", "originate", "1001", "2002"],
    ] {
        let (code, _, err) = ctl(Some(&viewer), &args)?;
        ensure!(
            code == 1 && err.contains("PermissionDenied"),
            "viewer {args:?}: {code} {err}"
        );
    }
    // An operator may; while the node drains it places no calls.
    let (code, _, err) = ctl(Some(&operator), &["node", "drain"])?;
    ensure!(code == 0, "operator drain: {code} {err}");
    let (code, _, err) = ctl(Some(&operator), &["calls", "originate", "1001", "2002"])?;
    ensure!(
        code == 1 && err.contains("Unavailable") && err.contains("draining"),
        "originate while draining: {code} {err}"
    );
    let (code, _, err) = ctl(Some(&operator), &["node", "undrain"])?;
    ensure!(code == 0, "operator undrain: {code} {err}");
    // TRUNKCTL_TOKEN works as --token does.
    let (code, _, err) = trunkctl(
        &["--server", &admin, "calls", "list"],
        &[("TRUNKCTL_TOKEN", &viewer)],
    )?;
    ensure!(code == 0, "TRUNKCTL_TOKEN: {code} {err}");

    // The operator drains and undrains; the log names it.
    let (code, _, err) = ctl(Some(&operator), &["node", "drain"])?;
    ensure!(code == 0, "operator drain: {code} {err}");
    let (code, _, err) = ctl(Some(&operator), &["node", "undrain"])?;
    ensure!(code == 0, "operator undrain: {code} {err}");
    let logged = wait_until(Duration::from_secs(5), || {
        let log = node.log_text();
        log.lines()
            .any(|l| l.contains("night-shift") && l.contains("drain"))
    });
    ensure!(
        logged,
        "the drain is not logged with its caller:\n{}",
        node.log_text()
    );
    ensure!(
        !node.log_text().contains(&operator),
        "a token appears in the log"
    );

    // Probes carry no token.
    ensure!(
        health(cfg.admin_addr(), "")? == "SERVING",
        "health behind auth"
    );

    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}

/// Oversize and malformed input to the API: an oversize request is refused before it is
/// decoded (OUT_OF_RANGE, as tonic reports a message past its limit), a field past its bound is refused naming it, and garbage, plain HTTP/1 and a
/// connection that never speaks leave the node serving.
#[test]
fn oversize_and_malformed_api_input_is_refused_and_the_node_goes_on() -> Result<()> {
    use std::io::{Read, Write};
    let out = out_dir("admin_bad_input")?;
    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    let mut cfg = NodeConfig::new(trunk.local_addr()?, Transport::Udp)?;
    cfg.id = format!("bad{}", std::process::id() % 1_000_000);
    let mut node = Node::start(&cfg, &out)?;
    let admin = cfg.admin_addr();

    let big = out.join("big.json");
    std::fs::write(
        &big,
        format!(r#"{{"callerNumber": "{}"}}"#, "1".repeat(1024 * 1024)),
    )?;
    let big_arg = format!("@{}", big.display());
    let (ok, said) = grpc_client(
        admin,
        &["call", "trunkline.admin.v1.CallService/ListCalls", &big_arg],
    )?;
    ensure!(
        !ok && said.contains("OUT_OF_RANGE") && said.contains("too large"),
        "a 1 MiB request: {said}"
    );
    let long = format!(r#"{{"callerNumber": "{}"}}"#, "1".repeat(1000));
    let (ok, said) = grpc_client(
        admin,
        &["call", "trunkline.admin.v1.CallService/ListCalls", &long],
    )?;
    ensure!(
        !ok && said.contains("INVALID_ARGUMENT") && said.contains("caller_number"),
        "a 1000-digit number: {said}"
    );

    // Garbage, HTTP/1 and a silent connection at the gRPC port.
    let mut silent = std::net::TcpStream::connect(admin)?;
    for junk in [
        &b"\x16\x03\x01\x02\x00garbage garbage garbage"[..],
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0u8; 4096][..],
    ] {
        let mut c = std::net::TcpStream::connect(admin)?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(junk)?;
        let mut buf = [0u8; 1024];
        // The server answers or closes; it must not hang on to it or fall over.
        let _ = c.read(&mut buf);
    }
    silent.set_read_timeout(Some(Duration::from_millis(200)))?;
    ensure!(health(admin, "")? == "SERVING", "after bad input");
    let n = call(admin, "GetNode", "{}")?.map_err(anyhow::Error::msg)?;
    ensure!(n["id"] == cfg.id.as_str(), "GetNode after bad input: {n}");
    let _ = silent.write_all(b"");

    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}
