//! Property tests: generated messages parse, and encoding then re-parsing keeps the
//! start line, the headers (in order, values unfolded) and the body; and any bytes
//! the parser accepts encode to bytes it accepts again.

use bytes::Bytes;
use proptest::prelude::*;
use trunkline_sip::{parse_message, HeaderName, Message};

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "OPTIONS",
            "REGISTER",
            "PRACK",
            "SUBSCRIBE",
            "NOTIFY",
            "PUBLISH",
            "INFO",
            "REFER",
            "MESSAGE",
            "UPDATE",
        ])
        .prop_map(String::from),
        "[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,11}",
    ]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}(\\.[a-z][a-z0-9]{0,6}){0,3}",
        any::<[u8; 4]>().prop_map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])),
        any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
    ]
}

fn uri() -> impl Strategy<Value = String> {
    let sip = (
        prop::sample::select(vec!["sip", "sips"]),
        proptest::option::of("[a-zA-Z0-9_.!~*'()%+-]{1,10}"),
        host(),
        proptest::option::of(1u16..),
        prop::collection::vec(
            (
                "[a-z][a-z0-9-]{0,6}",
                proptest::option::of("[a-zA-Z0-9.%-]{1,8}"),
            ),
            0..4,
        ),
        proptest::option::of("[a-zA-Z]{1,6}=[a-z0-9]{1,6}"),
    )
        .prop_map(|(scheme, user, host, port, params, headers)| {
            let mut s = format!("{scheme}:");
            if let Some(u) = user {
                s.push_str(&u);
                s.push('@');
            }
            s.push_str(&host);
            if let Some(p) = port {
                s.push_str(&format!(":{p}"));
            }
            for (n, v) in params {
                s.push(';');
                s.push_str(&n);
                if let Some(v) = v {
                    s.push('=');
                    s.push_str(&v);
                }
            }
            if let Some(h) = headers {
                s.push('?');
                s.push_str(&h);
            }
            s
        });
    prop_oneof![4 => sip, 1 => "tel:\\+?[0-9]{3,12}(;[a-z]{1,5}=[a-z0-9]{1,5})?"]
}

/// A header name: known long forms, compact forms (case mixed) and extensions.
/// Content-Length is left out: the encoder rewrites it.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "Via",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Contact",
            "Max-Forwards",
            "Content-Type",
            "Route",
            "Record-Route",
            "Require",
            "Supported",
            "Accept",
            "Expires",
            "Subject",
            "v",
            "V",
            "f",
            "t",
            "i",
            "I",
            "m",
            "c",
            "e",
            "k",
            "s",
            "o",
            "r",
            "cSeQ",
            "VIA",
        ])
        .prop_map(String::from),
        "X-[A-Za-z0-9.!%*_+`'~-]{1,12}",
    ]
}

/// One generated header line: name, optional space before the colon, the words
/// of its value and the separator before each word after the first (a space or a fold).
#[derive(Debug, Clone)]
struct GenHeader {
    name: String,
    space_before_colon: bool,
    words: Vec<String>,
    seps: Vec<&'static str>,
}

impl GenHeader {
    fn wire(&self) -> String {
        let mut s = self.name.clone();
        if self.space_before_colon {
            s.push(' ');
        }
        s.push(':');
        for (i, w) in self.words.iter().enumerate() {
            s.push_str(if i == 0 { " " } else { self.seps[i - 1] });
            s.push_str(w);
        }
        s.push_str("\r\n");
        s
    }

    /// The value after unfolding: one space wherever a space or a fold was.
    fn value(&self) -> String {
        self.words.join(" ")
    }
}

fn header() -> impl Strategy<Value = GenHeader> {
    (
        header_name(),
        any::<bool>(),
        prop::collection::vec("[A-Za-z0-9;=.@<>:/_\",'()?*+-]{1,10}", 0..5),
        prop::collection::vec(
            prop::sample::select(vec![" ", " ", "\r\n ", "\r\n\t", "\r\n   "]),
            4,
        ),
    )
        .prop_map(|(name, space_before_colon, words, seps)| GenHeader {
            name,
            space_before_colon,
            words,
            seps,
        })
}

#[derive(Debug, Clone)]
enum StartLine {
    Request { method: String, uri: String },
    Response { status: u16, reason: String },
}

fn start_line() -> impl Strategy<Value = StartLine> {
    prop_oneof![
        3 => (method(), uri()).prop_map(|(method, uri)| StartLine::Request { method, uri }),
        1 => (100u16..700, "[A-Za-z0-9 .,'-]{0,20}")
            .prop_map(|(status, reason)| StartLine::Response { status, reason }),
    ]
}

impl StartLine {
    fn wire(&self) -> String {
        match self {
            StartLine::Request { method, uri } => format!("{method} {uri} SIP/2.0\r\n"),
            StartLine::Response { status, reason } => format!("SIP/2.0 {status} {reason}\r\n"),
        }
    }
}

/// How the body is framed: Content-Length (long or compact form) or not at all.
fn framing() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(Some("Content-Length")),
        Just(Some("l")),
        Just(Some("content-LENGTH")),
        Just(None)
    ]
}

fn headers_of(m: &Message) -> Vec<(Bytes, Bytes)> {
    m.headers()
        .iter()
        .filter(|h| h.kind != HeaderName::ContentLength)
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

/// The message is equal to its re-parsed encoding in every part that matters.
fn assert_same(a: &Message, b: &Message) -> Result<(), TestCaseError> {
    match (a, b) {
        (Message::Request(x), Message::Request(y)) => {
            prop_assert_eq!(&x.method, &y.method);
            prop_assert_eq!(&x.uri, &y.uri);
            prop_assert_eq!(&x.version, &y.version);
            prop_assert_eq!(&x.body, &y.body);
        }
        (Message::Response(x), Message::Response(y)) => {
            prop_assert_eq!(x.status, y.status);
            prop_assert_eq!(&x.reason, &y.reason);
            prop_assert_eq!(&x.body, &y.body);
        }
        _ => prop_assert!(false, "message kind changed"),
    }
    prop_assert_eq!(headers_of(a), headers_of(b));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_messages_round_trip(
        leading_crlfs in 0usize..3,
        start in start_line(),
        headers in prop::collection::vec(header(), 0..12),
        framing in framing(),
        body in prop::collection::vec(any::<u8>(), 0..80),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut wire = "\r\n".repeat(leading_crlfs).into_bytes();
        wire.extend_from_slice(start.wire().as_bytes());
        for h in &headers {
            wire.extend_from_slice(h.wire().as_bytes());
        }
        if let Some(name) = framing {
            wire.extend_from_slice(format!("{name}: {}\r\n", body.len()).as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&body);
        if framing.is_some() {
            // Octets past Content-Length are not part of the message.
            wire.extend_from_slice(&trailing);
        }

        let parsed = parse_message(Bytes::from(wire.clone()));
        prop_assert!(parsed.is_ok(), "{:?} for {:?}", parsed, String::from_utf8_lossy(&wire));
        let m = parsed.unwrap();
        match (&start, &m) {
            (StartLine::Request { method, uri }, Message::Request(r)) => {
                prop_assert_eq!(r.method.as_str(), method.as_str());
                let want_uri = trunkline_sip::Uri::parse(uri);
                prop_assert_eq!(Ok(&r.uri), want_uri.as_ref());
            }
            (StartLine::Response { status, reason }, Message::Response(r)) => {
                prop_assert_eq!(r.status, *status);
                prop_assert_eq!(&r.reason[..], reason.as_bytes());
            }
            _ => prop_assert!(false, "wrong message kind"),
        }
        let want: Vec<(Bytes, Bytes)> = headers
            .iter()
            .map(|h| (Bytes::from(h.name.clone()), Bytes::from(h.value())))
            .collect();
        prop_assert_eq!(headers_of(&m), want);
        let got_body = match &m {
            Message::Request(r) => r.body.clone(),
            Message::Response(r) => r.body.clone(),
        };
        prop_assert_eq!(&got_body[..], &body[..]);

        let again = parse_message(m.encode());
        prop_assert!(again.is_ok(), "encoding does not re-parse: {:?}", again);
        assert_same(&m, &again.unwrap())?;
    }

    #[test]
    fn whatever_parses_re_parses_after_encoding(wire in noisy_message()) {
        if let Ok(m) = parse_message(Bytes::from(wire)) {
            let again = parse_message(m.encode());
            prop_assert!(again.is_ok(), "{:?} does not re-parse: {:?}", m, again);
            assert_same(&m, &again.unwrap())?;
        }
    }
}

/// Bytes biased towards the characters the parser cares about.
fn noisy_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"abcXYZ019:;,=<>\"\\@ \t\r\n/.-[]?%".to_vec()),
        1 => any::<u8>(),
    ]
}

/// A valid start line followed by header-like lines (some with Content-Length),
/// folds and raw junk, an optional end of headers and random body bytes.
fn noisy_message() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        4 => (
            prop_oneof![3 => header_name(), 1 => Just("l".to_string()), 1 => Just("Content-Length".to_string())],
            prop::collection::vec(noisy_byte(), 0..24),
        )
            .prop_map(|(n, v)| {
                let mut l = n.into_bytes();
                l.extend_from_slice(b": ");
                l.extend(v);
                l.extend_from_slice(b"\r\n");
                l
            }),
        1 => prop::collection::vec(noisy_byte(), 0..16).prop_map(|v| {
            let mut l = vec![b' '];
            l.extend(v);
            l.extend_from_slice(b"\r\n");
            l
        }),
        1 => prop::collection::vec(noisy_byte(), 0..16),
    ];
    (
        start_line(),
        prop::collection::vec(line, 0..10),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(start, lines, terminate, body)| {
            let mut wire = start.wire().into_bytes();
            for l in lines {
                wire.extend(l);
            }
            if terminate {
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend(body);
            wire
        })
}

/// The noisy property is only worth something if a fair share of its inputs parse.
#[test]
fn noisy_inputs_often_parse() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = noisy_message();
    let total = 2000;
    let mut ok = 0;
    for _ in 0..total {
        let wire = strategy.new_tree(&mut runner).expect("value").current();
        ok += usize::from(parse_message(Bytes::from(wire)).is_ok());
    }
    eprintln!("{ok} of {total} noisy inputs parsed");
    assert!(ok * 20 > total, "only {ok} of {total} noisy inputs parsed");
}
