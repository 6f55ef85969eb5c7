//! SIPVicious against the node, the way an edge device meets it on the Internet: svmap
//! looks for SIP devices, svwar enumerates extensions and svcrack guesses the password
//! of a trunk's digest user (with the right password in its dictionary). None of them
//! may find a user or a password, and calls placed meanwhile all succeed.
//!
//! svmap sends from 127.0.0.5 (`-b`); Debian's svwar and svcrack ignore `-b` and send
//! from 127.0.0.1:5060, so in this test 127.0.0.1 is a stranger too and the node's
//! health is read from its metrics, not from an OPTIONS the harness would send from
//! there.

use anyhow::{ensure, Context, Result};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trunkline_e2e::cluster::metric;
use trunkline_e2e::*;

const SCANNER_IP: &str = "127.0.0.5";
const USER: &str = "pbx-7";
const PASSWORD: &str = "n0t-a-real-secret";
const CALLS: u64 = 40;

/// Runs one SIPVicious tool from the scanner's address, killed after `limit`; its
/// output.
fn sipvicious(tool: &str, args: &[&str], limit: Duration) -> Result<String> {
    let mut child = Command::new(tool)
        .args(["-b", SCANNER_IP])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{tool} (Debian package sipvicious) must be installed"))?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.wait();
    let mut text = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut text)?;
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut text)?;
    }
    Ok(text)
}

#[test]
fn sipvicious_finds_no_user_and_cracks_no_password_while_calls_go_on() -> Result<()> {
    let out = out_dir("scanning")?;
    let mut uas = Sipp::uas("uas_basic.xml")
        .calls(CALLS)
        .timeout_secs(120)
        .spawn(&out)?;
    let mut cfg = NodeConfig::new(uas.addr, Transport::Udp)?;
    // The callers (SIPp on 127.0.0.2) are the access network; the scanner is nobody.
    cfg.sip_extra
        .push("access_sources = [\"127.0.0.2/32\"]".into());
    let toml = cfg.to_toml().replace(
        "[routing]",
        &format!(
            "[[trunks]]\nname = \"pbx\"\naddress = \"127.0.0.9:5060\"\n\n\
             [trunks.auth]\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n[routing]"
        ),
    );
    let mut node = Node::start_toml(&cfg, &toml, &out)?;
    let sip = node.sip_addr();
    let target = format!("udp://{sip}");

    // Calls go on for the whole scan.
    let uac = Sipp::uac("uac_basic.xml", sip)
        .calls(CALLS)
        .rate(2)
        .duration_ms(500)
        .timeout_secs(120)
        .spawn(&out)?;

    let svmap = sipvicious(
        "svmap",
        &["-p", &sip.port().to_string(), &sip.ip().to_string()],
        Duration::from_secs(30),
    )?;
    std::fs::write(out.join("svmap.txt"), &svmap)?;
    let svwar = sipvicious(
        "svwar",
        &["-e100-400", "-m", "INVITE", &target],
        Duration::from_secs(40),
    )?;
    std::fs::write(out.join("svwar.txt"), &svwar)?;
    let dictionary = out.join("passwords.txt");
    let mut words: Vec<String> = (0..200).map(|i| format!("guess{i}")).collect();
    words.insert(150, PASSWORD.to_string());
    std::fs::write(&dictionary, words.join("\n") + "\n")?;
    let svcrack = sipvicious(
        "svcrack",
        &["-u", USER, "-d", &dictionary.to_string_lossy(), &target],
        Duration::from_secs(40),
    )?;
    std::fs::write(out.join("svcrack.txt"), &svcrack)?;

    // No extension found, no password cracked.
    ensure!(
        !svwar.contains("| reqauth") && !svwar.contains("| noauth") && !svwar.contains("| weird"),
        "svwar found extensions:\n{svwar}"
    );
    ensure!(
        !svcrack.contains(PASSWORD) && !svcrack.to_lowercase().contains("cracked"),
        "svcrack reports a password:\n{svcrack}"
    );
    ensure!(
        node.metrics()?.sum("trunkline_calls_total") <= CALLS as f64,
        "a scanner's request became a call"
    );
    // The scanner was shut out: its address blocked, later requests dropped unread.
    let blocked = metric(&node, "trunkline_sip_sources_blocked_total");
    let dropped = metric(&node, "trunkline_sip_source_dropped_total");
    eprintln!("scanner: blocked {blocked} time(s), {dropped} messages dropped");
    ensure!(
        blocked >= 1.0 && dropped > 0.0,
        "the scanner was never blocked"
    );

    // Every call placed during the scan succeeded.
    let mut uac = uac;
    uac.wait(Duration::from_secs(120))?.assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;
    ensure!(node.is_alive(), "the node died under the scan");
    Ok(())
}
