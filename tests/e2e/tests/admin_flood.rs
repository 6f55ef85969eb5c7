//! The admin API under a connection flood: at most `admin.max_connections` are accepted
//! (the node's descriptors stay bounded while SIP goes on answering), a connection that
//! sends nothing, or only a few bytes, is closed after `admin.first_bytes_timeout_secs`,
//! and once the silent ones are gone a real client is served again.

use anyhow::{ensure, Result};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use trunkline_e2e::*;

const MAX: usize = 16;
const FLOOD: usize = 60;

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Whether the node has closed `s`: a read ends (EOF or reset) rather than timing out.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_connection_flood_on_the_admin_api_is_bounded_and_silent_peers_are_dropped() -> Result<()> {
    let out = out_dir("admin_flood")?;
    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    let mut cfg = NodeConfig::new(trunk.local_addr()?, Transport::Udp)?;
    cfg.id = format!("flood{}", std::process::id() % 1_000_000);
    let admin_section = format!("[admin]\nlisten = \"{}\"", cfg.admin_addr());
    let toml = cfg.to_toml().replace(
        &admin_section,
        &format!("{admin_section}\nmax_connections = {MAX}\nfirst_bytes_timeout_secs = 2"),
    );
    ensure!(
        toml.contains("max_connections"),
        "the test did not set the limit"
    );
    let node = Node::start_toml(&cfg, &toml, &out)?;
    let pid = node.pid().ok_or_else(|| anyhow::anyhow!("no node pid"))?;
    let admin = cfg.admin_addr().to_string();
    let (code, _, err) = trunkctl_at(&admin, &["node", "get"])?;
    ensure!(code == 0, "node get before the flood: {code} {err}");
    let baseline = open_fds(pid)?;

    // The flood: silent connections, and some that send a few bytes and stop.
    let mut conns = Vec::new();
    for i in 0..FLOOD {
        let mut s = TcpStream::connect_timeout(&cfg.admin_addr(), Duration::from_secs(2))?;
        if i % 3 == 0 {
            s.write_all(b"PRI * HTTP/2")?;
        }
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(pid)?;
    ensure!(
        during <= baseline + MAX + 2,
        "the node holds {during} descriptors under the flood (baseline {baseline}, max_connections {MAX})"
    );
    ensure!(
        node.options_ping(Duration::from_secs(2))? == 200,
        "SIP stopped answering under the API flood"
    );

    // Every silent or stalled connection is closed by the node, the waiting ones after
    // their turn: FLOOD / MAX rounds of the 2 s deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut open: Vec<TcpStream> = conns;
    while !open.is_empty() && Instant::now() < deadline {
        open.retain_mut(|s| !closed_by_peer(s));
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        open.is_empty(),
        "{} of {FLOOD} silent connections are still open after 30 s",
        open.len()
    );
    let (code, _, err) = trunkctl_at(&admin, &["node", "get"])?;
    ensure!(code == 0, "node get after the flood: {code} {err}");
    let after = open_fds(pid)?;
    ensure!(
        after <= baseline + 2,
        "descriptors after the flood: {after} (baseline {baseline})"
    );
    Ok(())
}
