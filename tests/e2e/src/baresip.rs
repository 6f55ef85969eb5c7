//! baresip (Debian's `baresip-core` 1.0) as a real SIP endpoint on a loopback address of its
//! own: configured from tests/media/baresip/config.template (a 440 Hz sine as its microphone,
//! ALSA's `null` device as its speaker, the `ctrl_tcp` command interface), driven only through
//! that interface (`dial`, `hangup`, `quit`) and read only through its log. The same set-up as
//! media.rs's baresip test, on any address, so that several endpoints can be told apart by
//! address; used by cluster_baresip.rs.
//!
//! baresip binds its RTP sockets to the wildcard address ("we listen on all interfaces", its
//! stream.c) and writes the configured address into its SDP, so its RTP leaves from whatever
//! source the kernel picks: on loopback that is 127.0.0.1. Only an instance on 127.0.0.1
//! sends media from the address its SDP names; elsewhere a relay sees it as behind a NAT.

use crate::child::Proc;
use crate::{free_port, tail, workspace_root};
use anyhow::{bail, ensure, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The address the shared template names everywhere (SIP listener, network interface,
/// ctrl_tcp listener); [`Baresip::start`] puts the instance's own address in its place.
const TEMPLATE_IP: &str = "127.0.0.1";

/// A port on `ip` free for UDP and TCP whose successor is free too: baresip binds SIP
/// port + 1 for TLS.
pub fn free_port_pair(ip: Ipv4Addr) -> Result<u16> {
    let free = |p: u16| TcpListener::bind((ip, p)).is_ok() && UdpSocket::bind((ip, p)).is_ok();
    for _ in 0..200 {
        let p = free_port(ip)?;
        if p < u16::MAX && free(p + 1) && crate::reserve_port(ip.into(), p + 1) {
            return Ok(p);
        }
    }
    bail!("no two consecutive free ports on {ip}")
}

/// One headless baresip, stopped by PID when dropped.
pub struct Baresip {
    pub proc: Proc,
    /// Its address: SIP, RTP and ctrl_tcp are all on it.
    pub ip: Ipv4Addr,
    /// Its SIP port (UDP).
    pub sip_port: u16,
    ctrl: u16,
}

impl Baresip {
    /// Starts baresip `name` on `ip` with its files in `<out>/<name>/` and the one account
    /// `account`, in which `@SIP_PORT@` stands for the SIP port chosen here. `sip_trace`
    /// adds `-s`: every SIP message it sends and receives goes to its log too.
    pub fn start(
        out: &Path,
        name: &str,
        ip: Ipv4Addr,
        account: &str,
        sip_trace: bool,
    ) -> Result<Baresip> {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        let sip_port = free_port_pair(ip)?;
        let ctrl = free_port(ip)?;
        let template =
            std::fs::read_to_string(workspace_root().join("tests/media/baresip/config.template"))?;
        let config = template
            .replace("@SIP_PORT@", &sip_port.to_string())
            .replace("@CTRL_PORT@", &ctrl.to_string())
            .replace(TEMPLATE_IP, &ip.to_string());
        // Both substitutions must have happened, or the instance would be somewhere else
        // than the test believes.
        ensure!(
            config.contains(&format!("{ip}:{sip_port}"))
                && config.contains(&format!("{ip}:{ctrl}"))
                && (ip.to_string() == TEMPLATE_IP || !config.contains(TEMPLATE_IP)),
            "tests/media/baresip/config.template no longer has the layout this helper \
             renders:\n{config}"
        );
        std::fs::write(dir.join("config"), config)?;
        std::fs::write(
            dir.join("accounts"),
            format!("{}\n", account.replace("@SIP_PORT@", &sip_port.to_string())),
        )?;
        std::fs::write(dir.join("contacts"), "")?;
        let mut cmd = Command::new("baresip");
        cmd.arg("-f").arg(&dir);
        if sip_trace {
            cmd.arg("-s");
        }
        let proc = Proc::spawn(
            &format!("baresip {name}"),
            &mut cmd,
            dir.join("baresip.log"),
        )?;
        Ok(Baresip {
            proc,
            ip,
            sip_port,
            ctrl,
        })
    }

    /// Its SIP address.
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.sip_port)
    }

    fn ctrl_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.ctrl)
    }

    /// Waits (up to 10 s) until its ctrl_tcp interface accepts a connection: it is ready.
    pub fn wait_ctrl(&mut self) -> Result<()> {
        let addr = self.ctrl_addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            self.proc.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{}: ctrl_tcp {addr} never accepted; log:\n{}",
            self.proc.name,
            tail(&self.proc.log, 30)
        )
    }

    /// One ctrl_tcp command (netstring-framed JSON); returns the response's JSON text with
    /// its spaces removed (events that arrive first are skipped).
    pub fn command(&self, command: &str, params: &str) -> Result<String> {
        let addr = self.ctrl_addr();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let body = format!(r#"{{"command":"{command}","params":"{params}","token":"e2e"}}"#);
        s.write_all(format!("{}:{body},", body.len()).as_bytes())?;
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            // netstrings: LEN ":" BODY ","
            let mut rest = &buf[..];
            while let Some(colon) = rest.iter().position(|&b| b == b':') {
                let Some(len) = std::str::from_utf8(&rest[..colon])
                    .ok()
                    .and_then(|l| l.parse::<usize>().ok())
                else {
                    break;
                };
                let Some(msg) = rest.get(colon + 1..colon + 1 + len) else {
                    break;
                };
                let text = String::from_utf8_lossy(msg).replace(' ', "");
                if text.contains("\"response\":true") {
                    return Ok(text);
                }
                rest = rest.get(colon + 2 + len..).unwrap_or_default();
            }
        }
        bail!("{}: no ctrl_tcp response to {command}", self.proc.name)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// Its log from byte `from` of [`Baresip::log_text`] on, without the call display (a
    /// status line that baresip rewrites with `\r` ten times a second) and without blank
    /// lines: with `sip_trace`, each message reads `UDP <from> -> <to>` and then the message
    /// line by line.
    pub fn trace_since(&self, from: usize) -> String {
        let log = self.proc.log_text();
        log.get(from..)
            .unwrap_or_default()
            .split(['\r', '\n'])
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty() && !l.contains("(bit/s)"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// End-of-call RTP statistics (`rtp_stats yes`): (packets sent, packets received).
    pub fn rtp_packets(&self) -> Option<(u64, u64)> {
        let log = self.proc.log_text();
        let line = log
            .lines()
            .find(|l| l.trim_start().starts_with("packets:"))?;
        let mut f = line.split_whitespace().skip(1);
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    }
}
