//! Property tests: whatever the parser accepts serialises back to the same bytes
//! (generated bodies with random lines and line ends, mutations of them, and plain
//! random bytes), and the anchoring rewrite always yields SDP that parses, bumps the
//! version exactly once when it changes something, and is idempotent.

use std::net::IpAddr;

use proptest::prelude::*;
use trunkline_sdp::{parse, AnchorOptions, MediaPlan};

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\r\n"), Just("\n")]
}

/// Any value bytes RFC 8866 allows in a line: everything but NUL, CR and LF
/// (including non-UTF-8).
fn raw_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no NUL/CR/LF", |b| ![0, b'\r', b'\n'].contains(b)),
        0..24,
    )
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9/._+-]{1,8}"
}

/// Lines the rewrite looks at, so that it meets them in every position.
fn known_line() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        "c=IN IP4 198.51.100.1",
        "c=IN IP4 0.0.0.0",
        "c=IN IP6 2001:db8::10",
        "c=IN IP4 host.example.com",
        "c=IN IP4 233.252.0.1/127",
        "a=rtcp:5001",
        "a=rtcp:5001 IN IP4 192.0.2.1",
        "a=rtcp:5001 IN IP4 0.0.0.0",
        "a=rtcp:junk",
        "a=rtcp",
        "a=rtcp-mux",
        "a=candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789abcdefghijkl",
        "a=ice-lite",
        "a=end-of-candidates",
        "a=sendrecv",
        "a=sendonly",
        "a=recvonly",
        "a=inactive",
        "a=rtpmap:0 PCMU/8000",
        "a=fmtp:101 0-15",
        "a=ssrc:1 cname:x",
        "i=title",
        "b=AS:64",
        "k=prompt",
        "a=x-foo",
    ])
    .prop_map(|s| s.as_bytes().to_vec())
}

/// Any line that is not v=, o=, s= or m= (those have their own rules).
fn other_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => known_line(),
        2 => (
            prop::sample::select(
                ('a'..='z')
                    .chain('A'..='Z')
                    .filter(|c| !"vosm".contains(*c))
                    .collect::<Vec<char>>()
            ),
            raw_value()
        )
            .prop_map(|(k, v)| {
                let mut l = vec![k as u8, b'='];
                l.extend(v);
                l
            }),
    ]
}

fn origin() -> impl Strategy<Value = Vec<u8>> {
    (
        token(),
        "[0-9]{1,20}",
        "[0-9]{1,22}",
        prop::sample::select(vec![
            "IN IP4 198.51.100.1",
            "IN IP6 2001:db8::1",
            "IN IP4 host.example.com",
        ]),
    )
        .prop_map(|(u, id, ver, addr)| format!("o={u} {id} {ver} {addr}").into_bytes())
}

fn m_line() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["audio", "video", "application", "text", "x-foo"]),
        prop_oneof![Just(0u16), any::<u16>()],
        proptest::option::of(1u16..4),
        prop::sample::select(vec!["RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", "udp"]),
        prop::collection::vec("[0-9]{1,3}|[a-z]{1,6}", 0..5),
        prop::sample::select(vec![" ", "  "]),
    )
        .prop_map(|(kind, port, count, proto, fmts, sep)| {
            let mut s = format!("m={kind}{sep}{port}");
            if let Some(c) = count {
                s.push_str(&format!("/{c}"));
            }
            s.push(' ');
            s.push_str(proto);
            for f in fmts {
                s.push(' ');
                s.push_str(&f);
            }
            s.into_bytes()
        })
}

/// A whole body: lines in a valid structure, each with its own line end; the last
/// line maybe unterminated, maybe followed by blank lines.
fn sdp_body() -> impl Strategy<Value = Vec<u8>> {
    let session = (
        origin(),
        raw_value(),
        prop::collection::vec(other_line(), 0..6),
    );
    let media = prop::collection::vec((m_line(), prop::collection::vec(other_line(), 0..7)), 0..4);
    (session, media, prop::collection::vec(eol(), 64), 0..4usize).prop_map(
        |((o, s, session_lines), media, eols, ending)| {
            let mut lines: Vec<Vec<u8>> = vec![b"v=0".to_vec(), o];
            let mut sl = b"s=".to_vec();
            sl.extend(s);
            lines.push(sl);
            lines.extend(session_lines);
            for (m, ls) in media {
                lines.push(m);
                lines.extend(ls);
            }
            let mut out = Vec::new();
            let n = lines.len();
            for (i, l) in lines.into_iter().enumerate() {
                out.extend(l);
                if i + 1 < n || ending != 0 {
                    out.extend(eols[i % eols.len()].as_bytes());
                }
            }
            match ending {
                2 => out.extend(b"\r\n"),
                3 => out.extend(b"\n\r\n"),
                _ => {}
            }
            out
        },
    )
}

fn options() -> impl Strategy<Value = AnchorOptions> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c, d)| {
        AnchorOptions {
            keep_ice: a,
            replace_origin: b,
            replace_session_connection: c,
            add_rtcp_attribute: d,
        }
    })
}

fn relay_address() -> impl Strategy<Value = IpAddr> {
    prop::sample::select(vec![
        "203.0.113.1"
            .parse::<IpAddr>()
            .unwrap_or(IpAddr::from([203, 0, 113, 1])),
        "2001:db8::1"
            .parse::<IpAddr>()
            .unwrap_or(IpAddr::from([0u16; 8])),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_bodies_round_trip(body in sdp_body()) {
        let sdp = parse(&body).map_err(|e| TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(&body))))?;
        prop_assert_eq!(sdp.to_bytes(), body);
    }

    #[test]
    fn mutated_bodies_round_trip_when_accepted(
        body in sdp_body(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let mut data = body;
        for (at, byte, op) in edits {
            let i = at.index(data.len() + 1);
            match op {
                0 => data.insert(i, byte),
                1 if i < data.len() => { data.remove(i); }
                _ if i < data.len() => data[i] = byte,
                _ => data.push(byte),
            }
        }
        if let Ok(sdp) = parse(&data) {
            prop_assert_eq!(sdp.to_bytes(), data);
        }
    }

    #[test]
    fn random_bytes_round_trip_when_accepted(
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(any::<u8>(), 0..200).prop_map(|mut v| {
                let mut d = b"v=0\no=- 1 1 IN IP4 a\ns=".to_vec();
                d.append(&mut v);
                d
            }),
        ]
    ) {
        if let Ok(sdp) = parse(&data) {
            prop_assert_eq!(sdp.to_bytes(), data);
        }
    }

    #[test]
    fn anchoring_is_valid_counted_and_idempotent(
        body in sdp_body(),
        opts in options(),
        address in relay_address(),
        mux in any::<bool>(),
    ) {
        let mut sdp = parse(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let media = sdp.media();
        let plans: Vec<MediaPlan> = media
            .iter()
            .filter(|m| !m.rejected)
            .map(|m| {
                let rtp = 30000 + 2 * m.index as u16;
                MediaPlan { index: m.index, address, rtp_port: rtp, rtcp_port: if mux { rtp } else { rtp + 1 }, rtcp_mux: mux }
            })
            .collect();
        let before_bytes = sdp.to_bytes();
        let version = sdp.origin_version();
        let changed = sdp.anchor(&plans, &opts);
        let out = sdp.to_bytes();
        prop_assert_eq!(changed, out != before_bytes);
        if changed {
            // The version is only readable as u64 if it fits; when it does, +1.
            if let (Some(v), Some(w)) = (version, sdp.origin_version()) {
                prop_assert_eq!(w, v + 1);
            }
        } else {
            prop_assert_eq!(sdp.origin_version(), version);
        }
        let mut again = parse(&out).map_err(|e| TestCaseError::fail(format!("output does not parse: {e}\n{}", String::from_utf8_lossy(&out))))?;
        prop_assert_eq!(again.to_bytes(), out.clone());
        let after = again.media();
        prop_assert_eq!(after.len(), media.len());
        for (a, b) in media.iter().zip(&after) {
            prop_assert_eq!(a.rejected, b.rejected);
            prop_assert_eq!(&a.kind, &b.kind);
            prop_assert_eq!(&a.direction, &b.direction);
            if a.rejected {
                continue;
            }
            let plan = plans.iter().find(|p| p.index == a.index);
            prop_assert_eq!(Some(b.port), plan.map(|p| p.rtp_port));
            prop_assert_eq!(b.rtcp_mux, mux);
            if !opts.keep_ice {
                prop_assert!(!b.has_ice);
            }
            if a.hold_zero_address {
                prop_assert!(b.hold_zero_address);
            } else {
                prop_assert_eq!(b.connection, Some(address));
            }
        }
        prop_assert!(!again.anchor(&plans, &opts), "second anchor changed:\n{}", String::from_utf8_lossy(&again.to_bytes()));
        prop_assert_eq!(again.to_bytes(), out);
    }
}
