//! ng control messages from the network: bencode framing/decoding, request parsing and the
//! whole dispatcher (against a stub engine, so no sockets), checking that every reply is a
//! well-formed ng reply with the request's cookie.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;
use trunkline_media::ng::bencode;
use trunkline_media::ng::{message, Dispatcher, NgEngine, Request};
use trunkline_media::{CallStats, Flags, MediaError, StreamPairStats, Totals};

struct Stub;

impl NgEngine for Stub {
    fn offer(
        &self,
        _: &str,
        _: &str,
        sdp: &[u8],
        _: &Flags,
        _: Instant,
    ) -> Result<Vec<u8>, MediaError> {
        Ok(sdp.to_vec())
    }
    fn answer(
        &self,
        c: &str,
        _: &str,
        _: &str,
        sdp: &[u8],
        _: &Flags,
        _: Instant,
    ) -> Result<Vec<u8>, MediaError> {
        if c.len() % 2 == 0 {
            Ok(sdp.to_vec())
        } else {
            Err(MediaError::UnknownCall(c.into()))
        }
    }
    fn established(&self, c: &str, _: Instant) -> Result<(), MediaError> {
        if c.len() % 3 == 0 {
            Err(MediaError::UnknownCall(c.into()))
        } else {
            Ok(())
        }
    }
    fn delete(
        &self,
        c: &str,
        _: Option<&str>,
        _: Option<&str>,
        _: Instant,
    ) -> Result<CallStats, MediaError> {
        if c.is_empty() {
            Err(MediaError::UnknownCall(c.into()))
        } else {
            Ok(CallStats {
                call_id: c.into(),
                ..Default::default()
            })
        }
    }
    fn query(&self, c: &str, _: Instant) -> Option<CallStats> {
        // Tags and stream fields from the request exercise the reply shaping.
        Some(CallStats {
            call_id: c.into(),
            tags: vec![c.into()],
            streams: vec![StreamPairStats {
                media: c.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }
    fn list(&self, limit: usize) -> Vec<String> {
        (0..limit.min(3)).map(|i| i.to_string()).collect()
    }
    fn totals(&self) -> Totals {
        Totals::default()
    }
    fn has_interface(&self, name: &str) -> bool {
        // Some names exist, some do not: both paths of `direction` get exercised.
        name.len() % 2 == 0
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(n)) = bencode::scan(data) {
        assert!(n <= data.len());
    }
    if let Ok(v) = bencode::decode(data) {
        // Whatever decodes re-encodes and decodes to the same value.
        let again = bencode::encode(&v).expect("decoded value encodes");
        assert_eq!(
            bencode::decode(&again).expect("re-encoded value decodes"),
            v
        );
    }
    let _ = Request::parse(data);

    let dispatcher = Dispatcher::new(Arc::new(Stub));
    let src = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if let Some(reply) = dispatcher.handle(src, data) {
        let (cookie, body) = message::split(&reply).expect("reply has a cookie");
        let (req_cookie, _) = message::split(data).expect("replied to a message with a cookie");
        assert_eq!(cookie, req_cookie);
        assert!(matches!(bencode::decode(body), Ok(bencode::Value::Dict(_))));
        // A retransmission gets the identical reply.
        assert_eq!(dispatcher.handle(src, data).as_deref(), Some(&reply[..]));
    }
});
