//! Codec, request parsing, dispatch (stub engine and the real `Relay`), and both servers.

use super::bencode::{self, scan, BencodeError, Dict};
use super::commands::{Dispatcher, ReplyCache};
use super::message::{self, Command, Request};
use super::*;
use crate::{AddressPolicy, EndpointLearning, PacketStats, StreamPairStats, StreamStats};
use serde_bencode::value::Value;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The reply says `result: ok`.
#[track_caller]
fn assert_ok(v: &Value) {
    assert_eq!(get_str(v, "result"), Some("ok"), "{v:?}");
}

/// A counter of a `statistics` reply: `statistics` → `group` → `key`.
fn statistic(v: &Value, group: &str, key: &str) -> Option<i64> {
    let st = get(v, "statistics").expect("statistics");
    get_int(get(st, group).expect(group), key)
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
    assert_eq!(f.address, AddressPolicy::Sdp);
    assert!(f.symmetric && !f.asymmetric && f.strict_source);
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
    assert_eq!(r.flags.address, AddressPolicy::Source);
    assert!(r.flags.asymmetric && !r.flags.keep_ice);
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
    established: Mutex<Vec<String>>,
}

fn addr(s: &str) -> SocketAddr {
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
        _now: Instant,
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
        _now: Instant,
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
        _now: Instant,
    ) -> Result<CallStats, MediaError> {
        self.calls
            .lock()
            .expect("lock")
            .remove(call_id)
            .ok_or_else(|| MediaError::UnknownCall(call_id.into()))
    }
    fn query(&self, call_id: &str, _now: Instant) -> Option<CallStats> {
        self.calls.lock().expect("lock").get(call_id).cloned()
    }
    fn established(&self, call_id: &str, _now: Instant) -> Result<(), MediaError> {
        self.established
            .lock()
            .expect("lock")
            .push(call_id.to_string());
        Ok(())
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
/// The answer to [`OFFER`], from tag `t1`.
const ANSWER: &str = "d7:command6:answer7:call-id2:c18:from-tag2:f16:to-tag2:t13:sdp4:v=0\ne";

/// Runs [`OFFER`] (cookie `1`) on `d`: call `c1` from tag `f1`.
fn run_offer(d: &Dispatcher<Stub>) -> Value {
    run(d, &format!("1 {OFFER}"))
}

#[test]
fn ping_pong() {
    let d = stub();
    let framed = d.handle(LO, b"5323_1 d7:command4:pinge").expect("reply");
    assert_eq!(&framed[..], b"5323_1 d6:result4:ponge");
}

#[test]
fn offer_answer_query_list_delete() {
    let d = stub();
    let v = run_offer(&d);
    assert_ok(&v);
    assert_eq!(get_str(&v, "sdp"), Some("v=0\r\nrewritten\r\n"));
    assert_eq!(get(&v, "warning"), None);

    let v = run(&d, &format!("2 {ANSWER}"));
    assert_ok(&v);
    assert_eq!(get_str(&v, "sdp"), Some("v=0\r\nanswer\r\n"));

    let v = run(&d, "3 d7:command5:query7:call-id2:c1e");
    assert_ok(&v);
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
    assert_eq!(get_str(&list_of(f1, "medias")[0], "type"), Some("audio"));
    assert_eq!(get_int(&streams_of(&v, "f1")[0], "local port"), Some(30000));

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
    assert_eq!(statistic(&v, "currentstatistics", "sessionstotal"), Some(1));
    assert_eq!(statistic(&v, "totalstatistics", "managedsessions"), Some(7));

    let v = run(&d, "6 d7:command6:delete7:call-id2:c18:from-tag2:f1e");
    assert_ok(&v);
    assert!(get(&v, "totals").is_some());
    assert_eq!(get(&v, "warning"), None);

    // Gone: delete warns (rtpengine default), fatal errors, query errors.
    let v = run(&d, "7 d7:command6:delete7:call-id2:c1e");
    assert_ok(&v);
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
    run_offer(&d);
    // Before the answer the answerer's party exists, untagged.
    let v = run(&d, "2 d7:command5:query7:call-id2:c1e");
    let tags = get(&v, "tags").expect("tags");
    let untagged = get(tags, "<untagged 1>").expect("untagged answerer");
    assert_eq!(get_str(untagged, "tag"), Some(""));
    run(&d, &format!("3 {ANSWER}"));
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
    run_offer(&d);
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
    assert_ok(&v);
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
    assert_ok(&v);
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
    run_offer(&d);
    assert_eq!(last_flags(&d).address, AddressPolicy::Sdp);
    let d = stub().sip_source(true);
    run_offer(&d);
    assert_eq!(last_flags(&d).address, AddressPolicy::Source);
    run(
        &d,
        "2 d7:command5:offer7:call-id2:c28:from-tag2:f13:sdp4:v=0\n5:flagsl13:trust addressee",
    );
    assert_eq!(last_flags(&d).address, AddressPolicy::Sdp);
}

/// rtpengine's `endpoint-learning` key, and its `endpoint-learning-` flag prefix, choose the
/// learning mode of the party whose SDP this is; an unknown mode is a warning.
#[test]
fn endpoint_learning_key_and_flag() {
    let d = stub();
    run_offer(&d);
    assert_eq!(
        last_flags(&d).endpoint_learning,
        None,
        "the relay's default"
    );
    run(
        &d,
        "2 d7:command5:offer7:call-id2:c28:from-tag2:f13:sdp4:v=0\n17:endpoint-learning9:heuristice",
    );
    assert_eq!(
        last_flags(&d).endpoint_learning,
        Some(EndpointLearning::Heuristic)
    );
    run(
        &d,
        "3 d7:command5:offer7:call-id2:c38:from-tag2:f13:sdp4:v=0\n5:flagsl27:endpoint-learning-immediateee",
    );
    assert_eq!(
        last_flags(&d).endpoint_learning,
        Some(EndpointLearning::Immediate)
    );
    let v = run(
        &d,
        "4 d7:command5:offer7:call-id2:c48:from-tag2:f13:sdp4:v=0\n17:endpoint-learning9:sometimese",
    );
    assert_eq!(last_flags(&d).endpoint_learning, None);
    assert_eq!(
        get_str(&v, "warning"),
        Some("endpoint-learning sometimes not supported; ignored")
    );
}

/// A successful `answer` establishes the call in the engine (its media timeouts start, as
/// rtpengine's do with the answer); an offer or a failed answer does not.
#[test]
fn answer_establishes_the_call() {
    let d = stub();
    run_offer(&d);
    assert!(d.engine().established.lock().expect("lock").is_empty());
    run(
        &d,
        "2 d7:command6:answer7:call-id4:nope8:from-tag2:f16:to-tag2:t13:sdp4:v=0\ne",
    );
    assert!(d.engine().established.lock().expect("lock").is_empty());
    assert_ok(&run(&d, &format!("3 {ANSWER}")));
    assert_eq!(
        *d.engine().established.lock().expect("lock"),
        vec!["c1".to_string()]
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

/// The longest any server test waits: for a reply, a relayed packet, a closed connection.
const WAIT: Duration = Duration::from_secs(5);

/// `f`, which must finish within [`WAIT`] (`what` names it if it does not).
async fn in_time<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect(what)
}

/// Loopback, any port: where the servers listen and the test sockets bind.
fn lo0() -> SocketAddr {
    SocketAddr::new(LO, 0)
}

/// Serves `d` over ng on loopback: UDP, and TCP too when `tcp`.
async fn serve<E: NgEngine>(d: &Arc<Dispatcher<E>>, tcp: bool, limits: ServerLimits) -> NgServer {
    NgServer::start(Arc::clone(d), Some(lo0()), tcp.then(lo0), limits)
        .await
        .expect("bind")
}

async fn start_stub() -> (NgServer, Arc<Dispatcher<Stub>>) {
    let d = Arc::new(stub());
    let limits = ServerLimits {
        max_tcp_message: 4096,
        max_tcp_connections: 2,
        tcp_idle: Duration::from_secs(5),
    };
    (serve(&d, true, limits).await, d)
}

/// The next datagram on `sock` and where it came from, within [`WAIT`].
async fn recv_in_time(sock: &tokio::net::UdpSocket, what: &str) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = in_time(what, sock.recv_from(&mut buf)).await.expect("recv");
    buf.truncate(n);
    (buf, from)
}

async fn udp_call(sock: &tokio::net::UdpSocket, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    sock.send_to(msg, to).await.expect("send");
    recv_in_time(sock, "reply in time").await.0
}

#[tokio::test]
async fn udp_server_answers_and_drops_cookieless() {
    let (srv, _d) = start_stub().await;
    let to = srv.udp_addr().expect("udp");
    let sock = tokio::net::UdpSocket::bind(lo0()).await.expect("bind");
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
    in_time("in time", c.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(&got, want);
    // Garbage after a cookie: an error reply, then the connection closes.
    c.write_all(b"c xyz").await.expect("write");
    let mut rest = Vec::new();
    in_time("in time", c.read_to_end(&mut rest))
        .await
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
    in_time("closed", c.read_to_end(&mut rest)).await.ok();
    assert!(rest.is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Two connections allowed; the third is closed at once.
    let _a = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _b = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 1];
    let n = in_time("closed", third.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)));
}

// ---- the real relay, driven over UDP and TCP ng on loopback ----

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

/// `c=` address and port of the first m-line of an SDP.
fn c_and_port(sdp: &str) -> (IpAddr, u16) {
    let m = trunkline_sdp::parse(sdp.as_bytes())
        .expect("sdp")
        .media()
        .remove(0);
    (m.connection.expect("c="), m.port)
}

fn ng_msg(cookie: &str, d: Dict) -> Vec<u8> {
    message::frame_reply(cookie.as_bytes(), &d.build()).expect("encode")
}

/// An ng `command` about `call`; callers add the other keys.
fn ng_call(command: &str, call: &str) -> Dict {
    Dict::new().str("command", command).str("call-id", call)
}

/// An ng `offer` of `sdp` for `call` from the party tagged `ft`.
fn ng_offer(call: &str, sdp: &str) -> Dict {
    ng_call("offer", call).str("from-tag", "ft").str("sdp", sdp)
}

/// An ng `answer` of `sdp` from the party tagged `tt` to `ft`'s offer.
fn ng_answer(call: &str, sdp: &str) -> Dict {
    ng_call("answer", call)
        .str("from-tag", "ft")
        .str("to-tag", "tt")
        .str("sdp", sdp)
}

/// The `streams` of the first media of party `tag` in a `query` or `delete` reply.
fn streams_of<'a>(reply: &'a Value, tag: &str) -> &'a [Value] {
    let party = get(get(reply, "tags").expect("tags"), tag).expect(tag);
    list_of(&list_of(party, "medias")[0], "streams")
}

/// Config of a real relay behind ng: 100 ports from `port_min` (each test its own, as the
/// tests run in parallel), one worker, freed ports reusable at once.
fn real_config(port_min: u16) -> crate::MediaConfig {
    crate::MediaConfig {
        port_min,
        port_max: port_min + 99,
        workers: 1,
        port_rest: Duration::ZERO,
        ..crate::MediaConfig::default()
    }
}

/// The real engine behind a dispatcher, served over ng on loopback, and the socket a
/// proxy's rtpengine module sends its commands from.
struct RealNg {
    relay: Arc<Relay>,
    srv: NgServer,
    ctl: tokio::net::UdpSocket,
}

impl RealNg {
    /// Starts a relay with `config` and serves it over UDP ng, and over TCP too when `tcp`.
    async fn start(config: crate::MediaConfig, tcp: bool) -> Self {
        let relay = Arc::new(Relay::start(config, None).expect("relay starts"));
        let d = Arc::new(Dispatcher::new(Arc::clone(&relay)));
        let srv = serve(&d, tcp, ServerLimits::default()).await;
        let ctl = tokio::net::UdpSocket::bind(lo0()).await.expect("bind");
        RealNg { relay, srv, ctl }
    }

    /// Sends the framed ng message `msg` over UDP; the decoded reply.
    async fn udp(&self, msg: &[u8]) -> Value {
        let ng = self.srv.udp_addr().expect("udp");
        reply_of(&udp_call(&self.ctl, ng, msg).await).1
    }

    fn shutdown(self) {
        self.srv.shutdown();
        self.relay.shutdown();
    }
}

/// A party's media socket on `ip`, and its port.
async fn media_socket(ip: IpAddr) -> (tokio::net::UdpSocket, u16) {
    let s = tokio::net::UdpSocket::bind((ip, 0))
        .await
        .expect("bind party");
    let port = s.local_addr().expect("party addr").port();
    (s, port)
}

async fn tcp_call(c: &mut tokio::net::TcpStream, msg: &[u8]) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    c.write_all(msg).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: each read adds bytes; give up after WAIT.
    loop {
        let n = in_time("reply in time", c.read(&mut chunk))
            .await
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
    let rig = RealNg::start(real_config(47200), true).await;
    let (a, a_port) = media_socket(LO).await;
    let (b, b_port) = media_socket(LO).await;

    let offer = ng_msg(
        "o1",
        ng_offer("real-1", &sdp(a_port))
            .val("flags", bencode::str_list(["trust-address", "frobnicate"]))
            .val(
                "replace",
                bencode::str_list(["origin", "session-connection"]),
            )
            .val("received from", bencode::str_list(["IP4", "127.0.0.1"]))
            // A sends its RTCP from its RTP port, not the one its SDP implies: learnt at
            // once rather than after the window.
            .str("endpoint-learning", "immediate"),
    );
    let v = rig.udp(&offer).await;
    assert_ok(&v);
    assert_eq!(
        get_str(&v, "warning"),
        Some("Unknown flag ignored: frobnicate")
    );
    let offer_sdp = get_str(&v, "sdp").expect("sdp").to_owned();
    let to_b = c_and_port(&offer_sdp).1;
    assert!((47200..=47299).contains(&to_b), "{offer_sdp}");
    // Retransmission: same bytes, no second allocation.
    let again = rig.udp(&offer).await;
    assert_eq!(again, v);
    assert_eq!(rig.relay.totals().sessions, 1);

    // The answer goes over TCP, same dispatcher.
    let mut tcp = tokio::net::TcpStream::connect(rig.srv.tcp_addr().expect("tcp"))
        .await
        .expect("tcp");
    let answer = ng_msg("a1", ng_answer("real-1", &sdp(b_port)));
    let v = tcp_call(&mut tcp, &answer).await;
    assert_ok(&v);
    let to_a = c_and_port(get_str(&v, "sdp").expect("sdp")).1;
    assert_ne!(to_a, to_b);

    // Media: A → relay → B.
    let mut rtp = vec![0x80u8, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4];
    rtp.extend(std::iter::repeat_n(0xffu8, 160));
    a.send_to(&rtp, (LO, to_a)).await.expect("send rtp");
    let (got, _) = recv_in_time(&b, "relayed in time").await;
    assert_eq!(got, rtp);

    // And an RR from A to its RTCP port (relayed on to B's, where nobody listens).
    let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 9];
    a.send_to(&rr, (LO, to_a + 1)).await.expect("send rtcp");

    // The engine publishes counters once per batch: poll until the RR shows.
    let mut v = Value::Int(0);
    for i in 0..100 {
        v = tcp_call(
            &mut tcp,
            &ng_msg(&format!("q{i}"), ng_call("query", "real-1")),
        )
        .await;
        let rtcp = get(get(&v, "totals").expect("totals"), "RTCP").expect("RTCP");
        if get_int(rtcp, "packets") == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ok(&v);
    let totals = get(&v, "totals").expect("totals");
    let count = |d: &Value, k: &str| get_int(d, k).expect(k);
    let rtp_totals = get(totals, "RTP").expect("RTP");
    assert_eq!(count(rtp_totals, "packets"), 1, "{v:?}");
    assert_eq!(count(rtp_totals, "bytes"), rtp.len() as i64);
    let rtcp_totals = get(totals, "RTCP").expect("RTCP");
    assert_eq!(count(rtcp_totals, "packets"), 1, "{v:?}");
    assert_eq!(count(rtcp_totals, "bytes"), rr.len() as i64);
    assert!(get(get(&v, "tags").expect("tags"), "tt").is_some());
    // A's party: the RTP stream has the RTP, the RTCP stream (one port up) the RR.
    let streams = streams_of(&v, "ft");
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

    let del = ng_call("delete", "real-1")
        .str("from-tag", "ft")
        .str("to-tag", "tt");
    let v = rig.udp(&ng_msg("d1", del)).await;
    assert_ok(&v);
    assert!(get(&v, "totals").is_some());
    let v = rig.udp(&ng_msg("d2", ng_call("delete", "real-1"))).await;
    assert_eq!(
        get_str(&v, "warning"),
        Some("Call-ID not found or tags didn't match")
    );

    // Engine errors come back as rtpengine-style errors.
    let v = rig.udp(&ng_msg("b1", ng_offer("x", "garbage"))).await;
    assert_eq!(get_str(&v, "result"), Some("error"));
    assert!(
        get_str(&v, "error-reason")
            .expect("reason")
            .starts_with("Failed to parse SDP"),
        "{v:?}"
    );
    let v = rig.udp(&ng_msg("b2", ng_answer("nope", &sdp(9)))).await;
    assert_eq!(get_str(&v, "error-reason"), Some("Unknown call-id"));

    let v = tcp_call(
        &mut tcp,
        &ng_msg("s1", Dict::new().str("command", "statistics")),
    )
    .await;
    assert_eq!(statistic(&v, "totalstatistics", "managedsessions"), Some(1));
    assert_eq!(statistic(&v, "currentstatistics", "sessionstotal"), Some(0));

    rig.shutdown();
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
        ..real_config(47400)
    };
    let rig = RealNg::start(config, false).await;
    let (a, a_port) = media_socket(ip(internal)).await;
    let (b, b_port) = media_socket(ip(external)).await;

    // Kamailio's `direction=internal direction=external`.
    let offer = ng_offer("ifaces-1", &sdp(a_port))
        .val("direction", bencode::str_list(["internal", "external"]));
    let v = rig.udp(&ng_msg("o1", offer)).await;
    assert_ok(&v);
    assert_eq!(get(&v, "warning"), None, "{v:?}");
    let (adv, to_b) = c_and_port(get_str(&v, "sdp").expect("sdp"));
    assert_eq!(adv, ip(public));

    let answer_sdp = sdp(b_port).replace("127.0.0.1", external);
    let v = rig
        .udp(&ng_msg("a1", ng_answer("ifaces-1", &answer_sdp)))
        .await;
    assert_ok(&v);
    let (adv, to_a) = c_and_port(get_str(&v, "sdp").expect("sdp"));
    assert_eq!(adv, ip(internal));

    // RTP both ways; each party hears the relay from the address facing it.
    let pkt = [0x80u8, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 9, 9];
    a.send_to(&pkt, (ip(internal), to_a)).await.expect("send");
    let (got, from) = recv_in_time(&b, "relayed in time").await;
    assert_eq!(got, pkt);
    assert_eq!(from, SocketAddr::new(ip(external), to_b));
    b.send_to(&pkt, (ip(external), to_b)).await.expect("send");
    let (got, from) = recv_in_time(&a, "relayed in time").await;
    assert_eq!(got, pkt);
    assert_eq!(from, SocketAddr::new(ip(internal), to_a));

    // `query` shows each stream's local address, as rtpengine's does.
    let v = rig.udp(&ng_msg("q1", ng_call("query", "ifaces-1"))).await;
    let st = &streams_of(&v, "ft")[0];
    assert_eq!(get_str(st, "local address"), Some(internal));
    assert_eq!(get_int(st, "local port"), Some(i64::from(to_a)));
    assert_eq!(get_str(st, "family"), Some("IPv4"));
    let st = &streams_of(&v, "tt")[0];
    assert_eq!(get_str(st, "local address"), Some(external));
    assert_eq!(get_int(st, "local port"), Some(i64::from(to_b)));

    // An unknown name: rtpengine's answer is not an error but the default interface.
    let offer = ng_offer("ifaces-2", &sdp(a_port))
        .str("from-interface", "internal")
        .str("to-interface", "dmz");
    let v = rig.udp(&ng_msg("o2", offer)).await;
    assert_ok(&v);
    assert_eq!(
        get_str(&v, "warning"),
        Some("Interface 'dmz' not found, using default")
    );
    assert_eq!(c_and_port(get_str(&v, "sdp").expect("sdp")).0, ip(internal));

    // `to-interface` alone picks the side toward the receiver.
    let offer = ng_offer("ifaces-3", &sdp(a_port)).str("to-interface", "external");
    let v = rig.udp(&ng_msg("o3", offer)).await;
    assert_eq!(c_and_port(get_str(&v, "sdp").expect("sdp")).0, ip(public));

    rig.shutdown();
}
