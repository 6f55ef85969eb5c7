//! linphonec (Debian's `linphone-cli` 5.1) as a SIP caller with digest credentials. It is
//! here because it answers a SHA-256 challenge (RFC 7616/8760), which SIPp 3.6, baresip 1.0,
//! sipvicious and Kamailio's `uac` do not: the one Debian client that proves the node's
//! SHA-256 digest against an independent implementation.
//!
//! Driven through its command line on standard input (`terminate`, `quit`), and read through
//! its own log (`-l`, level 6), which has every SIP message and every call state change and,
//! unlike its standard output, is written line by line. It runs with its home directory in
//! the test's output directory, so it reads no configuration but the one written here.

use crate::child::Proc;
use crate::{free_port, tail, wait_until};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::time::Duration;

/// One linphonec, stopped by PID when dropped.
pub struct Linphone {
    pub proc: Proc,
    stdin: ChildStdin,
    /// Its own log: SIP messages and call states.
    pub sip_log: PathBuf,
    /// The address its SIP socket is bound to.
    pub ip: Ipv4Addr,
    pub sip_port: u16,
}

impl Linphone {
    /// Starts linphonec `name` on `ip` (files in `<out>/<name>/`) with the digest credentials
    /// `username`/`password`, calling `target` (a SIP URI) at once.
    pub fn call(
        out: &Path,
        name: &str,
        ip: Ipv4Addr,
        username: &str,
        password: &str,
        target: &str,
    ) -> Result<Linphone> {
        let dir = out.join(name);
        // Its call history database goes under $HOME; without the directory it logs errors.
        std::fs::create_dir_all(dir.join(".local/share/linphone"))?;
        let sip_port = free_port(ip)?;
        let rtp_port = free_port(ip)?;
        let config = format!(
            "[sip]\nsip_port={sip_port}\nsip_tcp_port=0\nsip_tls_port=0\n\
             bind_address={ip}\nuse_ipv6=0\nguess_hostname=0\n\
             contact=sip:{username}@{ip}\n\n\
             [auth_info_0]\nusername={username}\npasswd={password}\n\n\
             [rtp]\naudio_rtp_port={rtp_port}\n"
        );
        let rc = dir.join("linphonerc");
        std::fs::write(&rc, config)?;
        let sip_log = dir.join("linphone.log");
        let _ = std::fs::remove_file(&sip_log);
        let mut cmd = Command::new("linphonec");
        cmd.arg("-c")
            .arg(&rc)
            .arg("-d")
            .arg("6")
            .arg("-l")
            .arg(&sip_log)
            .arg("-s")
            .arg(target)
            .env("HOME", &dir)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME");
        let (proc, stdin) = Proc::spawn_interactive(name, &mut cmd, dir.join("stdout.log"))?;
        Ok(Linphone {
            proc,
            stdin,
            sip_log,
            ip,
            sip_port,
        })
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.sip_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until its call reaches state `state` (liblinphone's name without the
    /// `LinphoneCall` prefix: `StreamsRunning`, `Error`, `Released`...).
    pub fn wait_state(&mut self, state: &str, timeout: Duration) -> Result<()> {
        let line = format!("to LinphoneCall{state}\n");
        let reached = wait_until(timeout, || {
            self.log_text().contains(&line) || !self.proc.alive()
        });
        if reached && self.log_text().contains(&line) {
            return Ok(());
        }
        bail!(
            "{}: the call never reached {state} within {timeout:?}; log tail:\n{}",
            self.proc.name,
            tail(&self.sip_log, 40)
        )
    }

    /// Types `line` at its prompt.
    pub fn command(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("{}: writing {line:?}", self.proc.name))
    }

    /// Asks it to quit and waits for it (it is stopped by PID after 10 s). Not after a
    /// refused answer: it then prompts for a password until one works, and takes every
    /// line as one; [`Linphone::stop`] it instead.
    pub fn quit(mut self) -> Result<()> {
        let _ = self.command("quit");
        let exited = wait_until(Duration::from_secs(10), || !self.proc.alive());
        self.proc.stop();
        if !exited {
            bail!("{} did not quit when asked", self.proc.name);
        }
        Ok(())
    }

    /// Stops it by PID (SIGTERM, then SIGKILL).
    pub fn stop(mut self) {
        self.proc.stop();
    }
}
