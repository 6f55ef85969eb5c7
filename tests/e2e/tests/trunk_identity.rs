//! Numbers and identity across trunks: per-trunk rewrite rules visible at the far end
//! (Request-URI, From and To users), and `P-Asserted-Identity` relayed only from a trunk
//! trusted to assert it, and not toward an untrusted one when the caller asked for
//! `Privacy: id` (RFC 3325).

use anyhow::{ensure, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use trunkline_e2e::*;

const PBX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const CARRIER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// One call from `from` (the access side, or the trusted PBX trunk's address) dialling
/// `number` with `privacy`; returns the INVITE the carrier received.
fn call(
    node: &Node,
    out: &Path,
    name: &str,
    from: Ipv4Addr,
    number: &str,
    privacy: &str,
) -> Result<TracedMessage> {
    let mut carrier = Sipp::uas("uas_basic.xml")
        .name(&format!("{name}_carrier"))
        .local_ip(CARRIER_IP)
        .port(node.config.trunk.port())
        .trace_msg()
        .calls(1)
        .timeout_secs(30)
        .spawn(out)?;
    Sipp::uac("uac_identity.xml", node.sip_addr())
        .name(name)
        .local_ip(from)
        .calls(1)
        .duration_ms(100)
        .timeout_secs(20)
        .arg("-s")
        .arg(number)
        .arg("-key")
        .arg("privacy")
        .arg(privacy)
        .spawn(out)?
        .wait(Duration::from_secs(30))?
        .assert_all_ok(1)?;
    let log = carrier.messages_log();
    carrier.wait(Duration::from_secs(20))?.assert_all_ok(1)?;
    parse_trace(&log)?
        .into_iter()
        .find(|m| !m.sent && m.method() == Some("INVITE"))
        .ok_or_else(|| anyhow::anyhow!("{name}: the carrier got no INVITE"))
}

#[test]
fn numbers_are_rewritten_and_asserted_identity_follows_trust_and_privacy() -> Result<()> {
    let out = out_dir("trunk_identity")?;
    // The carrier (a SIPp callee per call) on the callees' address, at one port.
    let carrier_port = free_port(CARRIER_IP)?;
    let carrier = std::net::SocketAddr::new(CARRIER_IP.into(), carrier_port);
    let cfg = NodeConfig::new(carrier, Transport::Udp)?;
    let toml = cfg.to_toml().replace(
        "[routing]",
        &format!(
            "[[trunks.rewrites]]\ndirection = \"outbound\"\nfield = \"ruri\"\n\
             pattern = '^\\+44(\\d+)$'\nreplace = '0$1'\n\n\
             [[trunks.rewrites]]\ndirection = \"outbound\"\nfield = \"from\"\n\
             pattern = '^alice$'\nreplace = '+442070000001'\n\n\
             [[trunks]]\nname = \"pbx\"\naddress = \"{PBX_IP}:5060\"\n\
             sources = [\"{PBX_IP}/32\"]\ntrusted_identity = true\n\n\
             [[trunks.rewrites]]\ndirection = \"inbound\"\nfield = \"ruri\"\n\
             pattern = '^0(\\d+)$'\nreplace = '+44$1'\n\n\
             [[trunks.rewrites]]\ndirection = \"inbound\"\nfield = \"from\"\n\
             pattern = '^alice$'\nreplace = '+442070000002'\n\n[routing]"
        ),
    );
    let node = Node::start_toml(&cfg, &toml, &out)?;

    // From the access side (not trusted to assert anything), dialling in E.164.
    let inv = call(&node, &out, "access", NODE_IP, "+442071234567", "none")?;
    ensure!(
        inv.text.starts_with("INVITE sip:02071234567@"),
        "outbound Request-URI rule not applied:\n{}",
        inv.text
    );
    let from = inv.header("From").unwrap_or_default();
    let to = inv.header("To").unwrap_or_default();
    ensure!(from.contains("sip:+442070000001@"), "From {from:?}");
    ensure!(to.contains("sip:02071234567@"), "To {to:?}");
    ensure!(
        inv.header("P-Asserted-Identity").is_none(),
        "an identity asserted by an untrusted caller was relayed"
    );

    // From the trusted PBX, dialling nationally: its inbound rule makes it E.164 (which
    // the carrier's outbound rule makes national again); its assertion is relayed.
    let inv = call(&node, &out, "pbx", PBX_IP, "02071234567", "none")?;
    ensure!(
        inv.text.starts_with("INVITE sip:02071234567@"),
        "{}",
        inv.text
    );
    let from = inv.header("From").unwrap_or_default();
    ensure!(from.contains("sip:+442070000002@"), "From {from:?}");
    ensure!(
        inv.header("P-Asserted-Identity") == Some("<sip:+442079999999@pbx.example>"),
        "the trusted trunk's assertion was not relayed:\n{}",
        inv.text
    );

    // Privacy: id toward the untrusted carrier: the assertion is withheld, the request kept.
    let inv = call(&node, &out, "private", PBX_IP, "02071234567", "id")?;
    ensure!(
        inv.header("P-Asserted-Identity").is_none(),
        "Privacy: id was not honoured toward an untrusted trunk:\n{}",
        inv.text
    );
    ensure!(inv.header("Privacy") == Some("id"), "{}", inv.text);
    Ok(())
}
