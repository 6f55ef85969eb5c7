//! CANCEL racing the callee's 200 on calls with media anchored, hundreds of times.
//!
//! The callee answers 180 and 200 back to back; the caller sends CANCEL the moment the
//! 180 arrives. So the CANCEL reaches the node before, during or after the node's relay
//! rewrites the 200's SDP, call after call. Whatever wins, no leg may stay up: the callee
//! gets ACK and BYE for every 200 it sent; the caller gets 200 for its CANCEL (before the
//! 487 when the CANCEL won), or a 200 it ACKs and hangs up; and the node ends with no
//! call, no relay session and no index entry left.
//!
//! Both ends are scripted over UDP here (SIPp's scenarios cannot follow a race with two
//! outcomes per call); the node is the real binary.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use trunkline_e2e::scripted::{cseq_method, method, recv, reply, sdp, summary, wait_for};
use trunkline_e2e::*;

const CALLS: usize = 300;

/// The callee: 180 and 200 at once for every INVITE, 200 retransmitted until ACKed, 200
/// for CANCEL and BYE. Remembers per B-leg Call-ID what it got.
#[derive(Default, Debug, Clone)]
struct CalleeCall {
    answered: bool,
    acked: bool,
    byed: bool,
    ok: String,
    next_retransmit: Option<Instant>,
}

struct Callee {
    sock: UdpSocket,
    calls: HashMap<String, CalleeCall>,
}

impl Callee {
    fn poll(&mut self, node: SocketAddr) -> Result<()> {
        let now = Instant::now();
        for c in self.calls.values_mut() {
            if let Some(at) = c.next_retransmit.filter(|at| *at <= now) {
                self.sock.send_to(c.ok.as_bytes(), node)?;
                c.next_retransmit = Some(at + Duration::from_millis(500));
            }
        }
        let Some((msg, from)) = recv(&self.sock, Duration::from_micros(200)) else {
            return Ok(());
        };
        let me = self.sock.local_addr()?;
        let call_id = header(&msg, "Call-ID", Some("i")).unwrap_or("").to_string();
        match method(&msg) {
            Some("INVITE") => {
                let c = self.calls.entry(call_id.clone()).or_default();
                if !c.answered {
                    let tag = format!("b{}", self.calls.len());
                    self.sock.send_to(
                        reply(&msg, 180, &tag, &me.to_string(), None).as_bytes(),
                        from,
                    )?;
                    let ok = reply(&msg, 200, &tag, &me.to_string(), Some(&sdp(42000)));
                    self.sock.send_to(ok.as_bytes(), from)?;
                    let c = self.calls.entry(call_id).or_default();
                    c.answered = true;
                    c.ok = ok;
                    c.next_retransmit = Some(Instant::now() + Duration::from_millis(500));
                }
            }
            Some("ACK") => {
                let c = self.calls.entry(call_id).or_default();
                c.acked = true;
                c.next_retransmit = None;
            }
            Some("CANCEL") => {
                self.sock.send_to(
                    reply(&msg, 200, "x", &me.to_string(), None).as_bytes(),
                    from,
                )?;
            }
            Some("BYE") => {
                self.sock.send_to(
                    reply(&msg, 200, "x", &me.to_string(), None).as_bytes(),
                    from,
                )?;
                self.calls.entry(call_id).or_default().byed = true;
            }
            _ => {}
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The CANCEL won: 200 for the CANCEL, then 487 for the INVITE.
    Cancelled,
    /// The 200 won: the caller ACKed it and hung up.
    Answered,
}

/// One caller attempt: INVITE, CANCEL on the 180, then whatever the node says.
fn caller(sock: &UdpSocket, node: SocketAddr, callee: &mut Callee, n: usize) -> Result<Outcome> {
    let me = sock.local_addr()?;
    let call_id = format!("race-{n}@127.0.0.1");
    let tag = format!("a{n}");
    let branch = format!("z9hG4bKrace{n}");
    let body = sdp(40000 + 2 * (n as u16 % 500));
    let head = |m: &str, seq: u32, br: &str, to_tag: Option<&str>| {
        let to = match to_tag {
            Some(t) => format!("<sip:+15550100@{node}>;tag={t}"),
            None => format!("<sip:+15550100@{node}>"),
        };
        format!(
            "{m} sip:+15550100@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={br};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag={tag}\r\nTo: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: {seq} {m}\r\nContact: <sip:alice@{me}>\r\n"
        )
    };
    let invite = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        head("INVITE", 1, &branch, None),
        body.len()
    );
    sock.send_to(invite.as_bytes(), node)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cancel_ok_at = None;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        callee.poll(node)?;
        let Some((msg, _)) = recv(sock, Duration::from_micros(200)) else {
            continue;
        };
        let status = status_code(&msg);
        seen.push(format!("{:?} {}", status, cseq_method(&msg)));
        match (status, cseq_method(&msg)) {
            (Some(180), "INVITE") if cancel_ok_at.is_none() => {
                let cancel = format!(
                    "{}Content-Length: 0\r\n\r\n",
                    head("CANCEL", 1, &branch, None)
                );
                sock.send_to(cancel.as_bytes(), node)?;
            }
            (Some(200), "CANCEL") => cancel_ok_at = Some(seen.len()),
            (Some(487), "INVITE") => {
                ensure!(
                    cancel_ok_at.is_some(),
                    "call {n}: 487 before the CANCEL's 200 (RFC 3261 §9.2): {seen:?}"
                );
                let to_tag = header(&msg, "To", Some("t"))
                    .and_then(|t| header_param(t, "tag"))
                    .context("487 without To-tag")?;
                let ack = format!(
                    "{}Content-Length: 0\r\n\r\n",
                    head("ACK", 1, &branch, Some(&to_tag))
                );
                sock.send_to(ack.as_bytes(), node)?;
                return Ok(Outcome::Cancelled);
            }
            (Some(200), "INVITE") => {
                let to_tag = header(&msg, "To", Some("t"))
                    .and_then(|t| header_param(t, "tag"))
                    .context("200 without To-tag")?;
                let ack = format!(
                    "{}Content-Length: 0\r\n\r\n",
                    head("ACK", 1, &format!("{branch}ack"), Some(&to_tag))
                );
                sock.send_to(ack.as_bytes(), node)?;
                let bye = format!(
                    "{}Content-Length: 0\r\n\r\n",
                    head("BYE", 2, &format!("{branch}bye"), Some(&to_tag))
                );
                sock.send_to(bye.as_bytes(), node)?;
                let bye_deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < bye_deadline {
                    callee.poll(node)?;
                    if let Some((m, _)) = recv(sock, Duration::from_micros(200)) {
                        if status_code(&m) == Some(200) && cseq_method(&m) == "BYE" {
                            return Ok(Outcome::Answered);
                        }
                    }
                }
                bail!("call {n}: no 200 for the caller's BYE");
            }
            _ => {}
        }
    }
    bail!("call {n}: no final answer within 10 s; got {seen:?}")
}

#[test]
fn cancel_racing_the_callees_anchored_200_leaves_no_leg_up() -> Result<()> {
    let out = out_dir("races_cancel_vs_200")?;
    let callee_sock = UdpSocket::bind("127.0.0.3:0")?;
    let mut callee = Callee {
        sock: callee_sock,
        calls: HashMap::new(),
    };
    let cfg = NodeConfig::new(callee.sock.local_addr()?, Transport::Udp)?;
    let mut node = Node::start(&cfg, &out)?;
    let caller_sock = UdpSocket::bind("127.0.0.1:0")?;
    let mut outcomes = Vec::new();
    for n in 0..CALLS {
        outcomes.push(caller(&caller_sock, node.sip_addr(), &mut callee, n)?);
    }
    // Let the last BYEs and ACKs through.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        callee.poll(node.sip_addr())?;
    }
    let cancelled = outcomes
        .iter()
        .filter(|o| **o == Outcome::Cancelled)
        .count();
    println!(
        "{CALLS} races: {cancelled} cancelled (487), {} answered",
        CALLS - cancelled
    );
    ensure!(
        callee.calls.len() == CALLS,
        "callee saw {} calls",
        callee.calls.len()
    );
    let up: Vec<_> = callee
        .calls
        .iter()
        .filter(|(_, c)| !(c.acked && c.byed))
        .map(|(id, c)| format!("{id}: {c:?}"))
        .collect();
    ensure!(
        up.is_empty(),
        "{} callee legs not ACKed and hung up:\n{}",
        up.len(),
        up.join("\n")
    );
    let m = node.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_calls_active", &[]) == Some(0.0)
            && m.get("trunkline_media_sessions_active", &[]) == Some(0.0)
    })?;
    ensure!(
        m.value("trunkline_calls_active", &[])? == 0.0
            && m.value("trunkline_media_sessions_active", &[])? == 0.0,
        "calls or relay sessions left up"
    );
    ensure!(
        m.get("trunkline_calls_total", &[("status", "487")])
            .unwrap_or(0.0) as usize
            == cancelled,
        "487s counted as sent"
    );
    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}

/// The caller cancels while the trunk has not answered anything yet. RFC 3261 §9.1 forbids
/// a CANCEL before a provisional, so the node answers the caller's CANCEL with 200 at once
/// (§9.2: before the INVITE's 487), holds its own CANCEL toward the trunk, and sends it the
/// moment the trunk's 100 arrives — this trunk never sends an 18x, so a node that waited
/// for one would send no CANCEL until its 64×T1 give-up. The trunk then ends the INVITE
/// with 487, and nothing of the call is left.
#[test]
fn cancel_before_the_trunks_first_provisional_goes_out_on_its_100() -> Result<()> {
    let out = out_dir("races_cancel_before_100")?;
    let trunk = UdpSocket::bind("127.0.0.3:0")?;
    let trunk_addr = trunk.local_addr()?;
    let cfg = NodeConfig::new(trunk_addr, Transport::Udp)?;
    let mut node = Node::start(&cfg, &out)?;
    let node_addr = node.sip_addr();
    let caller = UdpSocket::bind("127.0.0.2:0")?;
    let me = caller.local_addr()?;
    let branch = "z9hG4bKearlycancel1";
    let head = |m: &str, to_tag: Option<&str>| {
        let to = match to_tag {
            Some(t) => format!("<sip:+15550100@{node_addr}>;tag={t}"),
            None => format!("<sip:+15550100@{node_addr}>"),
        };
        format!(
            "{m} sip:+15550100@{node_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=early1\r\nTo: {to}\r\n\
             Call-ID: early-cancel@127.0.0.2\r\nCSeq: 1 {m}\r\nContact: <sip:alice@{me}>\r\n"
        )
    };
    let body = sdp(40100);
    let invite = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        head("INVITE", None),
        body.len()
    );
    caller.send_to(invite.as_bytes(), node_addr)?;

    let mut at_trunk = Vec::new();
    let (b_invite, node_b) = wait_for(&trunk, Duration::from_secs(5), &mut at_trunk, |m| {
        method(m) == Some("INVITE")
    })
    .context("the trunk got no INVITE")?;
    let mut at_caller = Vec::new();
    wait_for(&caller, Duration::from_secs(5), &mut at_caller, |m| {
        status_code(m) == Some(100)
    })
    .context("the caller got no 100 Trying")?;
    caller.send_to(
        format!("{}Content-Length: 0\r\n\r\n", head("CANCEL", None)).as_bytes(),
        node_addr,
    )?;
    wait_for(&caller, Duration::from_secs(5), &mut at_caller, |m| {
        status_code(m) == Some(200) && cseq_method(m) == "CANCEL"
    })
    .with_context(|| {
        format!(
            "no 200 for the CANCEL; caller got {:?}",
            summary(&at_caller)
        )
    })?;
    ensure!(
        !at_caller.iter().any(|m| status_code(m) == Some(487)),
        "487 before the CANCEL's 200 (RFC 3261 §9.2): {:?}",
        summary(&at_caller)
    );

    // The trunk has sent nothing: for two seconds it may see its INVITE retransmitted,
    // never a CANCEL.
    let early = wait_for(&trunk, Duration::from_secs(2), &mut at_trunk, |m| {
        method(m) == Some("CANCEL")
    });
    ensure!(
        early.is_none(),
        "CANCEL sent to the trunk before any provisional (RFC 3261 §9.1): {:?}",
        summary(&at_trunk)
    );

    // Its 100 releases the CANCEL, for the same transaction as the INVITE.
    trunk.send_to(
        reply(&b_invite, 100, "t1", &trunk_addr.to_string(), None).as_bytes(),
        node_b,
    )?;
    let (cancel, _) = wait_for(&trunk, Duration::from_secs(10), &mut at_trunk, |m| {
        method(m) == Some("CANCEL")
    })
    .with_context(|| {
        format!(
            "no CANCEL after the trunk's 100; trunk got {:?}",
            summary(&at_trunk)
        )
    })?;
    let invite_branch = header(&b_invite, "Via", Some("v")).and_then(|v| header_param(v, "branch"));
    let cancel_branch = header(&cancel, "Via", Some("v")).and_then(|v| header_param(v, "branch"));
    ensure!(
        invite_branch.is_some() && invite_branch == cancel_branch,
        "CANCEL branch {cancel_branch:?} is not the INVITE's {invite_branch:?}"
    );
    ensure!(
        header(&cancel, "Call-ID", Some("i")) == header(&b_invite, "Call-ID", Some("i")),
        "CANCEL for another Call-ID"
    );
    trunk.send_to(
        reply(&cancel, 200, "t1", &trunk_addr.to_string(), None).as_bytes(),
        node_b,
    )?;
    trunk.send_to(
        reply(&b_invite, 487, "t1", &trunk_addr.to_string(), None).as_bytes(),
        node_b,
    )?;
    wait_for(&trunk, Duration::from_secs(5), &mut at_trunk, |m| {
        method(m) == Some("ACK")
    })
    .with_context(|| format!("the trunk's 487 was not ACKed: {:?}", summary(&at_trunk)))?;

    let (final_, _) = wait_for(&caller, Duration::from_secs(5), &mut at_caller, |m| {
        status_code(m).is_some_and(|s| s >= 200) && cseq_method(m) == "INVITE"
    })
    .with_context(|| {
        format!(
            "the caller's INVITE got no final answer: {:?}",
            summary(&at_caller)
        )
    })?;
    ensure!(
        status_code(&final_) == Some(487),
        "caller's INVITE ended with {:?}, not 487",
        status_code(&final_)
    );
    let to_tag = header(&final_, "To", Some("t"))
        .and_then(|t| header_param(t, "tag"))
        .context("487 without To-tag")?;
    caller.send_to(
        format!("{}Content-Length: 0\r\n\r\n", head("ACK", Some(&to_tag))).as_bytes(),
        node_addr,
    )?;

    let m = node.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_calls_active", &[]) == Some(0.0)
            && m.get("trunkline_media_sessions_active", &[]) == Some(0.0)
    })?;
    ensure!(
        m.value("trunkline_calls_active", &[])? == 0.0
            && m.value("trunkline_media_sessions_active", &[])? == 0.0,
        "the cancelled call or its relay session is still up"
    );
    ensure!(
        m.get("trunkline_calls_total", &[("status", "487")]) == Some(1.0),
        "the call was not counted as ended with 487"
    );
    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}
