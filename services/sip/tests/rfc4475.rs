//! RFC 4475 torture tests: every message of the set, with what a border element must
//! do with it (tests/conformance/rfc4475/EXPECTATIONS.tsv in the repository).
//!
//! The table below pins the outcome this stack produces for each file; the test also
//! checks that the table and the TSV name the same files with the same section and
//! class, and that every `.dat` file has a row, so a new case cannot be skipped.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::path::PathBuf;
use trunkline_sip::{
    parse_message, rejection_response, salvage, validate_request, validate_response, HeaderName,
    Message, Method, NameAddr, Policy, Request, Response, Uri,
};

/// What we do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A request that parses and passes validation (processing may still answer
    /// 405/501/401/483, but never 400).
    Process,
    /// A request that parses and is refused with this status.
    Reject(u16),
    /// `parse_message` fails: answered 400 from the salvaged headers, or dropped.
    ParseError,
    /// A response that parses and validates (then goes to transaction matching).
    ResponseOk,
    /// A response that parses but `validate_response` drops.
    ResponseDrop,
}

use Outcome::*;

/// file, RFC 4475 section, class, outcome. The TSV's wording is in the comments.
const TABLE: &[(&str, &str, &str, Outcome)] = &[
    // never 400
    ("wsinv.dat", "3.1.1.1", "valid", Process),
    // 405 or 501 from the dispatcher, never 400
    ("intmeth.dat", "3.1.1.2", "valid", Process),
    ("esc01.dat", "3.1.1.3", "valid", Process),
    ("escnull.dat", "3.1.1.4", "valid", Process),
    // extension method RE%47IST%45R: 405 or 501 from the dispatcher
    ("esc02.dat", "3.1.1.5", "valid", Process),
    ("lwsdisp.dat", "3.1.1.6", "valid", Process),
    ("longreq.dat", "3.1.1.7", "valid", Process),
    // first message only
    ("dblreq.dat", "3.1.1.8", "valid", Process),
    ("semiuri.dat", "3.1.1.9", "valid", Process),
    ("transports.dat", "3.1.1.10", "valid", Process),
    ("mpart01.dat", "3.1.1.11", "valid", Process),
    // no matching transaction -> the transaction layer drops it
    ("unreason.dat", "3.1.1.12", "valid", ResponseOk),
    ("noreason.dat", "3.1.1.13", "valid", ResponseOk),
    // Via `;;,;,,` and Contact `;;;;` do not parse
    ("badinv01.dat", "3.1.2.1", "invalid", Reject(400)),
    // Content-Length 9999 larger than the datagram
    ("clerr.dat", "3.1.2.2", "invalid", ParseError),
    // Content-Length -999
    ("ncl.dat", "3.1.2.3", "invalid", ParseError),
    // CSeq over 2^31-1 (and Max-Forwards 300, Expires 10^100)
    ("scalar02.dat", "3.1.2.4", "invalid", Reject(400)),
    ("scalarlg.dat", "3.1.2.5", "invalid", ResponseDrop),
    ("quotbal.dat", "3.1.2.6", "invalid", Reject(400)),
    ("ltgtruri.dat", "3.1.2.7", "invalid", ParseError),
    ("lwsruri.dat", "3.1.2.8", "invalid", ParseError),
    ("lwsstart.dat", "3.1.2.9", "invalid", ParseError),
    // "400 (or tolerated)": trailing spaces in the request line are refused
    ("trws.dat", "3.1.2.10", "invalid", ParseError),
    ("escruri.dat", "3.1.2.11", "invalid", Reject(400)),
    // "400, or process ignoring the malformed Date": ignored
    ("baddate.dat", "3.1.2.12", "invalid", Process),
    // "400, or treat the parameters as header parameters": 400, an addr-spec may
    // not carry URI headers
    ("regbadct.dat", "3.1.2.13", "invalid", Reject(400)),
    // "400, or tolerate the spaces": tolerated
    ("badaspec.dat", "3.1.2.14", "invalid", Process),
    // The file lacks the blank line ending the headers, so it does not frame; with
    // it, the display names with commas give 400 (checked below).
    ("baddn.dat", "3.1.2.15", "invalid", ParseError),
    ("badvers.dat", "3.1.2.16", "invalid", Reject(505)),
    ("mismatch01.dat", "3.1.2.17", "invalid", Reject(400)),
    // "400 or 501": 400
    ("mismatch02.dat", "3.1.2.18", "invalid", Reject(400)),
    // status over 699 -> drop
    ("bigcode.dat", "3.1.2.19", "invalid", ParseError),
    ("badbranch.dat", "3.2.1", "transaction", Process),
    ("insuf.dat", "3.3.1", "application", Reject(400)),
    ("unkscm.dat", "3.3.2", "application", Reject(416)),
    ("novelsc.dat", "3.3.3", "application", Reject(416)),
    // "4xx; never 5xx"
    ("unksm2.dat", "3.3.4", "application", Reject(416)),
    ("bext01.dat", "3.3.5", "application", Reject(420)),
    ("invut.dat", "3.3.6", "application", Reject(415)),
    // 401 with a Digest challenge is the registrar's answer, not validation's
    ("regaut01.dat", "3.3.7", "application", Process),
    ("multi01.dat", "3.3.8", "application", Reject(400)),
    ("mcl01.dat", "3.3.9", "application", Reject(400)),
    ("bcast.dat", "3.3.10", "application", ResponseDrop),
    // 483 is answered by the forwarding step, a local OPTIONS may get 200
    ("zeromf.dat", "3.3.11", "application", Process),
    ("cparam01.dat", "3.3.12", "application", Process),
    ("cparam02.dat", "3.3.13", "application", Process),
    ("regescrt.dat", "3.3.14", "application", Process),
    ("sdp01.dat", "3.3.15", "application", Reject(406)),
    ("inv2543.dat", "3.4.1", "compat", Process),
];

/// The messages and their TSV live in the repository, two levels above this crate.
fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/rfc4475")
}

fn raw(file: &str) -> Bytes {
    let p = dir().join(file);
    Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

fn request(file: &str) -> Request {
    match parse_message(raw(file)) {
        Ok(Message::Request(r)) => r,
        other => panic!("{file}: expected a request, got {other:?}"),
    }
}

fn response(file: &str) -> Response {
    match parse_message(raw(file)) {
        Ok(Message::Response(r)) => r,
        other => panic!("{file}: expected a response, got {other:?}"),
    }
}

/// The TSV rows: (file, section, class, text).
fn tsv() -> Vec<(String, String, String, String)> {
    let p = dir().join("EXPECTATIONS.tsv");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            assert_eq!(c.len(), 4, "malformed TSV row {l:?}");
            (c[0].into(), c[1].into(), c[2].into(), c[3].into())
        })
        .collect()
}

#[test]
fn table_covers_every_tsv_row_and_dat_file() {
    let rows = tsv();
    let table: BTreeSet<(String, String, String)> = TABLE
        .iter()
        .map(|(f, s, c, _)| (f.to_string(), s.to_string(), c.to_string()))
        .collect();
    assert_eq!(table.len(), TABLE.len(), "duplicate rows in TABLE");
    let from_tsv: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|(f, s, c, _)| (f.clone(), s.clone(), c.clone()))
        .collect();
    assert_eq!(table, from_tsv, "TABLE and EXPECTATIONS.tsv differ");

    let mut dats = BTreeSet::new();
    for e in std::fs::read_dir(dir()).expect("rfc4475 dir") {
        let name = e
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".dat") {
            dats.insert(name);
        }
    }
    let files: BTreeSet<String> = TABLE.iter().map(|r| r.0.to_string()).collect();
    assert_eq!(files, dats, "TABLE and the .dat files differ");
}

/// The outcome class must agree with what the TSV allows for it.
#[test]
fn table_outcomes_are_within_the_tsv_class() {
    for (file, _, class, outcome) in TABLE {
        let ok = match *class {
            "valid" | "compat" | "transaction" => matches!(outcome, Process | ResponseOk),
            "invalid" => !matches!(outcome, ResponseOk),
            "application" => !matches!(outcome, ParseError | ResponseOk),
            other => panic!("unknown class {other}"),
        };
        assert!(ok, "{file}: {outcome:?} is not allowed for class {class}");
        if let Reject(s) = outcome {
            assert!((400..500).contains(s) || *s == 505, "{file}: {s}");
        }
    }
}

#[test]
fn every_message_gets_its_outcome() {
    let policy = Policy::default();
    let mut failures = Vec::new();
    for (file, _, _, want) in TABLE {
        let data = raw(file);
        let got = match parse_message(data.clone()) {
            Err(_) => {
                // A broken request is still answered 400 when the headers needed to
                // address the response survive; salvage must never panic.
                if let Some(s) = salvage(&data) {
                    if s.is_request {
                        assert!(
                            s.headers.count(HeaderName::Via) > 0,
                            "{file}: no Via salvaged"
                        );
                    }
                }
                ParseError
            }
            Ok(Message::Request(r)) => match validate_request(&r, &policy) {
                Ok(()) => Process,
                Err(rej) => {
                    let resp = rejection_response(&r, &rej);
                    assert_eq!(resp.status, rej.status);
                    let again = parse_message(resp.encode()).expect("rejection re-parses");
                    assert_eq!(again.headers().call_id(), r.headers.call_id(), "{file}");
                    Reject(rej.status)
                }
            },
            Ok(Message::Response(r)) => match validate_response(&r) {
                Ok(()) => ResponseOk,
                Err(_) => ResponseDrop,
            },
        };
        if got != *want {
            failures.push(format!("{file}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parsed_messages_survive_encode_and_reparse() {
    for (file, ..) in TABLE {
        let Ok(m) = parse_message(raw(file)) else {
            continue;
        };
        let again = parse_message(m.encode()).unwrap_or_else(|e| panic!("{file}: {e}"));
        match (&m, &again) {
            (Message::Request(a), Message::Request(b)) => {
                assert_eq!(a.method, b.method, "{file}");
                assert_eq!(a.uri, b.uri, "{file}");
                assert_eq!(a.body, b.body, "{file}");
            }
            (Message::Response(a), Message::Response(b)) => {
                assert_eq!(a.status, b.status, "{file}");
                assert_eq!(a.body, b.body, "{file}");
            }
            _ => panic!("{file}: kind changed"),
        }
        let names = |m: &Message| {
            m.headers()
                .iter()
                .filter(|h| h.kind != HeaderName::ContentLength)
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&m), names(&again), "{file}");
    }
}

#[test]
fn wsinv_keeps_values_and_vias() {
    let r = request("wsinv.dat");
    assert_eq!(r.method, Method::Invite);
    assert_eq!(
        r.headers
            .get_named("UnknownHeaderWithUnusualValue")
            .map(|v| &v[..]),
        Some(&b";;,,;;,;"[..])
    );
    assert_eq!(
        r.headers.get_named("NewFangledHeader").map(|v| &v[..]),
        Some(&b"newfangled value continued newfangled value"[..])
    );
    let vias = r.headers.vias().expect("vias parse");
    let got: Vec<(String, String, Option<&str>)> = vias
        .iter()
        .map(|v| (v.transport.to_string(), v.host.to_string(), v.branch()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("UDP".into(), "192.0.2.2".into(), Some("390skdjuw")),
            (
                "TCP".into(),
                "spindle.example.com".into(),
                Some("z9hG4bK9ikj8")
            ),
            ("UDP".into(), "192.168.255.111".into(), Some("z9hG4bK30239")),
        ]
    );
    assert_eq!(r.headers.cseq().map(|c| c.seq), Some(9));
    assert_eq!(r.headers.max_forwards(), Some(68));
    assert_eq!(
        r.headers
            .to_addr()
            .and_then(|t| t.tag().map(String::from))
            .as_deref(),
        Some("1918181833n")
    );
    assert_eq!(
        r.headers
            .from_addr()
            .and_then(|t| t.tag().map(String::from))
            .as_deref(),
        Some("98asjd8")
    );
    let c = r.headers.contact().expect("contact");
    assert_eq!(c.param("q"), Some(Some("0.33")));
    assert_eq!(c.param("newparam"), Some(Some("newvalue")));
    assert_eq!(c.param("secondparam"), Some(None));
    assert_eq!(r.body.len(), 150);
}

#[test]
fn intmeth_and_esc02_are_extension_methods() {
    let r = request("intmeth.dat");
    assert_eq!(
        r.method,
        Method::Extension("!interesting-Method0123456789_*+`.%indeed'~".into())
    );
    assert_eq!(r.headers.cseq().map(|c| c.method), Some(r.method.clone()));
    // The UTF-8 value of the extension header, byte for byte as in the file.
    let data = raw("intmeth.dat");
    let line = data
        .split(|c| *c == b'\n')
        .find(|l| l.starts_with(b"extensionHeader-"))
        .expect("line in file");
    let colon = line.iter().position(|c| *c == b':').expect("colon");
    let want = line[colon + 1..].strip_suffix(b"\r").expect("CRLF");
    assert_eq!(
        r.headers
            .get_named("extensionHeader-!.%*+_`'~")
            .map(|v| &v[..]),
        Some(want)
    );
    assert!(std::str::from_utf8(want).is_ok_and(|s| s.starts_with('\u{FEFF}')));
    let r = request("esc02.dat");
    assert_eq!(r.method, Method::Extension("RE%47IST%45R".into()));
    assert_ne!(r.method, Method::Register);
    // C%6Fntact is an unknown header, not a third Contact.
    assert_eq!(r.headers.count(HeaderName::Contact), 2);
    assert!(r.headers.get_named("C%6Fntact").is_some());
}

#[test]
fn dblreq_parses_the_first_message_only() {
    let r = request("dblreq.dat");
    assert_eq!(r.method, Method::Register);
    assert!(r.body.is_empty());
    assert_eq!(
        r.headers.call_id().map(|c| &c[..]),
        Some(&b"dblreq.0ha0isndaksdj99sdfafnl3lk233412"[..])
    );
}

#[test]
fn transports_keeps_unknown_transports() {
    let r = request("transports.dat");
    let t: Vec<String> = r
        .headers
        .vias()
        .expect("vias")
        .into_iter()
        .map(|v| v.transport.into_string())
        .collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
}

#[test]
fn mpart01_body_is_intact() {
    let r = request("mpart01.dat");
    let cl: usize = std::str::from_utf8(r.headers.get(HeaderName::ContentLength).expect("l"))
        .expect("ascii")
        .parse()
        .expect("number");
    assert_eq!(r.body.len(), cl);
    let data = raw("mpart01.dat");
    assert_eq!(&data[data.len() - cl..], &r.body[..]);
    assert!(r.body.starts_with(b"--7a9cbec02ceef655\r\n"));
    assert!(r.body.ends_with(b"--7a9cbec02ceef655--\r\n"));
    assert_eq!(r.headers.content_type().as_deref(), Some("multipart/mixed"));
}

#[test]
fn escnull_keeps_escaped_nul() {
    let r = request("escnull.dat");
    let user = |n: &NameAddr| n.uri.as_sip().and_then(|u| u.user.clone());
    assert_eq!(
        r.headers.to_addr().as_ref().and_then(user).as_deref(),
        Some("null-%00-null")
    );
    let contacts = r.headers.name_addrs(HeaderName::Contact).expect("contacts");
    let users: Vec<Option<String>> = contacts.iter().map(user).collect();
    assert_eq!(users, [Some("%00".to_string()), Some("%00%00".to_string())]);
}

#[test]
fn esc01_keeps_escapes() {
    let r = request("esc01.dat");
    let Uri::Sip(u) = &r.uri else {
        panic!("sip uri")
    };
    assert_eq!(u.user.as_deref(), Some("sips%3Auser%40example.com"));
    let c = r.headers.contact().expect("contact");
    let cu = c.uri.as_sip().expect("sip");
    assert_eq!(cu.user.as_deref(), Some("cal%6Cer"));
    assert_eq!(cu.param("n%61me"), Some(Some("v%61lue%25%34%31")));
}

#[test]
fn longreq_keeps_long_values() {
    let r = request("longreq.dat");
    let to = r.headers.to_addr().expect("to");
    assert!(to.display.as_deref().is_some_and(|d| d.len() > 100));
    let from = r.headers.from_addr().expect("from");
    assert!(from.tag().is_some_and(|t| t.len() > 100));
    assert!(r.headers.call_id().is_some_and(|c| c.len() > 100));
    let vias = r.headers.vias().expect("vias");
    assert_eq!(vias.len(), 34);
    assert_eq!(vias[0].host.to_string(), "sip33.example.com");
    let last = &vias[33];
    assert_eq!(last.param("received"), Some(Some("192.0.2.5")));
    assert!(last.branch().is_some_and(|b| b.len() > 100));
    let long_name = r
        .headers
        .iter()
        .find(|h| h.name.starts_with(b"Unknown-LongLong"))
        .expect("long unknown header");
    assert!(long_name.name.len() > 80 && long_name.value.len() > 200);
    assert_eq!(r.body.len(), 150);
}

#[test]
fn contact_parameters_land_where_they_belong() {
    // cparam01: addr-spec, so `;unknownparam` is a header parameter.
    let c = request("cparam01.dat").headers.contact().expect("contact");
    assert!(c.uri.as_sip().expect("sip").params.is_empty());
    assert_eq!(c.param("unknownparam"), Some(None));
    // cparam02: inside <>, so it stays a URI parameter.
    let c = request("cparam02.dat").headers.contact().expect("contact");
    assert_eq!(
        c.uri.as_sip().expect("sip").param("unknownparam"),
        Some(None)
    );
    assert!(c.params.is_empty());
    // regescrt: the escaped header stays in the Contact URI.
    let c = request("regescrt.dat").headers.contact().expect("contact");
    assert_eq!(
        c.uri.as_sip().expect("sip").headers.as_deref(),
        Some("Route=%3Csip:sip.example.com%3E")
    );
}

#[test]
fn rfc2543_and_cookie_only_branches_are_processed() {
    let r = request("inv2543.dat");
    let via = r.headers.top_via().expect("via");
    assert_eq!(via.branch(), None);
    assert!(!via.has_rfc3261_branch());
    assert!(r.headers.max_forwards().is_none());
    assert!(r.body.starts_with(b"v=0"));
    let r = request("badbranch.dat");
    assert_eq!(
        r.headers
            .top_via()
            .and_then(|v| v.branch().map(String::from))
            .as_deref(),
        Some("z9hG4bK")
    );
    assert!(!r.headers.top_via().expect("via").has_rfc3261_branch());
}

#[test]
fn responses_keep_their_reason_phrases() {
    let r = response("unreason.dat");
    assert_eq!(r.status, 200);
    let reason = std::str::from_utf8(&r.reason).expect("UTF-8 reason");
    assert!(reason.starts_with("= 2**3 * 5**2 "));
    let r = response("noreason.dat");
    assert_eq!(r.status, 100);
    assert!(r.reason.is_empty());
}

#[test]
fn baddn_with_its_missing_blank_line_is_a_400() {
    let mut data = raw("baddn.dat").to_vec();
    data.extend_from_slice(b"\r\n");
    let Ok(Message::Request(r)) = parse_message(Bytes::from(data)) else {
        panic!("baddn with CRLFCRLF should frame")
    };
    let rej = validate_request(&r, &Policy::default()).expect_err("display names with commas");
    assert_eq!(rej.status, 400);
}

#[test]
fn rejections_carry_the_headers_their_status_needs() {
    let policy = Policy::default();
    let r = request("bext01.dat");
    let rej = validate_request(&r, &policy).expect_err("420");
    let resp = rejection_response(&r, &rej);
    assert_eq!(
        resp.headers.get(HeaderName::Unsupported).map(|v| &v[..]),
        Some(
            &b"nothingSupportsThis, nothingSupportsThisEither, noProxiesSupportThis, norDoAnyProxiesSupportThis"[..]
        )
    );
    let r = request("invut.dat");
    let resp = rejection_response(&r, &validate_request(&r, &policy).expect_err("415"));
    assert_eq!(
        resp.headers.get(HeaderName::Accept).map(|v| &v[..]),
        Some(&b"application/sdp, multipart/mixed"[..])
    );
    assert_eq!(resp.headers.count(HeaderName::Via), 1);
    assert_eq!(resp.headers.cseq(), r.headers.cseq());
    // 505 for SIP/7.0 and the reason phrase says so.
    let r = request("badvers.dat");
    assert_eq!(
        validate_request(&r, &policy).map_err(|e| e.reason),
        Err("Version Not Supported")
    );
}

#[test]
fn bext01_as_ack_or_cancel_is_not_refused_for_extensions() {
    let mut r = request("bext01.dat");
    for m in [Method::Ack, Method::Cancel] {
        r.method = m.clone();
        r.headers.set(HeaderName::CSeq, format!("8 {m}"));
        assert_eq!(validate_request(&r, &Policy::default()), Ok(()));
    }
}
