//! RFC 4475 torture messages sent raw to the node over UDP, judged against
//! tests/conformance/rfc4475/EXPECTATIONS.tsv; afterwards the node must still carry calls.

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::Duration;
use trunkline_e2e::*;

/// What the node may answer, transcribed from the TSV's last column.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Any answer but 400 (including none).
    Not400,
    /// The first non-100 response has one of these codes; `drop_ok`: no response is fine too.
    Codes(&'static [u16], bool),
    /// One of `codes`, or forwarded (a provisional/2xx relayed from the callee).
    CodesOrForwarded(&'static [u16]),
    /// Any 4xx.
    Any4xx,
    /// Nothing at all comes back.
    Drop,
    /// Anything (the TSV tolerates both outcomes); the node must survive.
    Any,
    /// Not 400, and every response answers the first message of the datagram only.
    FirstOnly,
}

use Expect::*;

const TABLE: &[(&str, Expect)] = &[
    ("wsinv.dat", Not400),
    ("intmeth.dat", Codes(&[405, 501], false)),
    ("esc01.dat", Not400),
    ("escnull.dat", Not400),
    ("esc02.dat", Codes(&[405, 501], false)),
    ("lwsdisp.dat", Not400),
    ("longreq.dat", Not400),
    ("dblreq.dat", FirstOnly),
    ("semiuri.dat", Not400),
    ("transports.dat", Not400),
    ("mpart01.dat", Not400),
    ("unreason.dat", Drop),
    ("noreason.dat", Drop),
    ("badinv01.dat", Codes(&[400], true)),
    ("clerr.dat", Codes(&[400], true)),
    ("ncl.dat", Codes(&[400], true)),
    ("scalar02.dat", Codes(&[400], false)),
    ("scalarlg.dat", Drop),
    ("quotbal.dat", Codes(&[400], false)),
    ("ltgtruri.dat", Codes(&[400], false)),
    ("lwsruri.dat", Codes(&[400], false)),
    ("lwsstart.dat", Codes(&[400], false)),
    ("trws.dat", Any),
    ("escruri.dat", Codes(&[400], false)),
    ("baddate.dat", Any),
    ("regbadct.dat", Any),
    ("badaspec.dat", Any),
    ("baddn.dat", Codes(&[400], false)),
    ("badvers.dat", Codes(&[505], false)),
    ("mismatch01.dat", Codes(&[400], false)),
    ("mismatch02.dat", Codes(&[400, 501], false)),
    ("bigcode.dat", Drop),
    ("badbranch.dat", Not400),
    ("insuf.dat", Codes(&[400], false)),
    ("unkscm.dat", Codes(&[416], false)),
    ("novelsc.dat", Codes(&[416], false)),
    ("unksm2.dat", Any4xx),
    ("bext01.dat", Codes(&[420], false)),
    ("invut.dat", CodesOrForwarded(&[415])),
    ("regaut01.dat", Codes(&[401], false)),
    ("multi01.dat", Codes(&[400], false)),
    ("mcl01.dat", Codes(&[400], false)),
    ("bcast.dat", Drop),
    ("zeromf.dat", Codes(&[483, 200], false)),
    ("cparam01.dat", Not400),
    ("cparam02.dat", Not400),
    ("regescrt.dat", Not400),
    ("sdp01.dat", CodesOrForwarded(&[406])),
    ("inv2543.dat", Not400),
];

fn judge(file: &str, expect: Expect, first_line: &str, answers: &[String]) -> Option<String> {
    let codes: Vec<u16> = answers.iter().filter_map(|a| status_code(a)).collect();
    let first = codes.iter().copied().find(|c| *c != 100);
    let bad = |why: String| Some(format!("{file} ({first_line}): {why}; got {codes:?}"));
    match expect {
        Not400 | Any4xx | FirstOnly if codes.contains(&400) => bad("must never be 400".into()),
        Not400 => None,
        Any => None,
        Drop if !answers.is_empty() => bad("must be dropped silently".into()),
        Drop => None,
        Any4xx => match first {
            Some(c) if (400..500).contains(&c) => None,
            _ => bad("want a 4xx".into()),
        },
        Codes(_, true) if first.is_none() => None,
        Codes(want, _) => match first {
            Some(c) if want.contains(&c) => None,
            _ => bad(format!("want one of {want:?}")),
        },
        CodesOrForwarded(want) => match first {
            Some(c) if want.contains(&c) || (101..300).contains(&c) => None,
            _ => bad(format!("want one of {want:?} or the call forwarded")),
        },
        FirstOnly => {
            let foreign = answers
                .iter()
                .filter(|a| !header(a, "CSeq", None).is_some_and(|c| c.ends_with("REGISTER")))
                .count();
            (foreign > 0).then(|| {
                format!("{file}: {foreign} responses answer the second message in the datagram")
            })
        }
    }
}

#[test]
fn rfc4475_torture_messages() -> Result<()> {
    let dir = conformance_dir().join("rfc4475");
    let tsv = std::fs::read_to_string(dir.join("EXPECTATIONS.tsv"))
        .with_context(|| format!("reading {}", dir.display()))?;
    let in_tsv: BTreeSet<&str> = tsv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split('\t').next())
        .collect();
    let in_table: BTreeSet<&str> = TABLE.iter().map(|(f, _)| *f).collect();
    ensure!(
        in_tsv == in_table,
        "EXPECTATIONS.tsv and this test's table differ: only in TSV {:?}, only here {:?}",
        in_tsv.difference(&in_table).collect::<Vec<_>>(),
        in_table.difference(&in_tsv).collect::<Vec<_>>()
    );

    let out = out_dir("rfc4475")?;
    // The trunk's callee answers INVITEs, so "process as an ordinary INVITE" can complete.
    let uas = Sipp::uas("uas_basic.xml").timeout_secs(600);
    let (mut node, _server) = node_with_callee(&out, uas, Transport::Udp, |_| {})?;

    let mut failures = Vec::new();
    let mut report = String::new();
    // Earlier INVITEs become calls whose answers the node keeps retransmitting to the same
    // port; answers carrying an earlier message's Call-ID are not about the current one.
    let mut earlier_call_ids: Vec<String> = Vec::new();
    for (file, expect) in TABLE {
        let bytes = std::fs::read(dir.join(file)).with_context(|| format!("reading {file}"))?;
        // The node answers at the packet's source (rport behaviour for every UDP client),
        // whatever port the message's own Via names.
        let sock = UdpSocket::bind((NODE_IP, 0))
            .with_context(|| format!("{file}: binding a socket to receive the answer"))?;
        sock.send_to(&bytes, node.sip_addr())?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let call_id = header(&text, "Call-ID", Some("i")).map(str::to_string);
        let answers: Vec<String> = collect_udp(&sock, Duration::from_millis(1200), false)?
            .into_iter()
            .filter(|a| {
                let id = header(a, "Call-ID", Some("i"));
                id.is_none()
                    || id == call_id.as_deref()
                    || !earlier_call_ids.iter().any(|e| Some(e.as_str()) == id)
            })
            .collect();
        earlier_call_ids.extend(call_id);
        let first_line = String::from_utf8_lossy(&bytes)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect::<String>();
        let codes: Vec<u16> = answers.iter().filter_map(|a| status_code(a)).collect();
        report.push_str(&format!("{file}\t{expect:?}\t{codes:?}\n"));
        failures.extend(judge(file, *expect, &first_line, &answers));
        if !node.is_alive() {
            bail!("node died on {file}; log tail:\n{}", tail(&node.log, 40));
        }
    }
    std::fs::write(out.join("results.tsv"), &report)?;
    ensure!(
        failures.is_empty(),
        "{} of {} torture messages mishandled:\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n")
    );

    // Still carrying calls afterwards (a second callee, counted this time).
    node.assert_healthy()?;
    let mut caller = Sipp::uac("uac_basic.xml", node.sip_addr())
        .calls(100)
        .rate(50)
        .duration_ms(200)
        .timeout_secs(90)
        .spawn(&out)?;
    caller.wait(Duration::from_secs(120))?.assert_all_ok(100)?;
    ensure!(
        node.is_alive(),
        "node died; log tail:\n{}",
        tail(&node.log, 40)
    );
    Ok(())
}
