//! Trunks named by DNS (RFC 3263), against dnsmasq serving NAPTR, SRV and A records on a
//! loopback port of its own:
//!
//! - calls go to the targets of the lowest SRV priority, spread by weight, and never to a
//!   higher priority while those answer;
//! - a call fails over to the next target when the first answers 503 or stays silent (and
//!   over TCP when its port is closed), and later calls avoid the targets that failed;
//! - a target with only an AAAA record is reached over IPv6, from the node's IPv6 socket.

use anyhow::{ensure, Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use trunkline_e2e::child::Proc;
use trunkline_e2e::*;

/// dnsmasq on 127.0.0.1 at a free port, serving `records` (dnsmasq options such as
/// `--srv-host=...`) and nothing else: no upstream, no hosts file, no config file.
fn dnsmasq(out: &Path, records: &[String]) -> Result<(Proc, SocketAddr)> {
    let port = free_port(NODE_IP)?;
    let addr = SocketAddr::new(IpAddr::V4(NODE_IP), port);
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--pid-file=",
        "--user=root",
        "--local-ttl=2",
        "--log-queries",
        "--log-facility=-",
    ])
    .arg(format!("--port={port}"))
    .args(records);
    let mut proc = Proc::spawn("dnsmasq", &mut cmd, out.join("dnsmasq.log"))?;
    // Its own process has the port: taken while it runs (it was free before).
    let bound = wait_until(Duration::from_secs(5), || {
        UdpSocket::bind(addr).is_err() || !proc.alive()
    });
    proc.check_alive()?;
    ensure!(
        bound,
        "dnsmasq never bound {addr}:\n{}",
        tail(&proc.log, 20)
    );
    Ok((proc, addr))
}

/// A callee on `ip` running `scenario` for as long as the test needs it.
fn target(
    out: &Path,
    name: &str,
    ip: impl Into<IpAddr>,
    scenario: &str,
    tp: Transport,
) -> Result<(SippRun, u16)> {
    let s = Sipp::uas(scenario)
        .name(name)
        .local_ip(ip)
        .transport(tp)
        .trace_msg()
        .timeout_secs(120)
        .resolve_port()?;
    let port = s.addr()?.port();
    Ok((s.spawn(out)?, port))
}

/// INVITEs a callee has received so far (its SIPp message log).
fn invites(run: &SippRun) -> usize {
    parse_trace(&run.messages_log())
        .map(|m| {
            m.iter()
                .filter(|m| !m.sent && m.method() == Some("INVITE"))
                .count()
        })
        .unwrap_or(0)
}

/// A node whose default trunk is `carrier.test` over `transport`, resolved through `dns`;
/// with `udp_v6`, a second UDP socket there.
fn node(
    out: &Path,
    dns: SocketAddr,
    transport: &str,
    t1_ms: u64,
    udp_v6: Option<SocketAddr>,
) -> Result<Node> {
    let mut cfg = NodeConfig::new("127.0.0.9:5060".parse()?, Transport::Udp)?;
    cfg.t1_ms = t1_ms;
    cfg.log_level = "info,trunkline_call::dispatcher=debug".into();
    let mut toml = cfg.to_toml();
    if let Some(v6) = udp_v6 {
        let v4 = format!("udp = [\"{}\"]", cfg.sip_addr());
        ensure!(toml.contains(&v4), "no {v4} in the node's TOML");
        toml = toml.replace(&v4, &format!("udp = [\"{}\", \"{v6}\"]", cfg.sip_addr()));
    }
    let toml = toml
        .replace(
            "address = \"127.0.0.9:5060\"\ntransport = \"udp\"\n",
            &format!(
                "address = \"carrier.test\"\ntransport = \"{transport}\"\n\
                 sources = [\"127.0.0.20/30\"]\n"
            ),
        )
        .replace(
            "[routing]",
            &format!("[dns]\nservers = [\"{dns}\"]\n\n[routing]"),
        );
    let node = Node::start_toml(&cfg, &toml, out)?;
    Ok(node)
}

/// Places `calls` calls through the node, one every `every_ms`, and checks they were all
/// answered.
fn call(node: &Node, out: &Path, name: &str, calls: u64, rate: u32) -> Result<()> {
    Sipp::uac("uac_basic.xml", node.sip_addr())
        .name(name)
        .calls(calls)
        .rate(rate)
        .duration_ms(100)
        .timeout_secs(60)
        .spawn(out)?
        .wait(Duration::from_secs(90))?
        .assert_all_ok(calls)
}

/// Waits until the node has resolved the trunk (its first call would get 503 before).
fn wait_resolved(node: &Node) -> Result<()> {
    node.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_trunk_dns_targets", &[("trunk", "carrier")])
            .is_some_and(|n| n > 0.0)
    })
    .map(|_| ())
    .context("the node never resolved carrier.test")
}

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);
const C: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 23);

#[test]
fn calls_follow_naptr_and_srv_priority_and_weight() -> Result<()> {
    let out = out_dir("trunk_dns_weights")?;
    let (a, pa) = target(&out, "a", A, "uas_basic.xml", Transport::Udp)?;
    let (b, pb) = target(&out, "b", B, "uas_basic.xml", Transport::Udp)?;
    let (c, pc) = target(&out, "c", C, "uas_basic.xml", Transport::Udp)?;
    let (_dns, dns) = dnsmasq(
        &out,
        &[
            // The UDP service is preferred; the TCP one is a decoy for another transport.
            "--naptr-record=carrier.test,10,50,s,SIP+D2U,,_sip._udp.carrier.test".into(),
            "--naptr-record=carrier.test,5,50,s,SIP+D2T,,_sip._tcp.carrier.test".into(),
            format!("--srv-host=_sip._tcp.carrier.test,c.carrier.test,{pc},0,10"),
            format!("--srv-host=_sip._udp.carrier.test,a.carrier.test,{pa},10,60"),
            format!("--srv-host=_sip._udp.carrier.test,b.carrier.test,{pb},10,40"),
            format!("--srv-host=_sip._udp.carrier.test,c.carrier.test,{pc},20,10"),
            format!("--host-record=a.carrier.test,{A}"),
            format!("--host-record=b.carrier.test,{B}"),
            format!("--host-record=c.carrier.test,{C}"),
        ],
    )?;
    let node = node(&out, dns, "udp", 500, None)?;
    wait_resolved(&node)?;
    call(&node, &out, "caller", 20, 20)
        .with_context(|| format!("node log:\n{}", tail(&node.log, 20)))?;
    std::thread::sleep(Duration::from_millis(500));
    let (na, nb, nc) = (invites(&a), invites(&b), invites(&c));
    eprintln!("INVITEs: a {na}, b {nb}, c {nc}");
    ensure!(na + nb == 20, "priority 10 took {} of 20 calls", na + nb);
    ensure!(nc == 0, "priority 20 (and the TCP decoy) got {nc} calls");
    // Weights 60/40: each gets some (both 0 has a chance of 0.6^20 + 0.4^20).
    ensure!(na > 0 && nb > 0, "weights 60/40 split 20 calls {na}/{nb}");
    Ok(())
}

#[test]
fn a_call_fails_over_past_503_and_silence_and_later_calls_avoid_them() -> Result<()> {
    let out = out_dir("trunk_dns_failover")?;
    let (a, pa) = target(&out, "a", A, "uas_unavailable.xml", Transport::Udp)?;
    let (b, pb) = target(&out, "b", B, "uas_basic.xml", Transport::Udp)?;
    // Nothing listens here: requests to it go unanswered.
    let silent = free_port(C)?;
    let (_dns, dns) = dnsmasq(
        &out,
        &[
            format!("--srv-host=_sip._udp.carrier.test,a.carrier.test,{pa},10,0"),
            format!("--srv-host=_sip._udp.carrier.test,c.carrier.test,{silent},20,0"),
            format!("--srv-host=_sip._udp.carrier.test,b.carrier.test,{pb},30,0"),
            format!("--host-record=a.carrier.test,{A}"),
            format!("--host-record=b.carrier.test,{B}"),
            format!("--host-record=c.carrier.test,{C}"),
        ],
    )?;
    // T1 of 100 ms: the silent target times out (Timer B, 64·T1) in 6.4 s.
    let node = node(&out, dns, "udp", 100, None)?;
    wait_resolved(&node)?;
    call(&node, &out, "first", 1, 1)?;
    ensure!(invites(&a) == 1, "a got {} INVITEs, not 1", invites(&a));
    ensure!(invites(&b) == 1, "b got {} INVITEs, not 1", invites(&b));
    // The next call goes straight to b: a and the silent one are avoided.
    call(&node, &out, "second", 1, 1)?;
    ensure!(
        invites(&a) == 1,
        "a was tried again: {} INVITEs",
        invites(&a)
    );
    ensure!(invites(&b) == 2, "b got {} INVITEs, not 2", invites(&b));
    let failovers = node
        .metrics()?
        .get("trunkline_route_failovers_total", &[("trunk", "carrier")])
        .unwrap_or(0.0);
    ensure!(failovers == 2.0, "{failovers} failovers counted, not 2");
    Ok(())
}

#[test]
fn over_tcp_a_closed_target_fails_over_at_once() -> Result<()> {
    let out = out_dir("trunk_dns_tcp")?;
    let (b, pb) = target(&out, "b", B, "uas_basic.xml", Transport::Tcp)?;
    let closed = free_port(A)?;
    let (_dns, dns) = dnsmasq(
        &out,
        &[
            "--naptr-record=carrier.test,10,50,s,SIP+D2T,,_sip._tcp.carrier.test".into(),
            format!("--srv-host=_sip._tcp.carrier.test,a.carrier.test,{closed},10,0"),
            format!("--srv-host=_sip._tcp.carrier.test,b.carrier.test,{pb},20,0"),
            format!("--host-record=a.carrier.test,{A}"),
            format!("--host-record=b.carrier.test,{B}"),
        ],
    )?;
    let node = node(&out, dns, "tcp", 500, None)?;
    wait_resolved(&node)?;
    call(&node, &out, "caller", 2, 2)?;
    ensure!(invites(&b) == 2, "b got {} INVITEs, not 2", invites(&b));
    Ok(())
}

#[test]
fn a_target_with_only_an_aaaa_record_is_reached_over_ipv6() -> Result<()> {
    let out = out_dir("trunk_dns_aaaa")?;
    let v6 = Ipv6Addr::LOCALHOST;
    let (callee, port) = target(&out, "v6", v6, "uas_basic.xml", Transport::Udp)?;
    let (_dns, dns) = dnsmasq(
        &out,
        &[
            format!("--srv-host=_sip._udp.carrier.test,v6.carrier.test,{port},10,0"),
            format!("--host-record=v6.carrier.test,{v6}"),
        ],
    )?;
    let node_v6 = SocketAddr::new(IpAddr::V6(v6), free_port(v6)?);
    let node = node(&out, dns, "udp", 500, Some(node_v6))?;
    // The node's own process holds its IPv6 socket.
    ensure!(
        UdpSocket::bind(node_v6).is_err(),
        "the node does not hold {node_v6}"
    );
    wait_resolved(&node)?;
    call(&node, &out, "caller", 2, 2)
        .with_context(|| format!("node log:\n{}", tail(&node.log, 20)))?;
    ensure!(
        invites(&callee) == 2,
        "the IPv6 callee got {} INVITEs, not 2",
        invites(&callee)
    );
    // They came from the node's IPv6 socket, which its Via names.
    let trace = std::fs::read_to_string(callee.messages_log())?;
    ensure!(
        trace.contains(&format!("Via: SIP/2.0/UDP {node_v6}")),
        "the callee saw no Via naming {node_v6}:\n{}",
        tail(&callee.messages_log(), 30)
    );
    Ok(())
}
