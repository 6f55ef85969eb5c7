//! Runs ng requests against an [`NgEngine`] and shapes the replies the way rtpengine does.
//!
//! Replies: `{"result":"ok", …}` (plus `warning` for anything ignored), `{"result":"pong"}`,
//! or `{"result":"error","error-reason":…}` with no other keys. Error texts are rtpengine's
//! where rtpengine has one, because proxies log them and operators grep for them.

use super::bencode::{str_list, Dict};
use super::message::{self, Command, NgError, Request};
use super::{NgEngine, REPLY_CACHE_TTL};
use crate::{
    AddressFamily, AddressPolicy, CallStats, Flags, MediaError, PacketStats, StreamPairStats,
    StreamStats, TimeoutReason,
};
use serde_bencode::value::Value;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// rtpengine's default and our ceiling for `list` (a bigger reply may not fit a datagram).
const LIST_DEFAULT: i64 = 32;
const LIST_MAX: i64 = 1000;

/// Source IP and cookie of a command.
type CacheKey = (IpAddr, Vec<u8>);

/// Replies by (source IP, cookie), so a retransmitted command is answered identically and not
/// run twice (a second `offer` would allocate new ports). rtpengine keys by cookie alone; adding
/// the source IP keeps two proxies with colliding cookies apart and changes nothing for a real
/// retransmission, which comes from the same host.
///
/// Bounded by age (`ttl`) and count (`max_entries`, oldest evicted first).
#[derive(Debug)]
pub struct ReplyCache {
    map: HashMap<CacheKey, (Instant, Arc<[u8]>)>,
    order: VecDeque<(Instant, CacheKey)>,
    ttl: Duration,
    max_entries: usize,
}

impl ReplyCache {
    /// A cache keeping replies for `ttl`, at most `max_entries` of them.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    /// The cached reply for this cookie from this source, if still fresh.
    pub fn get(&mut self, now: Instant, src: IpAddr, cookie: &[u8]) -> Option<Arc<[u8]>> {
        self.expire(now);
        self.map
            .get(&(src, cookie.to_vec()))
            .map(|(_, r)| Arc::clone(r))
    }

    /// Remembers a reply.
    pub fn insert(&mut self, now: Instant, src: IpAddr, cookie: &[u8], reply: Arc<[u8]>) {
        self.expire(now);
        let key = (src, cookie.to_vec());
        self.map.insert(key.clone(), (now, reply));
        self.order.push_back((now, key));
        // Bounded: each pass removes one queued entry.
        while self.map.len() > self.max_entries {
            let Some((t, k)) = self.order.pop_front() else {
                break;
            };
            self.remove_if_same(t, &k);
        }
    }

    /// Number of cached replies.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if now.saturating_duration_since(*t) < self.ttl {
                break;
            }
            if let Some((t, k)) = self.order.pop_front() {
                self.remove_if_same(t, &k);
            }
        }
    }

    /// A key re-inserted later has a newer queue entry; only drop the map entry it matches.
    fn remove_if_same(&mut self, t: Instant, k: &CacheKey) {
        if self.map.get(k).is_some_and(|(inserted, _)| *inserted == t) {
            self.map.remove(k);
        }
    }
}

/// Turns ng messages into replies: cookie handling, the reply cache, command execution.
pub struct Dispatcher<E: NgEngine> {
    engine: Arc<E>,
    sip_source: bool,
    cache: Mutex<ReplyCache>,
    started: Instant,
}

impl<E: NgEngine> Dispatcher<E> {
    /// A dispatcher with rtpengine's 30 s cookie cache, at most 100 000 replies.
    pub fn new(engine: Arc<E>) -> Self {
        Self::with_cache(engine, ReplyCache::new(REPLY_CACHE_TTL, 100_000))
    }

    /// A dispatcher with a caller-sized cache (tests, memory-tight deployments).
    pub fn with_cache(engine: Arc<E>, cache: ReplyCache) -> Self {
        Self {
            engine,
            sip_source: false,
            cache: Mutex::new(cache),
            started: Instant::now(),
        }
    }

    /// rtpengine's `--sip-source`: without an explicit `trust address` flag, use the SIP
    /// source (`received from`) instead of SDP addresses.
    pub fn sip_source(mut self, on: bool) -> Self {
        self.sip_source = on;
        self
    }

    /// The engine commands run against.
    pub fn engine(&self) -> &Arc<E> {
        &self.engine
    }

    /// Handles one complete message (`cookie SP body`) from `src`. Returns the framed reply,
    /// or `None` when there is no cookie to reply to (rtpengine drops those too).
    pub fn handle(&self, src: IpAddr, msg: &[u8]) -> Option<Arc<[u8]>> {
        let (cookie, body) = match message::split(msg) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(%src, error = %e, "ng message dropped");
                return None;
            }
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            let shown = &msg[..msg.len().min(4096)];
            tracing::debug!(%src, msg = %String::from_utf8_lossy(shown).escape_debug(), "ng received");
        }
        let now = Instant::now();
        if let Some(reply) = self.lock_cache().get(now, src, cookie) {
            tracing::info!(%src, cookie = %String::from_utf8_lossy(cookie), "ng duplicate, cached reply");
            return Some(reply);
        }
        let reply = self.execute(body);
        let framed: Arc<[u8]> = match message::frame_reply(cookie, &reply) {
            Ok(f) => f.into(),
            Err(e) => {
                tracing::error!(error = %e, "ng reply encoding failed");
                let fallback = Dict::new()
                    .str("result", "error")
                    .str("error-reason", "Internal error encoding reply")
                    .build();
                message::frame_reply(cookie, &fallback).ok()?.into()
            }
        };
        self.lock_cache()
            .insert(Instant::now(), src, cookie, Arc::clone(&framed));
        Some(framed)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, ReplyCache> {
        // A panic while holding this lock leaves a consistent cache; keep using it.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one request body and returns the reply dictionary (never fails: errors become
    /// `result: error`).
    pub fn execute(&self, body: &[u8]) -> Value {
        let mut req = match Request::parse(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "ng protocol error");
                return error_reply(&e.to_string());
            }
        };
        req.flags.address = if req.address_trust.unwrap_or(!self.sip_source) {
            AddressPolicy::Sdp
        } else {
            AddressPolicy::Source
        };
        tracing::debug!(command = ?req.command, call_id = ?req.call_id, "ng command");
        let result = match &req.command {
            Command::Ping => return Dict::new().str("result", "pong").build(),
            Command::Offer | Command::Answer => {
                let flags = self.resolve_interfaces(&req.flags, &mut req.warnings);
                self.offer_answer(&req, &flags)
            }
            Command::Delete => self.delete(&req),
            Command::Query => self.query(&req),
            Command::List => self.list(&req),
            Command::Statistics => Ok(self.statistics()),
            Command::Unsupported(c) => Err(format!("Unsupported command: {c}")),
            Command::Unknown(_) => Err("Unrecognized command".to_owned()),
        };
        match result {
            Ok(mut d) => {
                if !req.warnings.is_empty() && !d.contains("warning") {
                    for w in &req.warnings {
                        tracing::info!(call_id = ?req.call_id, warning = %w, "ng request");
                    }
                    d = d.str("warning", req.warnings.join("; "));
                }
                d.str("result", "ok").build()
            }
            Err(reason) => {
                tracing::warn!(command = ?req.command, call_id = ?req.call_id, %reason, "ng command failed");
                error_reply(&reason)
            }
        }
    }

    /// rtpengine never fails a call over a `direction` name it does not know
    /// (`__init_interface` in its `daemon/call.c`): `internal` and `external`, when no
    /// interface is called so, are the legacy selectors of IPv4 and IPv6 — for the side the
    /// SDP goes to, whose address family they set; for the sending side its SDP's family
    /// rules — and any other name is logged and the default interface used. So does this
    /// relay, with the warning in the reply as well as the log. The engine itself refuses
    /// unknown names, which is what its other users want.
    fn resolve_interfaces(&self, flags: &Flags, warnings: &mut Vec<String>) -> Flags {
        let mut flags = flags.clone();
        for (i, slot) in flags.direction.iter_mut().enumerate() {
            let Some(name) = slot.as_deref() else {
                continue;
            };
            if self.engine.has_interface(name) {
                continue;
            }
            let legacy = match name {
                "internal" => Some(AddressFamily::Ip4),
                "external" => Some(AddressFamily::Ip6),
                _ => None,
            };
            match legacy {
                Some(family) if i == 1 => flags.address_family = Some(family),
                Some(_) => {}
                None => warnings.push(format!("Interface '{name}' not found, using default")),
            }
            *slot = None;
        }
        flags
    }

    fn offer_answer(&self, req: &Request, flags: &Flags) -> Result<Dict, String> {
        let sdp = req.sdp.as_deref().ok_or("No SDP body in message")?;
        let call_id = req.call_id.as_deref().ok_or("No call-id in message")?;
        let from_tag = req.from_tag.as_deref().ok_or("No from-tag in message")?;
        let now = Instant::now();
        let out = if req.command == Command::Offer {
            self.engine.offer(call_id, from_tag, sdp, flags, now)
        } else {
            let to_tag = req.to_tag.as_deref().ok_or("No to-tag in message")?;
            let answered = self
                .engine
                .answer(call_id, from_tag, to_tag, sdp, flags, now);
            if answered.is_ok() {
                // rtpengine's media timeouts run from the answer on.
                if let Err(e) = self.engine.established(call_id, now) {
                    tracing::debug!(call_id, error = %e, "established after answer");
                }
            }
            answered
        };
        out.map(|sdp| Dict::new().str("sdp", sdp))
            .map_err(|e| reason(&e))
    }

    fn delete(&self, req: &Request) -> Result<Dict, String> {
        let call_id = req.call_id.as_deref().ok_or("No call-id in message")?;
        // Like rtpengine: the to-tag only narrows the delete when the `to-tag` flag says so.
        let to_tag = if req.honour_to_tag {
            req.to_tag.as_deref()
        } else {
            None
        };
        match self
            .engine
            .delete(call_id, req.from_tag.as_deref(), to_tag, Instant::now())
        {
            Ok(stats) if req.fast => {
                let _ = stats;
                Ok(Dict::new())
            }
            Ok(stats) => Ok(call_stats(Dict::new(), &stats)),
            Err(MediaError::UnknownCall(_) | MediaError::UnknownTag(_)) if !req.fatal => {
                Ok(Dict::new().str("warning", "Call-ID not found or tags didn't match"))
            }
            Err(MediaError::UnknownCall(_) | MediaError::UnknownTag(_)) => {
                Err("Call-ID not found or tags didn't match".into())
            }
            Err(e) => Err(reason(&e)),
        }
    }

    fn query(&self, req: &Request) -> Result<Dict, String> {
        let call_id = req.call_id.as_deref().ok_or("No call-id in message")?;
        let stats = self
            .engine
            .query(call_id, Instant::now())
            .ok_or("Unknown call-id")?;
        Ok(call_stats(Dict::new(), &stats))
    }

    fn list(&self, req: &Request) -> Result<Dict, String> {
        let limit = req.limit.unwrap_or(LIST_DEFAULT);
        if limit < 0 {
            return Err("invalid limit, must be >= 0".into());
        }
        let limit = usize::try_from(limit.min(LIST_MAX)).unwrap_or(0);
        Ok(Dict::new().val("calls", str_list(self.engine.list(limit))))
    }

    /// rtpengine's `statistics` shape: `statistics.currentstatistics` / `.totalstatistics`.
    fn statistics(&self) -> Dict {
        let t = self.engine.totals();
        let current = Dict::new()
            .int("sessionsown", t.current_sessions)
            .int("sessionsforeign", 0)
            .int("sessionstotal", t.current_sessions)
            .int("portsinuse", t.ports_in_use)
            .int("portsresting", t.ports_resting)
            .build();
        let total = Dict::new()
            .str("uptime", self.started.elapsed().as_secs().to_string())
            .int("managedsessions", t.sessions)
            .int("timeoutsessions", t.timeouts.of(TimeoutReason::NoMedia))
            .int(
                "silenttimeoutsessions",
                t.timeouts.of(TimeoutReason::Silent),
            )
            .int("offertimeoutsessions", t.timeouts.of(TimeoutReason::Offer))
            .int("finaltimeoutsessions", t.timeouts.of(TimeoutReason::Final))
            .int("relayedpackets_user", t.packets_relayed)
            .int("relayedbytes_user", t.bytes_relayed)
            .int("relayedpacketerrors_user", t.packets_dropped)
            .int("relayedpackets", t.packets_relayed)
            .int("relayedbytes", t.bytes_relayed)
            .int("relayedpacketerrors", t.packets_dropped)
            .build();
        let stats = Dict::new()
            .val("currentstatistics", current)
            .val("totalstatistics", total)
            .build();
        Dict::new().val("statistics", stats)
    }
}

/// An engine error as rtpengine words it where it has wording (proxies log it, operators
/// grep for it); otherwise the engine's own text.
fn reason(e: &MediaError) -> String {
    match e {
        MediaError::UnknownCall(_) | MediaError::UnknownTag(_) => "Unknown call-id".into(),
        MediaError::Sdp(e) => format!("Failed to parse SDP: {e}"),
        MediaError::NoPorts => "Ran out of ports".into(),
        other => other.to_string(),
    }
}

fn error_reply(reason: &str) -> Value {
    Dict::new()
        .str("result", "error")
        .str("error-reason", reason)
        .build()
}

/// Unix seconds and microseconds `ms_ago` milliseconds before now.
fn unix_ago(ms_ago: u64) -> (u64, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let t = now.saturating_sub(Duration::from_millis(ms_ago));
    (t.as_secs(), u64::from(t.subsec_micros()))
}

/// rtpengine's `stats` dictionary of one stream (and of `totals.RTP`/`totals.RTCP`).
fn stats_dict(s: &PacketStats) -> Value {
    Dict::new()
        .int("packets", s.packets)
        .int("bytes", s.bytes)
        .int("errors", s.errors)
        .build()
}

fn add(total: &mut PacketStats, s: &PacketStats) {
    total.packets = total.packets.saturating_add(s.packets);
    total.bytes = total.bytes.saturating_add(s.bytes);
    total.errors = total.errors.saturating_add(s.errors);
}

/// The key of party `side` in `tags`: its tag, or rtpengine's name for a party whose tag
/// is not known yet (the answerer before the answer).
fn tag_key(c: &CallStats, side: usize) -> (String, String) {
    match c.tags.get(side).filter(|t| !t.is_empty()) {
        Some(tag) => (tag.clone(), tag.clone()),
        None => (format!("<untagged {side}>"), String::new()),
    }
}

/// rtpengine's `query`/`delete` call stats (`ng_call_stats` in its `call_interfaces.c`):
/// `created`, `created_us`, `created_ts`, `last signal`, `tags` → per party `medias` →
/// `streams`, and `totals` with `RTP` and `RTCP` counters.
///
/// Each medium has two streams as in rtpengine: the RTP port (flags `RTP`, plus `RTCP` when
/// the party muxes) and the RTCP port one above (`RTCP`, plus `fallback RTCP` when muxed).
/// One difference: rtpengine counts RTCP that arrives muxed on the RTP port under the RTP
/// stream and `totals.RTP`; here all RTCP a party sent is under its RTCP stream and
/// `totals.RTCP`, so `RTP` counts media alone.
fn call_stats(d: Dict, c: &CallStats) -> Dict {
    let (created, created_us) = unix_ago(c.created_ms_ago);
    let (last_signal, _) = unix_ago(c.last_signal_ms_ago);
    // Both parties have ports as soon as there is a stream; before that, the known tags.
    let sides = if c.streams.is_empty() {
        c.tags.len().min(2)
    } else {
        2
    };
    let (mut rtp, mut rtcp) = (PacketStats::default(), PacketStats::default());
    let mut tags = Dict::new();
    for side in 0..sides {
        let (key, tag) = tag_key(c, side);
        let medias: Vec<Value> = c
            .streams
            .iter()
            .map(|pair| {
                let s = if side == 0 {
                    &pair.offerer
                } else {
                    &pair.answerer
                };
                add(&mut rtp, &s.rtp);
                add(&mut rtcp, &s.rtcp);
                media_dict(pair, s)
            })
            .collect();
        let mut td = Dict::new()
            .str("tag", &tag)
            .int("created", created)
            .val("medias", Value::List(medias));
        // Two-party calls: each side is in dialogue with (subscribed to) the other.
        if sides == 2 {
            let (other_key, other_tag) = tag_key(c, 1 - side);
            let peer = || {
                Value::List(vec![Dict::new()
                    .str("tag", &other_tag)
                    .str("type", "offer/answer")
                    .build()])
            };
            td = td
                .str("in dialogue with", other_key)
                .val("subscriptions", peer())
                .val("subscribers", peer());
        }
        tags = tags.val(&key, td.build());
    }
    let totals = Dict::new()
        .val("RTP", stats_dict(&rtp))
        .val("RTCP", stats_dict(&rtcp))
        .build();
    d.int("created", created)
        .int("created_us", created_us)
        .int(
            "created_ts",
            created.saturating_mul(1_000_000).saturating_add(created_us),
        )
        .int("last signal", last_signal)
        .val("tags", tags.build())
        .val("totals", totals)
}

/// One m-line as one party sees it (rtpengine's `ng_stats_media`).
fn media_dict(pair: &StreamPairStats, s: &StreamStats) -> Value {
    let mut flags = vec!["initialized"];
    if s.rtcp_mux {
        flags.push("rtcp-mux");
    }
    let mut d = Dict::new()
        // rtpengine numbers media from 1.
        .int("index", pair.index.saturating_add(1))
        .str("type", &pair.media)
        .val("flags", str_list(flags))
        .val("streams", Value::List(streams(s)));
    if !pair.protocol.is_empty() {
        d = d.str("protocol", &pair.protocol);
    }
    d.build()
}

/// The RTP and RTCP streams of one party (rtpengine's `ng_stats_stream`).
fn streams(s: &StreamStats) -> Vec<Value> {
    let mut rtp_flags = vec!["RTP"];
    let mut rtcp_flags = vec!["RTCP"];
    if s.rtcp_mux {
        rtp_flags.push("RTCP");
        rtcp_flags.push("fallback RTCP");
    }
    let rtp = stream_dict(s, s.local_port, s.latched, s.advertised, &s.rtp, rtp_flags);
    let rtcp = stream_dict(
        s,
        s.local_port.saturating_add(1),
        s.latched_rtcp,
        s.advertised_rtcp,
        &s.rtcp,
        rtcp_flags,
    );
    let rtp = match s.ssrc {
        Some(ssrc) => rtp.int("SSRC", ssrc),
        None => rtp,
    };
    vec![rtp.build(), rtcp.build()]
}

fn stream_dict(
    party: &StreamStats,
    local_port: u16,
    latched: Option<SocketAddr>,
    advertised: Option<SocketAddr>,
    stats: &PacketStats,
    mut flags: Vec<&str>,
) -> Dict {
    // rtpengine: `filled` once the endpoint is known from SDP, `confirmed` once packets
    // came from it.
    if advertised.is_some() {
        flags.push("filled");
    }
    if latched.is_some() {
        flags.push("confirmed");
    }
    let mut d = Dict::new().int("local port", local_port);
    // rtpengine's `ng_stats_stream`: the bound address and its family next to the port.
    if let Some(ip) = party.local_address {
        d = d
            .str("local address", ip.to_string())
            .str("family", AddressFamily::of(ip).to_string());
    }
    d
        // Where media for this party goes now: the latched source, else its SDP address.
        .val("endpoint", endpoint_dict(latched.or(advertised)))
        .val("advertised endpoint", endpoint_dict(advertised))
        .int(
            "last packet",
            stats.last_packet_ms_ago.map_or(0, |ago| unix_ago(ago).0),
        )
        .val("flags", str_list(flags))
        .val("stats", stats_dict(stats))
}

/// rtpengine's endpoint dictionary; empty when the address is unknown, as rtpengine sends it.
fn endpoint_dict(ep: Option<SocketAddr>) -> Value {
    let Some(ep) = ep else {
        return Dict::new().build();
    };
    let family = if ep.is_ipv4() { "IPv4" } else { "IPv6" };
    Dict::new()
        .str("family", family)
        .str("address", ep.ip().to_string())
        .int("port", ep.port())
        .build()
}

impl From<NgError> for Value {
    fn from(e: NgError) -> Value {
        error_reply(&e.to_string())
    }
}
