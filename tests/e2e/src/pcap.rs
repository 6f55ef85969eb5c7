//! The G.711 pcap that SIPp plays in the media tests (media.rs, sipi.rs), written per test by
//! tests/media/make_pcap.py so that its length, and so the packet count the relay counters are
//! checked against, is the test's own.

use crate::workspace_root;
use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// RTP packets per second in the generated pcap (20 ms PCMU).
pub const PPS: u64 = 50;

/// Writes `<out>/pcmu.pcap` (tests/media/make_pcap.py: PCMU, 50 packets/s) of `secs` seconds;
/// returns its packet count.
pub fn make_pcap(out: &Path, secs: u64) -> Result<u64> {
    let status = Command::new("python3")
        .arg(workspace_root().join("tests/media/make_pcap.py"))
        .arg(out.join("pcmu.pcap"))
        .arg(secs.to_string())
        .stdin(Stdio::null())
        .status()
        .context("running python3 tests/media/make_pcap.py")?;
    ensure!(status.success(), "make_pcap.py failed with {status}");
    Ok(secs * PPS)
}
