//! Child processes other than the node and SIPp: the media relays (`trunkline-relay`,
//! rtpengine), Kamailio, baresip. Each is owned by a guard that stops it by PID on drop, so a
//! failing test leaves nothing running.

use crate::{tail, wait_until};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// A child process other than the node or SIPp (relay, Kamailio, baresip), stopped by PID on
/// drop: SIGTERM, then SIGKILL after 5 s.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Option<Child>,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Its PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts `cmd` (named `name`) with its output in `log`, and its command line beside it.
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        Proc::start(name, cmd.stdin(Stdio::null()), log)
    }

    /// As [`Proc::spawn`], for a program driven through its standard input (linphonec's
    /// command line): the pipe to it comes back beside the guard.
    pub fn spawn_interactive(
        name: &str,
        cmd: &mut Command,
        log: PathBuf,
    ) -> Result<(Proc, ChildStdin)> {
        let mut proc = Proc::start(name, cmd.stdin(Stdio::piped()), log)?;
        let stdin = proc
            .child
            .as_mut()
            .and_then(|c| c.stdin.take())
            .context("no pipe to the child's standard input")?;
        Ok((proc, stdin))
    }

    fn start(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        std::fs::write(log.with_extension("cmdline"), format!("{cmd:?}"))?;
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if self.alive() {
            return Ok(());
        }
        bail!("{} exited; log tail:\n{}", self.name, tail(&self.log, 30))
    }

    /// Its output so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after 5 s; waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let exited = wait_until(Duration::from_secs(5), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !exited {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
