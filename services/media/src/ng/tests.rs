//! Codec, request parsing, dispatch (stub engine and the real `Relay`), and both servers.

use super::bencode::{self, scan, BencodeError, Dict};
use super::commands::{Dispatcher, ReplyCache};
use super::message::{self, Command, Request};
use super::*;
use crate::{PacketStats, StreamPairStats, StreamStats};
use serde_bencode::value::Value;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Dict(d) => d.get(key.as_bytes()),
        _ => None,
    }
}

fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match get(v, key) {
        Some(Value::Bytes(b)) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

fn get_int(v: &Value, key: &str) -> Option<i64> {
    match get(v, key) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

/// Splits a framed reply and decodes its dictionary.
fn reply_of(framed: &[u8]) -> (String, Value) {
    let (cookie, body) = message::split(framed).expect("reply has a cookie");
    (
        String::from_utf8_lossy(cookie).into_owned(),
        bencode::decode(body).expect("reply decodes"),
    )
}

// ---- bencode ----

#[test]
fn scan_finds_the_end_of_one_value() {
    assert_eq!(scan(b"d7:command4:pinge"), Ok(Some(17)));
    assert_eq!(scan(b"d7:command4:pingeXYZ"), Ok(Some(17)));
    assert_eq!(scan(b"i-42e"), Ok(Some(5)));
    assert_eq!(scan(b"4:spam"), Ok(Some(6)));
    assert_eq!(scan(b"le"), Ok(Some(2)));
    assert_eq!(scan(b"d1:ali1ei2el1:xeee"), Ok(Some(18)));
}

#[test]
fn scan_reports_truncation_as_need_more() {
    for cut in 0..17 {
        assert_eq!(scan(&b"d7:command4:pinge"[..cut]), Ok(None), "cut at {cut}");
    }
    assert_eq!(scan(b"10:abc"), Ok(None));
}

#[test]
fn scan_rejects_garbage() {
    assert!(matches!(scan(b"x"), Err(BencodeError::Unexpected { .. })));
    assert!(matches!(scan(b"e"), Err(BencodeError::Unexpected { .. })));
    assert!(matches!(scan(b"ie"), Err(BencodeError::Unexpected { .. })));
    assert!(matches!(scan(b"i-e"), Err(BencodeError::Unexpected { .. })));
    assert!(matches!(scan(b"i1x"), Err(BencodeError::Unexpected { .. })));
    assert_eq!(scan(b"di1ei2ee"), Err(BencodeError::NonStringKey(1)));
    assert_eq!(scan(b"d1:ad1:bli1eeee"), Ok(Some(15)));
    assert!(matches!(
        scan(b"99999999999999999999999:x"),
        Err(BencodeError::Unexpected { .. })
    ));
}

#[test]
fn nesting_is_bounded_without_recursion() {
    let deep = "l".repeat(100_000) + &"e".repeat(100_000);
    assert_eq!(scan(deep.as_bytes()), Err(BencodeError::TooDeep));
    assert_eq!(bencode::decode(deep.as_bytes()), Err(BencodeError::TooDeep));
    let ok = "l".repeat(bencode::MAX_DEPTH) + &"e".repeat(bencode::MAX_DEPTH);
    assert!(bencode::decode(ok.as_bytes()).is_ok());
}

#[test]
fn decode_accepts_unsorted_keys_and_rejects_trailing_bytes() {
    // Kamailio sends keys in insertion order; the ng spec says sorting is not required.
    let v = bencode::decode(b"d7:command4:ping4:abcdi1ee").expect("unsorted dict");
    assert_eq!(get_str(&v, "command"), Some("ping"));
    assert_eq!(get_int(&v, "abcd"), Some(1));
    assert_eq!(bencode::decode(b"dei1e"), Err(BencodeError::Trailing(3)));
    assert_eq!(bencode::decode(b"d"), Err(BencodeError::Truncated));
}

#[test]
fn encode_mixes_strings_ints_lists_dicts() {
    let v = Dict::new()
        .str("result", "ok")
        .int("n", -3)
        .val("l", bencode::str_list(["a", "bc"]))
        .val("d", Dict::new().int("x", 1).build())
        .build();
    let bytes = bencode::encode(&v).expect("encodes");
    assert_eq!(
        bytes,
        b"d1:dd1:xi1ee1:ll1:a2:bce1:ni-3e6:result2:oke".to_vec()
    );
    assert_eq!(bencode::decode(&bytes), Ok(v));
}

// ---- message ----

#[test]
fn cookie_split() {
    assert_eq!(
        message::split(b"5323_1 d7:command4:pinge"),
        Ok((&b"5323_1"[..], &b"d7:command4:pinge"[..]))
    );
    assert_eq!(message::split(b"nocookie"), Err(NgError::NoCookie));
    assert_eq!(
        message::split(b" d7:command4:pinge"),
        Err(NgError::NoCookie)
    );
    let long = vec![b'a'; message::MAX_COOKIE + 1];
    assert_eq!(message::split(&long), Err(NgError::NoCookie));
}

fn req(pairs: Vec<(&str, Value)>) -> Request {
    let d: HashMap<Vec<u8>, Value> = pairs
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v))
        .collect();
    Request::from_dict(&d).expect("request parses")
}

fn s(x: &str) -> Value {
    Value::Bytes(x.as_bytes().to_vec())
}

#[test]
fn keys_and_flags_map_to_media_flags() {
    let r = req(vec![
        ("command", s("offer")),
        ("call-id", s("c1")),
        ("from-tag", s("f1")),
        ("via-branch", s("z9")),
        ("sdp", s("v=0\r\n")),
        (
            "flags",
            bencode::str_list([
                "trust-address",
                "symmetric",
                "strict source",
                "media handover",
                "port-latching",
            ]),
        ),
        (
            "replace",
            bencode::str_list(["origin", "session-connection"]),
        ),
        ("ICE", s("pass")),
        ("rtcp-mux", bencode::str_list(["offer", "demux", "accept"])),
        ("received from", bencode::str_list(["IP4", "192.0.2.1"])),
        ("direction", bencode::str_list(["internal", "external"])),
        ("transport protocol", s("RTP/AVP")),
        ("supports", bencode::str_list(["load limit"])),
    ]);
    assert_eq!(r.command, Command::Offer);
    assert_eq!(r.call_id.as_deref(), Some("c1"));
    assert_eq!(r.from_tag.as_deref(), Some("f1"));
    assert_eq!(r.via_branch.as_deref(), Some("z9"));
    assert_eq!(r.sdp.as_deref(), Some(&b"v=0\r\n"[..]));
    let f = &r.flags;
    assert!(f.trust_address && f.symmetric && !f.asymmetric && f.strict_source);
    assert!(f.media_handover && f.port_latching && f.keep_ice);
    assert!(f.rtcp_mux_offer && f.rtcp_mux_demux);
    assert!(f.replace_origin && f.replace_session_connection);
    assert_eq!(f.received_from, Some("192.0.2.1:0".parse().expect("addr")));
    assert_eq!(
        f.direction,
        [Some("internal".to_owned()), Some("external".to_owned())]
    );
    assert_eq!(r.address_trust, Some(true));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn unknown_and_unsupported_things_become_warnings() {
    let r = req(vec![
        ("command", s("offer")),
        (
            "flags",
            bencode::str_list(["SIP-source-address", "asymmetric", "frobnicate"]),
        ),
        ("replace", bencode::str_list(["username"])),
        ("ICE", s("force")),
        ("rtcp-mux", bencode::str_list(["require"])),
        ("received from", bencode::str_list(["IP6", "192.0.2.1"])),
        ("transport protocol", s("RTP/SAVPF")),
        ("DTLS", s("off")),
        (
            "codec",
            Dict::new()
                .val("strip", bencode::str_list(["PCMA"]))
                .build(),
        ),
    ]);
    assert!(!r.flags.trust_address && r.flags.asymmetric && !r.flags.keep_ice);
    assert_eq!(r.address_trust, Some(false));
    assert_eq!(r.flags.received_from, None);
    let w = r.warnings.join("|");
    for needle in [
        "frobnicate",
        "username",
        "ICE force",
        "require",
        "received from",
        "RTP/SAVPF",
    ] {
        assert!(w.contains(needle), "{needle} missing in {w}");
    }
}

#[test]
fn interface_keys() {
    use crate::AddressFamily;
    let some = |n: &str| Some(n.to_owned());
    // One item: the sender's side only; more than two: the rest ignored, with a warning.
    let r = req(vec![
        ("command", s("offer")),
        ("direction", bencode::str_list(["priv"])),
    ]);
    assert_eq!(r.flags.direction, [some("priv"), None]);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let r = req(vec![
        ("command", s("offer")),
        ("direction", bencode::str_list(["a", "", "c"])),
    ]);
    assert_eq!(r.flags.direction, [some("a"), None]);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    // from-interface / to-interface are the two items; `address family` is IP4 or IP6.
    let r = req(vec![
        ("command", s("offer")),
        ("direction", bencode::str_list(["a", "b"])),
        ("to-interface", s("pub")),
        ("address family", s("IP6")),
    ]);
    assert_eq!(r.flags.direction, [some("a"), some("pub")]);
    assert_eq!(r.flags.address_family, Some(AddressFamily::Ip6));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let r = req(vec![
        ("command", s("offer")),
        ("from-interface", s("priv")),
        ("address-family", s("IPX")),
    ]);
    assert_eq!(r.flags.direction, [some("priv"), None]);
    assert_eq!(r.flags.address_family, None);
    assert_eq!(
        r.warnings,
        vec!["address family IPX not supported; ignored".to_owned()]
    );
}

#[test]
fn flag_forms_of_replace_and_rtcp_mux() {
    let r = req(vec![
        ("command", s("answer")),
        (
            "flags",
            bencode::str_list(["replace-origin", "rtcp-mux-demux", "ICE=remove"]),
        ),
    ]);
    assert!(r.flags.replace_origin && r.flags.rtcp_mux_demux && !r.flags.keep_ice);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn request_errors_match_rtpengine() {
    assert_eq!(Request::parse(b""), Err(NgError::NoPayload));
    assert_eq!(Request::parse(b"xyz"), Err(NgError::Format));
    assert_eq!(Request::parse(b"{}"), Err(NgError::Json));
    assert!(matches!(Request::parse(b"d3:foo"), Err(NgError::Decode(_))));
    assert_eq!(Request::parse(b"d3:fooi1ee"), Err(NgError::NoCommand));
    assert_eq!(
        NgError::NoCommand.to_string(),
        "Dictionary contains no key \"command\""
    );
    assert_eq!(
        NgError::Decode(None).to_string(),
        "Could not decode bencode dictionary"
    );
}

// ---- dispatcher against a stub engine ----

#[derive(Default)]
struct Stub {
    offers: AtomicUsize,
    calls: Mutex<HashMap<String, CallStats>>,
    last_flags: Mutex<Option<Flags>>,
}

fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().expect("addr")
}

/// What the stub reports for a party: `rtp` and `rtcp` as (packets, bytes).
fn party(port: u16, rtp: (u64, u64), rtcp: (u64, u64)) -> StreamStats {
    StreamStats {
        rtp: PacketStats {
            packets: rtp.0,
            bytes: rtp.1,
            errors: 1,
            last_packet_ms_ago: Some(20),
        },
        rtcp: PacketStats {
            packets: rtcp.0,
            bytes: rtcp.1,
            errors: 0,
            last_packet_ms_ago: None,
        },
        local_port: port,
        ..StreamStats::default()
    }
}

impl NgEngine for Stub {
    fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &[u8],
        f: &Flags,
    ) -> Result<Vec<u8>, MediaError> {
        if sdp.starts_with(b"bad") {
            trunkline_sdp::parse(sdp)?;
        }
        self.offers.fetch_add(1, Ordering::SeqCst);
        *self.last_flags.lock().expect("lock") = Some(f.clone());
        let call = CallStats {
            call_id: call_id.into(),
            created_ms_ago: 1500,
            last_signal_ms_ago: 500,
            tags: vec![from_tag.into()],
            streams: vec![StreamPairStats {
                index: 0,
                media: "audio".into(),
                protocol: "RTP/AVP".into(),
                offerer: StreamStats {
                    ssrc: Some(0x1234),
                    latched: Some(addr("192.0.2.10:4000")),
                    latched_rtcp: Some(addr("192.0.2.10:4001")),
                    advertised: Some(addr("10.0.0.1:4000")),
                    advertised_rtcp: Some(addr("10.0.0.1:4001")),
                    ..party(30000, (10, 1720), (2, 160))
                },
                answerer: party(30002, (0, 0), (0, 0)),
            }],
        };
        self.calls
            .lock()
            .expect("lock")
            .insert(call_id.into(), call);
        Ok(b"v=0\r\nrewritten\r\n".to_vec())
    }
    fn answer(
        &self,
        call_id: &str,
        _f: &str,
        to_tag: &str,
        _sdp: &[u8],
        _fl: &Flags,
    ) -> Result<Vec<u8>, MediaError> {
        let mut calls = self.calls.lock().expect("lock");
        let c = calls
            .get_mut(call_id)
            .ok_or_else(|| MediaError::UnknownCall(call_id.into()))?;
        c.tags.push(to_tag.into());
        c.streams[0].answerer = StreamStats {
            rtcp_mux: true,
            advertised: Some(addr("198.51.100.2:5000")),
            advertised_rtcp: Some(addr("198.51.100.2:5000")),
            ..party(30002, (5, 860), (1, 80))
        };
        Ok(b"v=0\r\nanswer\r\n".to_vec())
    }
    fn delete(
        &self,
        call_id: &str,
        _f: Option<&str>,
        _t: Option<&str>,
    ) -> Result<CallStats, MediaError> {
        self.calls
            .lock()
            .expect("lock")
            .remove(call_id)
            .ok_or_else(|| MediaError::UnknownCall(call_id.into()))
    }
    fn query(&self, call_id: &str) -> Option<CallStats> {
        self.calls.lock().expect("lock").get(call_id).cloned()
    }
    fn list(&self, limit: usize) -> Vec<String> {
        self.calls
            .lock()
            .expect("lock")
            .keys()
            .take(limit)
            .cloned()
            .collect()
    }
    fn totals(&self) -> Totals {
        let n = self.calls.lock().expect("lock").len() as u64;
        Totals {
            sessions: 7,
            current_sessions: n,
            packets_relayed: 99,
            ..Default::default()
        }
    }
    fn has_interface(&self, name: &str) -> bool {
        matches!(name, "priv" | "pub")
    }
}

fn stub() -> Dispatcher<Stub> {
    Dispatcher::new(Arc::new(Stub::default()))
}

fn run(d: &Dispatcher<Stub>, msg: &str) -> Value {
    let framed = d.handle(LO, msg.as_bytes()).expect("a reply");
    let (cookie, v) = reply_of(&framed);
    assert_eq!(cookie, msg.split(' ').next().expect("cookie"));
    v
}

const OFFER: &str = "d7:command5:offer7:call-id2:c18:from-tag2:f13:sdp4:v=0\ne";

#[test]
fn ping_pong() {
    let d = stub();
    let framed = d.handle(LO, b"5323_1 d7:command4:pinge").expect("reply");
    assert_eq!(&framed[..], b"5323_1 d6:result4:ponge");
}

#[test]
fn offer_answer_query_list_delete() {
    let d = stub();
    let v = run(&d, &format!("1 {OFFER}"));
    assert_eq!(get_str(&v, "result"), Some("ok"));
    assert_eq!(get_str(&v, "sdp"), Some("v=0\r\nrewritten\r\n"));
    assert_eq!(get(&v, "warning"), None);

    let v = run(
        &d,
        "2 d7:command6:answer7:call-id2:c18:from-tag2:f16:to-tag2:t13:sdp4:v=0\ne",
    );
    assert_eq!(get_str(&v, "result"), Some("ok"));
    assert_eq!(get_str(&v, "sdp"), Some("v=0\r\nanswer\r\n"));

    let v = run(&d, "3 d7:command5:query7:call-id2:c1e");
    assert_eq!(get_str(&v, "result"), Some("ok"));
    let created = get_int(&v, "created").expect("created");
    assert!(created > 1_600_000_000);
    assert!(get_int(&v, "last signal").expect("last signal") >= created);
    let totals = get(&v, "totals").expect("totals");
    let rtp = get(totals, "RTP").expect("RTP");
    assert_eq!(get_int(rtp, "packets"), Some(15));
    assert_eq!(get_int(rtp, "bytes"), Some(2580));
    assert_eq!(get_int(rtp, "errors"), Some(2));
    assert_eq!(
        get_int(get(totals, "RTCP").expect("RTCP"), "packets"),
        Some(3)
    );
    let f1 = get(get(&v, "tags").expect("tags"), "f1").expect("tag f1");
    assert_eq!(get_str(f1, "in dialogue with"), Some("t1"));
    let Some(Value::List(medias)) = get(f1, "medias") else {
        panic!("medias")
    };
    assert_eq!(get_str(&medias[0], "type"), Some("audio"));
    let Some(Value::List(streams)) = get(&medias[0], "streams") else {
        panic!("streams")
    };
    assert_eq!(get_int(&streams[0], "local port"), Some(30000));

    let v = run(&d, "4 d7:command4:liste");
    assert_eq!(get(&v, "calls"), Some(&bencode::str_list(["c1"])));
    let v = run(&d, "4b d7:command4:list5:limiti0ee");
    assert_eq!(get(&v, "calls"), Some(&Value::List(vec![])));
    let v = run(&d, "4c d7:command4:list5:limiti-1ee");
    assert_eq!(
        get_str(&v, "error-reason"),
        Some("invalid limit, must be >= 0")
    );

    let v = run(&d, "5 d7:command10:statisticse");
    let st = get(&v, "statistics").expect("statistics");
    assert_eq!(
        get_int(
            get(st, "currentstatistics").expect("current"),
            "sessionstotal"
        ),
        Some(1)
    );
    assert_eq!(
        get_int(
            get(st, "totalstatistics").expect("total"),
            "managedsessions"
        ),
        Some(7)
    );

    let v = run(&d, "6 d7:command6:delete7:call-id2:c18:from-tag2:f1e");
    assert_eq!(get_str(&v, "result"), Some("ok"));
    assert!(get(&v, "totals").is_some());
    assert_eq!(get(&v, "warning"), None);

    // Gone: delete warns (rtpengine default), fatal errors, query errors.
    let v = run(&d, "7 d7:command6:delete7:call-id2:c1e");
    assert_eq!(get_str(&v, "result"), Some("ok"));
    assert_eq!(
        get_str(&v, "warning"),
        Some("Call-ID not found or tags didn't match")
    );
    let v = run(&d, "8 d7:command6:delete7:call-id2:c15:flagsl5:fatalee");
    assert_eq!(get_str(&v, "result"), Some("error"));
    assert_eq!(
        get_str(&v, "error-reason"),
        Some("Call-ID not found or tags didn't match")
    );
    let v = run(&d, "9 d7:command5:query7:call-id2:c1e");
    assert_eq!(get_str(&v, "error-reason"), Some("Unknown call-id"));
}

fn list_of<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    match get(v, key) {
        Some(Value::List(l)) => l,
        other => panic!("{key} is not a list: {other:?}"),
    }
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    list_of(v, key)
        .iter()
        .map(|x| match x {
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("not a string: {other:?}"),
        })
        .collect()
}

/// (packets, bytes, errors) of a `stats`-shaped dictionary.
fn counts(v: &Value) -> (i64, i64, i64) {
    (
        get_int(v, "packets").expect("packets"),
        get_int(v, "bytes").expect("bytes"),
        get_int(v, "errors").expect("errors"),
    )
}

/// rtpengine's `ng_call_stats`: per tag `medias` → `streams` (the RTP port and the RTCP port,
/// each with its own `stats`), and `totals` split into `RTP` and `RTCP`.
#[test]
fn query_reply_has_rtpengine_shape_with_rtp_and_rtcp_apart() {
    let d = stub();
    run(&d, &format!("1 {OFFER}"));
    // Before the answer the answerer's party exists, untagged.
    let v = run(&d, "2 d7:command5:query7:call-id2:c1e");
    let tags = get(&v, "tags").expect("tags");
    let untagged = get(tags, "<untagged 1>").expect("untagged answerer");
    assert_eq!(get_str(untagged, "tag"), Some(""));
    run(
        &d,
        "3 d7:command6:answer7:call-id2:c18:from-tag2:f16:to-tag2:t13:sdp4:v=0\ne",
    );
    let v = run(&d, "4 d7:command5:query7:call-id2:c1e");

    let created = get_int(&v, "created").expect("created");
    let created_us = get_int(&v, "created_us").expect("created_us");
    assert!((0..1_000_000).contains(&created_us));
    assert_eq!(
        get_int(&v, "created_ts"),
        Some(created * 1_000_000 + created_us)
    );
    let totals = get(&v, "totals").expect("totals");
    assert_eq!(counts(get(totals, "RTP").expect("RTP")), (15, 2580, 2));
    assert_eq!(counts(get(totals, "RTCP").expect("RTCP")), (3, 240, 0));

    let tags = get(&v, "tags").expect("tags");
    let Value::Dict(all) = tags else {
        panic!("tags is not a dictionary")
    };
    assert_eq!(all.len(), 2);
    let f1 = get(tags, "f1").expect("tag f1");
    assert_eq!(get_str(f1, "tag"), Some("f1"));
    assert_eq!(get_int(f1, "created"), Some(created));
    let subs = list_of(f1, "subscriptions");
    assert_eq!(get_str(&subs[0], "tag"), Some("t1"));
    assert_eq!(get_str(&subs[0], "type"), Some("offer/answer"));
    assert_eq!(get_str(&list_of(f1, "subscribers")[0], "tag"), Some("t1"));

    let media = &list_of(f1, "medias")[0];
    assert_eq!(get_int(media, "index"), Some(1));
    assert_eq!(get_str(media, "type"), Some("audio"));
    assert_eq!(get_str(media, "protocol"), Some("RTP/AVP"));
    assert_eq!(strs(media, "flags"), ["initialized"]);
    let streams = list_of(media, "streams");
    assert_eq!(streams.len(), 2);
    let (rtp, rtcp) = (&streams[0], &streams[1]);
    assert_eq!(get_int(rtp, "local port"), Some(30000));
    assert_eq!(get_int(rtp, "SSRC"), Some(0x1234));
    assert_eq!(strs(rtp, "flags"), ["RTP", "filled", "confirmed"]);
    assert_eq!(counts(get(rtp, "stats").expect("stats")), (10, 1720, 1));
    let ep = get(rtp, "endpoint").expect("endpoint");
    assert_eq!(get_str(ep, "family"), Some("IPv4"));
    assert_eq!(get_str(ep, "address"), Some("192.0.2.10"));
    assert_eq!(get_int(ep, "port"), Some(4000));
    let adv = get(rtp, "advertised endpoint").expect("advertised endpoint");
    assert_eq!(get_str(adv, "address"), Some("10.0.0.1"));
    assert!(get_int(rtp, "last packet").expect("last packet") >= created);
    assert_eq!(get_int(rtcp, "local port"), Some(30001));
    assert_eq!(strs(rtcp, "flags"), ["RTCP", "filled", "confirmed"]);
    assert_eq!(counts(get(rtcp, "stats").expect("stats")), (2, 160, 0));
    assert_eq!(
        get_int(get(rtcp, "endpoint").expect("ep"), "port"),
        Some(4001)
    );
    assert_eq!(get_int(rtcp, "last packet"), Some(0));
    assert_eq!(get(rtcp, "SSRC"), None);

    // The answerer muxes and has not sent from anywhere yet: its endpoint is the SDP's.
    let t1 = get(tags, "t1").expect("tag t1");
    let media = &list_of(t1, "medias")[0];
    assert_eq!(strs(media, "flags"), ["initialized", "rtcp-mux"]);
    let streams = list_of(media, "streams");
    assert_eq!(strs(&streams[0], "flags"), ["RTP", "RTCP", "filled"]);
    assert_eq!(
        strs(&streams[1], "flags"),
        ["RTCP", "fallback RTCP", "filled"]
    );
    assert_eq!(
        get_str(get(&streams[0], "endpoint").expect("ep"), "address"),
        Some("198.51.100.2")
    );
    assert_eq!(
        counts(get(&streams[0], "stats").expect("stats")),
        (5, 860, 1)
    );
    assert_eq!(
        counts(get(&streams[1], "stats").expect("stats")),
        (1, 80, 0)
    );

    // delete reports the same shape.
    let v = run(&d, "5 d7:command6:delete7:call-id2:c18:from-tag2:f1e");
    let totals = get(&v, "totals").expect("totals");
    assert_eq!(counts(get(totals, "RTCP").expect("RTCP")), (3, 240, 0));
    assert!(get(get(&v, "tags").expect("tags"), "t1").is_some());
}

#[test]
fn delete_fast_has_no_stats() {
    let d = stub();
    run(&d, &format!("1 {OFFER}"));
    let v = run(&d, "2 d7:command6:delete7:call-id2:c15:flagsl4:fastee");
    assert_eq!(v, Dict::new().str("result", "ok").build());
}

#[test]
fn errors_have_only_result_and_reason() {
    let d = stub();
    let bad_sdp = format!(
        "Failed to parse SDP: {}",
        trunkline_sdp::parse(b"bad").expect_err("not SDP")
    );
    let cases = [
        (
            "d7:command5:offer7:call-id1:x8:from-tag1:fe",
            "No SDP body in message",
        ),
        (
            "d7:command5:offer3:sdp1:x8:from-tag1:fe",
            "No call-id in message",
        ),
        (
            "d7:command5:offer3:sdp1:x7:call-id1:xe",
            "No from-tag in message",
        ),
        (
            "d7:command6:answer3:sdp1:x7:call-id1:x8:from-tag1:fe",
            "No to-tag in message",
        ),
        (
            "d7:command6:answer3:sdp1:x7:call-id1:x8:from-tag1:f6:to-tag1:te",
            "Unknown call-id",
        ),
        (
            "d7:command5:offer3:sdp3:bad7:call-id1:x8:from-tag1:fe",
            &bad_sdp,
        ),
        ("d7:command5:frobse", "Unrecognized command"),
        (
            "d7:command15:start recordinge",
            "Unsupported command: start recording",
        ),
        ("d3:fooi1ee", "Dictionary contains no key \"command\""),
        ("d3:foo", "Could not decode bencode dictionary"),
        ("hello", "Invalid NG data format"),
        ("", "Invalid data (no payload)"),
    ];
    for (i, (body, reason)) in cases.iter().enumerate() {
        let v = run(&d, &format!("e{i} {body}"));
        let expect = Dict::new()
            .str("result", "error")
            .str("error-reason", reason)
            .build();
        assert_eq!(v, expect, "{body}");
    }
    assert!(d.handle(LO, b"no-space-at-all").is_none());
}

#[test]
fn unknown_flag_gives_warning_but_runs() {
    let d = stub();
    let v = run(&d, "1 d7:command5:offer7:call-id2:c18:from-tag2:f13:sdp4:v=0\n5:flagsl10:frobnicate13:trust-addressee");
    assert_eq!(get_str(&v, "result"), Some("ok"));
    assert_eq!(
        get_str(&v, "warning"),
        Some("Unknown flag ignored: frobnicate")
    );
    assert!(get(&v, "sdp").is_some());
    assert_eq!(d.engine().offers.load(Ordering::SeqCst), 1);
}

/// The flags the stub engine last saw.
fn last_flags(d: &Dispatcher<Stub>) -> Flags {
    d.engine()
        .last_flags
        .lock()
        .expect("lock")
        .clone()
        .expect("an offer ran")
}

#[test]
fn unknown_direction_names_fall_back_like_rtpengine() {
    use crate::AddressFamily;
    let offer = |direction: &str| {
        format!("d7:command5:offer7:call-id2:c18:from-tag2:f13:sdp4:v=0\n9:direction{direction}e")
    };
    let d = stub();
    // Known names reach the engine as given.
    let v = run(&d, &format!("1 {}", offer("l4:priv3:pube")));
    assert_eq!(get(&v, "warning"), None, "{v:?}");
    let f = last_flags(&d);
    assert_eq!(f.direction, [Some("priv".into()), Some("pub".into())]);
    assert_eq!(f.address_family, None);
    // An unknown name: that side gets the default, the reply says so, the call goes on.
    let v = run(&d, &format!("2 {}", offer("l4:priv3:dmze")));
    assert_eq!(get_str(&v, "result"), Some("ok"));
    assert_eq!(
        get_str(&v, "warning"),
        Some("Interface 'dmz' not found, using default")
    );
    assert_eq!(last_flags(&d).direction, [Some("priv".into()), None]);
    // `internal`/`external` not configured: rtpengine's legacy IPv4/IPv6 selectors.
    let v = run(&d, &format!("3 {}", offer("l8:internal8:externale")));
    assert_eq!(get(&v, "warning"), None, "{v:?}");
    let f = last_flags(&d);
    assert_eq!(f.direction, [None, None]);
    assert_eq!(f.address_family, Some(AddressFamily::Ip6));
}

#[test]
fn trust_address_default_and_sip_source() {
    let d = stub();
    run(&d, &format!("1 {OFFER}"));
    assert!(
        d.engine()
            .last_flags
            .lock()
            .expect("lock")
            .as_ref()
            .expect("flags")
            .trust_address
    );
    let d = stub().sip_source(true);
    run(&d, &format!("1 {OFFER}"));
    assert!(
        !d.engine()
            .last_flags
            .lock()
            .expect("lock")
            .as_ref()
            .expect("flags")
            .trust_address
    );
    run(
        &d,
        "2 d7:command5:offer7:call-id2:c28:from-tag2:f13:sdp4:v=0\n5:flagsl13:trust addressee",
    );
    assert!(
        d.engine()
            .last_flags
            .lock()
            .expect("lock")
            .as_ref()
            .expect("flags")
            .trust_address
    );
}

#[test]
fn retransmission_gets_identical_cached_reply_without_rerunning() {
    let d = stub();
    let msg = format!("77_3 {OFFER}");
    let a = d.handle(LO, msg.as_bytes()).expect("reply");
    let b = d.handle(LO, msg.as_bytes()).expect("reply");
    assert_eq!(a, b);
    assert_eq!(d.engine().offers.load(Ordering::SeqCst), 1);
    // Same cookie from another host is a different command.
    d.handle(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), msg.as_bytes())
        .expect("reply");
    assert_eq!(d.engine().offers.load(Ordering::SeqCst), 2);
    // New cookie: executed again.
    d.handle(LO, format!("77_4 {OFFER}").as_bytes())
        .expect("reply");
    assert_eq!(d.engine().offers.load(Ordering::SeqCst), 3);
}

#[test]
fn reply_cache_is_bounded_by_age_and_count() {
    let t0 = std::time::Instant::now();
    let mut c = ReplyCache::new(Duration::from_secs(30), 3);
    for i in 0..5u8 {
        c.insert(t0, LO, &[i], Arc::from(&[i][..]));
    }
    assert_eq!(c.len(), 3);
    assert!(c.get(t0, LO, &[0]).is_none());
    assert!(c.get(t0, LO, &[4]).is_some());
    assert!(c.get(t0 + Duration::from_secs(29), LO, &[4]).is_some());
    assert!(c.get(t0 + Duration::from_secs(31), LO, &[4]).is_none());
    assert!(c.is_empty());
    // Re-inserting a key does not let its old queue entry evict the new one early.
    let mut c = ReplyCache::new(Duration::from_secs(30), 10);
    c.insert(t0, LO, b"k", Arc::from(&b"1"[..]));
    c.insert(t0 + Duration::from_secs(20), LO, b"k", Arc::from(&b"2"[..]));
    assert_eq!(
        c.get(t0 + Duration::from_secs(40), LO, b"k").as_deref(),
        Some(&b"2"[..])
    );
}

// ---- servers ----

async fn start_stub() -> (NgServer, Arc<Dispatcher<Stub>>) {
    let d = Arc::new(stub());
    let lo0: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let srv = NgServer::start(
        Arc::clone(&d),
        Some(lo0),
        Some(lo0),
        ServerLimits {
            max_tcp_message: 4096,
            max_tcp_connections: 2,
            tcp_idle: Duration::from_secs(5),
        },
    )
    .await
    .expect("bind");
    (srv, d)
}

async fn udp_call(sock: &tokio::net::UdpSocket, to: std::net::SocketAddr, msg: &[u8]) -> Vec<u8> {
    sock.send_to(msg, to).await.expect("send");
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("reply in time")
        .expect("recv");
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn udp_server_answers_and_drops_cookieless() {
    let (srv, _d) = start_stub().await;
    let to = srv.udp_addr().expect("udp");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    assert_eq!(
        udp_call(&sock, to, b"1_1 d7:command4:pinge").await,
        b"1_1 d6:result4:ponge"
    );
    // No cookie: no reply; the next good message is still answered.
    sock.send_to(b"garbage", to).await.expect("send");
    assert_eq!(
        udp_call(&sock, to, b"1_2 d7:command4:pinge").await,
        b"1_2 d6:result4:ponge"
    );
}

#[tokio::test]
async fn tcp_server_frames_by_bencode_and_handles_split_writes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (srv, _d) = start_stub().await;
    let mut c = tokio::net::TcpStream::connect(srv.tcp_addr().expect("tcp"))
        .await
        .expect("connect");
    // Two messages back to back, the second split across writes.
    c.write_all(b"a d7:command4:pinge\nb d7:comm")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"and4:pinge").await.expect("write");
    let want = b"a d6:result4:pongeb d6:result4:ponge";
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&got, want);
    // Garbage after a cookie: an error reply, then the connection closes.
    c.write_all(b"c xyz").await.expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("in time")
        .expect("read");
    let (cookie, v) = reply_of(&rest);
    assert_eq!(cookie, "c");
    assert_eq!(
        get_str(&v, "error-reason"),
        Some("Could not decode bencode dictionary")
    );
}

#[tokio::test]
async fn tcp_server_limits_size_and_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (srv, _d) = start_stub().await;
    let addr = srv.tcp_addr().expect("tcp");
    // Oversized message: closed without a reply.
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut big = b"x d3:sdp9000:".to_vec();
    big.extend(vec![b'a'; 5000]);
    c.write_all(&big).await.expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("closed")
        .ok();
    assert!(rest.is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Two connections allowed; the third is closed at once.
    let _a = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _b = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)));
}

// ---- the real relay, driven over UDP and TCP ng on loopback ----

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

fn m_port(sdp: &str) -> u16 {
    let rest = sdp.split("m=audio ").nth(1).expect("m=audio line");
    rest.split(' ')
        .next()
        .expect("port")
        .parse()
        .expect("numeric port")
}

fn ng_msg(cookie: &str, d: Dict) -> Vec<u8> {
    message::frame_reply(cookie.as_bytes(), &d.build()).expect("encode")
}

async fn tcp_call(c: &mut tokio::net::TcpStream, msg: &[u8]) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    c.write_all(msg).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: each read adds bytes; give up after 5 s.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Ok((_, body)) = message::split(&buf) {
            if let Ok(Some(_)) = scan(body) {
                return reply_of(&buf).1;
            }
        }
    }
}

#[tokio::test]
async fn real_relay_anchors_a_call_over_ng() {
    let config = crate::MediaConfig {
        port_min: 47200,
        port_max: 47299,
        workers: 1,
        port_rest: Duration::ZERO,
        ..crate::MediaConfig::default()
    };
    let relay = Arc::new(crate::Relay::start(config, None).expect("relay starts"));
    let d = Arc::new(Dispatcher::new(Arc::clone(&relay)));
    let lo0: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let srv = NgServer::start(
        Arc::clone(&d),
        Some(lo0),
        Some(lo0),
        ServerLimits::default(),
    )
    .await
    .expect("bind");
    let ctl = tokio::net::UdpSocket::bind(lo0).await.expect("bind");
    let ng = srv.udp_addr().expect("udp");

    let a = tokio::net::UdpSocket::bind(lo0).await.expect("a");
    let b = tokio::net::UdpSocket::bind(lo0).await.expect("b");
    let a_port = a.local_addr().expect("a addr").port();
    let b_port = b.local_addr().expect("b addr").port();

    let offer = ng_msg(
        "o1",
        Dict::new()
            .str("command", "offer")
            .str("call-id", "real-1")
            .str("from-tag", "ft")
            .str("sdp", sdp(a_port))
            .val("flags", bencode::str_list(["trust-address", "frobnicate"]))
            .val(
                "replace",
                bencode::str_list(["origin", "session-connection"]),
            )
            .val("received from", bencode::str_list(["IP4", "127.0.0.1"])),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &offer).await);
    assert_eq!(get_str(&v, "result"), Some("ok"), "{v:?}");
    assert_eq!(
        get_str(&v, "warning"),
        Some("Unknown flag ignored: frobnicate")
    );
    let offer_sdp = get_str(&v, "sdp").expect("sdp").to_owned();
    let to_b = m_port(&offer_sdp);
    assert!((47200..=47299).contains(&to_b), "{offer_sdp}");
    // Retransmission: same bytes, no second allocation.
    let (_, again) = reply_of(&udp_call(&ctl, ng, &offer).await);
    assert_eq!(again, v);
    assert_eq!(relay.totals().sessions, 1);

    // The answer goes over TCP, same dispatcher.
    let mut tcp = tokio::net::TcpStream::connect(srv.tcp_addr().expect("tcp"))
        .await
        .expect("tcp");
    let answer = ng_msg(
        "a1",
        Dict::new()
            .str("command", "answer")
            .str("call-id", "real-1")
            .str("from-tag", "ft")
            .str("to-tag", "tt")
            .str("sdp", sdp(b_port)),
    );
    let v = tcp_call(&mut tcp, &answer).await;
    assert_eq!(get_str(&v, "result"), Some("ok"), "{v:?}");
    let to_a = m_port(get_str(&v, "sdp").expect("sdp"));
    assert_ne!(to_a, to_b);

    // Media: A → relay → B.
    let mut rtp = vec![0x80u8, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4];
    rtp.extend(std::iter::repeat_n(0xffu8, 160));
    a.send_to(&rtp, ("127.0.0.1", to_a))
        .await
        .expect("send rtp");
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), b.recv_from(&mut buf))
        .await
        .expect("relayed in time")
        .expect("recv");
    assert_eq!(&buf[..n], &rtp[..]);

    // And an RR from A to its RTCP port (relayed on to B's, where nobody listens).
    let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 9];
    a.send_to(&rr, ("127.0.0.1", to_a + 1))
        .await
        .expect("send rtcp");

    // The engine publishes counters once per batch: poll until the RR shows.
    let mut v = Value::Int(0);
    for i in 0..100 {
        v = tcp_call(
            &mut tcp,
            &ng_msg(
                &format!("q{i}"),
                Dict::new().str("command", "query").str("call-id", "real-1"),
            ),
        )
        .await;
        let rtcp = get(get(&v, "totals").expect("totals"), "RTCP").expect("RTCP");
        if get_int(rtcp, "packets") == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_str(&v, "result"), Some("ok"), "{v:?}");
    let totals = get(&v, "totals").expect("totals");
    let count = |d: &Value, k: &str| get_int(d, k).expect(k);
    let rtp_totals = get(totals, "RTP").expect("RTP");
    assert_eq!(count(rtp_totals, "packets"), 1, "{v:?}");
    assert_eq!(count(rtp_totals, "bytes"), rtp.len() as i64);
    let rtcp_totals = get(totals, "RTCP").expect("RTCP");
    assert_eq!(count(rtcp_totals, "packets"), 1, "{v:?}");
    assert_eq!(count(rtcp_totals, "bytes"), rr.len() as i64);
    let tags = get(&v, "tags").expect("tags");
    assert!(get(tags, "tt").is_some());
    // A's party: the RTP stream has the RTP, the RTCP stream (one port up) the RR.
    let medias = list_of(get(tags, "ft").expect("tag ft"), "medias");
    let streams = list_of(&medias[0], "streams");
    assert_eq!(get_int(&streams[0], "local port"), Some(i64::from(to_a)));
    assert_eq!(
        get_int(&streams[1], "local port"),
        Some(i64::from(to_a) + 1)
    );
    let stats = |st: &Value| count(get(st, "stats").expect("stats"), "packets");
    assert_eq!((stats(&streams[0]), stats(&streams[1])), (1, 1));
    assert_eq!(get_int(&streams[0], "SSRC"), Some(0x0102_0304));
    let ep = get(&streams[0], "endpoint").expect("endpoint");
    assert_eq!(get_int(ep, "port"), Some(i64::from(a_port)));

    let v = tcp_call(&mut tcp, &ng_msg("l1", Dict::new().str("command", "list"))).await;
    assert_eq!(get(&v, "calls"), Some(&bencode::str_list(["real-1"])));

    let del = ng_msg(
        "d1",
        Dict::new()
            .str("command", "delete")
            .str("call-id", "real-1")
            .str("from-tag", "ft")
            .str("to-tag", "tt"),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &del).await);
    assert_eq!(get_str(&v, "result"), Some("ok"), "{v:?}");
    assert!(get(&v, "totals").is_some());
    let del2 = ng_msg(
        "d2",
        Dict::new()
            .str("command", "delete")
            .str("call-id", "real-1"),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &del2).await);
    assert_eq!(
        get_str(&v, "warning"),
        Some("Call-ID not found or tags didn't match")
    );

    // Engine errors come back as rtpengine-style errors.
    let bad = ng_msg(
        "b1",
        Dict::new()
            .str("command", "offer")
            .str("call-id", "x")
            .str("from-tag", "f")
            .str("sdp", "garbage"),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &bad).await);
    assert_eq!(get_str(&v, "result"), Some("error"));
    assert!(
        get_str(&v, "error-reason")
            .expect("reason")
            .starts_with("Failed to parse SDP"),
        "{v:?}"
    );
    let ans = ng_msg(
        "b2",
        Dict::new()
            .str("command", "answer")
            .str("call-id", "nope")
            .str("from-tag", "f")
            .str("to-tag", "t")
            .str("sdp", sdp(9)),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &ans).await);
    assert_eq!(get_str(&v, "error-reason"), Some("Unknown call-id"));

    let v = tcp_call(
        &mut tcp,
        &ng_msg("s1", Dict::new().str("command", "statistics")),
    )
    .await;
    let st = get(&v, "statistics").expect("statistics");
    assert_eq!(
        get_int(
            get(st, "totalstatistics").expect("total"),
            "managedsessions"
        ),
        Some(1)
    );
    assert_eq!(
        get_int(
            get(st, "currentstatistics").expect("current"),
            "sessionstotal"
        ),
        Some(0)
    );

    srv.shutdown();
    relay.shutdown();
}

/// `c=` address and port of the first m-line of an SDP.
fn c_and_port(sdp: &str) -> (IpAddr, u16) {
    let m = trunkline_sdp::parse(sdp.as_bytes())
        .expect("sdp")
        .media()
        .remove(0);
    (m.connection.expect("c="), m.port)
}

#[tokio::test]
async fn real_relay_picks_interfaces_by_direction_over_ng() {
    let (internal, external, public) = ("127.0.0.1", "127.0.0.2", "192.0.2.50");
    let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
    let config = crate::MediaConfig {
        interfaces: vec![
            crate::MediaInterface::new("internal", ip(internal), ip(internal)),
            crate::MediaInterface::new("external", ip(external), ip(public)),
        ],
        port_min: 47400,
        port_max: 47499,
        workers: 1,
        port_rest: Duration::ZERO,
        ..crate::MediaConfig::default()
    };
    let relay = Arc::new(crate::Relay::start(config, None).expect("relay starts"));
    let d = Arc::new(Dispatcher::new(Arc::clone(&relay)));
    let lo0: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let srv = NgServer::start(Arc::clone(&d), Some(lo0), None, ServerLimits::default())
        .await
        .expect("bind");
    let ctl = tokio::net::UdpSocket::bind(lo0).await.expect("bind");
    let ng = srv.udp_addr().expect("udp");
    let a = tokio::net::UdpSocket::bind((ip(internal), 0))
        .await
        .expect("a");
    let b = tokio::net::UdpSocket::bind((ip(external), 0))
        .await
        .expect("b");
    let a_port = a.local_addr().expect("a addr").port();
    let b_port = b.local_addr().expect("b addr").port();

    // Kamailio's `direction=internal direction=external`.
    let offer = ng_msg(
        "o1",
        Dict::new()
            .str("command", "offer")
            .str("call-id", "ifaces-1")
            .str("from-tag", "ft")
            .str("sdp", sdp(a_port))
            .val("direction", bencode::str_list(["internal", "external"])),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &offer).await);
    assert_eq!(get_str(&v, "result"), Some("ok"), "{v:?}");
    assert_eq!(get(&v, "warning"), None, "{v:?}");
    let (adv, to_b) = c_and_port(get_str(&v, "sdp").expect("sdp"));
    assert_eq!(adv, ip(public));

    let answer_sdp = sdp(b_port).replace("127.0.0.1", external);
    let answer = ng_msg(
        "a1",
        Dict::new()
            .str("command", "answer")
            .str("call-id", "ifaces-1")
            .str("from-tag", "ft")
            .str("to-tag", "tt")
            .str("sdp", answer_sdp),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &answer).await);
    assert_eq!(get_str(&v, "result"), Some("ok"), "{v:?}");
    let (adv, to_a) = c_and_port(get_str(&v, "sdp").expect("sdp"));
    assert_eq!(adv, ip(internal));

    // RTP both ways; each party hears the relay from the address facing it.
    let mut buf = [0u8; 2048];
    let pkt = [0x80u8, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 9, 9];
    a.send_to(&pkt, (ip(internal), to_a)).await.expect("send");
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), b.recv_from(&mut buf))
        .await
        .expect("relayed in time")
        .expect("recv");
    assert_eq!(&buf[..n], &pkt[..]);
    assert_eq!(from, std::net::SocketAddr::new(ip(external), to_b));
    b.send_to(&pkt, (ip(external), to_b)).await.expect("send");
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), a.recv_from(&mut buf))
        .await
        .expect("relayed in time")
        .expect("recv");
    assert_eq!(&buf[..n], &pkt[..]);
    assert_eq!(from, std::net::SocketAddr::new(ip(internal), to_a));

    // `query` shows each stream's local address, as rtpengine's does.
    let q = ng_msg(
        "q1",
        Dict::new()
            .str("command", "query")
            .str("call-id", "ifaces-1"),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &q).await);
    let tags = get(&v, "tags").expect("tags");
    let first_stream = |tag: &str| {
        let medias = list_of(get(tags, tag).expect("tag"), "medias");
        list_of(&medias[0], "streams")[0].clone()
    };
    let st = first_stream("ft");
    assert_eq!(get_str(&st, "local address"), Some(internal));
    assert_eq!(get_int(&st, "local port"), Some(i64::from(to_a)));
    assert_eq!(get_str(&st, "family"), Some("IPv4"));
    let st = first_stream("tt");
    assert_eq!(get_str(&st, "local address"), Some(external));
    assert_eq!(get_int(&st, "local port"), Some(i64::from(to_b)));

    // An unknown name: rtpengine's answer is not an error but the default interface.
    let offer = ng_msg(
        "o2",
        Dict::new()
            .str("command", "offer")
            .str("call-id", "ifaces-2")
            .str("from-tag", "ft")
            .str("sdp", sdp(a_port))
            .str("from-interface", "internal")
            .str("to-interface", "dmz"),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &offer).await);
    assert_eq!(get_str(&v, "result"), Some("ok"), "{v:?}");
    assert_eq!(
        get_str(&v, "warning"),
        Some("Interface 'dmz' not found, using default")
    );
    assert_eq!(c_and_port(get_str(&v, "sdp").expect("sdp")).0, ip(internal));

    // `to-interface` alone picks the side toward the receiver.
    let offer = ng_msg(
        "o3",
        Dict::new()
            .str("command", "offer")
            .str("call-id", "ifaces-3")
            .str("from-tag", "ft")
            .str("sdp", sdp(a_port))
            .str("to-interface", "external"),
    );
    let (_, v) = reply_of(&udp_call(&ctl, ng, &offer).await);
    assert_eq!(c_and_port(get_str(&v, "sdp").expect("sdp")).0, ip(public));

    srv.shutdown();
    relay.shutdown();
}
