//! Registration of the node to trunks that require it (a carrier that learns where its
//! customer is from a REGISTER, as a PBX's "register = yes" gateway or Kamailio's
//! `uac_reg`): each trunk with `[trunks.register]` is sent a REGISTER for its
//! address-of-record with the node's Contact, refreshed before the binding expires, and
//! retried with exponential back-off when it fails or goes unanswered. A 401/407 is
//! answered with the trunk's `[trunks.outbound_auth]` credentials; a 423 takes the
//! registrar's Min-Expires.
//!
//! Like the health pings, the REGISTERs are requests of the node outside any call: their
//! branch names them (`BRANCH`), the dispatcher hands their responses here before any
//! dialog lookup, and only an answer from the trunk's address counts. Over UDP a
//! REGISTER is retransmitted as a non-INVITE client transaction is (RFC 3261 §17.1.2:
//! from T1 doubling to T2, given up after 64·T1); over TCP it is sent once.

use crate::router::Trunk;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trunkline_sip::digest::{challenge_headers, Challenge};
use trunkline_sip::{HeaderName, Response, Transport};

/// Prefix of the Via branch of every REGISTER the node sends (magic cookie first).
pub const BRANCH: &str = "z9hG4bK-tlrg-";

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// One trunk's registration settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterConfig {
    /// The address-of-record's user (`sip:<user>@<domain>`).
    pub user: String,
    /// The address-of-record's and the Request-URI's domain.
    pub domain: String,
    /// The binding lifetime asked for.
    pub expires: Duration,
    /// The first retry after a failure; each failure in a row doubles it up to
    /// `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// Where a trunk's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegState {
    /// Not registered yet: the first REGISTER is out.
    Registering,
    /// Bound until `RegStatus::expires_ms`; refreshed before then.
    Registered,
    /// The last attempt failed (refused, timed out); the next is at `RegStatus::retry_ms`.
    Failed,
    /// The node is shutting down and has removed its binding (REGISTER with Expires 0).
    Unregistered,
}

impl RegState {
    pub fn as_str(self) -> &'static str {
        match self {
            RegState::Registering => "registering",
            RegState::Registered => "registered",
            RegState::Failed => "failed",
            RegState::Unregistered => "unregistered",
        }
    }
}

/// A trunk's registration, as reported (metrics, the log, the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegStatus {
    pub state: RegState,
    /// When the binding the registrar granted ends (ms since the epoch; 0: none).
    pub expires_ms: u64,
    /// The status of the last final answer (0: none yet; 408: no answer).
    pub last_status: u16,
    /// When `state` last changed (ms since the epoch).
    pub changed_ms: u64,
}

/// A REGISTER to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub trunk: Arc<str>,
    pub bytes: bytes::Bytes,
}

/// A change of a trunk's registration state, for the metrics and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub trunk: Arc<str>,
    pub state: RegState,
    pub last_status: u16,
}

/// The REGISTER in flight for a trunk.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    /// Sent first at; given up at `+ 64·T1`.
    sent: Instant,
    next_resend: Option<Instant>,
    interval: Duration,
    bytes: bytes::Bytes,
    /// It carries an answer to a challenge: another challenge means the credentials
    /// are wrong (unless it says stale).
    answered: bool,
    /// The binding lifetime it asks for.
    expires: Duration,
}

#[derive(Debug)]
struct State {
    cfg: RegisterConfig,
    to: SocketAddr,
    call_id: String,
    from_tag: String,
    cseq: u32,
    state: RegState,
    expires_ms: u64,
    last_status: u16,
    changed_ms: u64,
    /// When the next REGISTER goes (a refresh or a retry).
    next_at: Instant,
    failures: u32,
    /// The registrar's Min-Expires, once it sent 423.
    min_expires: Option<Duration>,
    in_flight: Option<InFlight>,
    /// The node is shutting down: the binding is being removed and never refreshed.
    closing: bool,
}

/// How the node is reached on a trunk's transport: `host:port` and the Via token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub hostport: String,
    pub transport: Transport,
}

/// The registrations of every trunk that requires one, by trunk name.
#[derive(Debug, Default)]
pub struct Registrations {
    states: Mutex<HashMap<Arc<str>, State>>,
    seq: AtomicU64,
}

impl Registrations {
    /// The registration of `trunk`, if it registers.
    pub fn status(&self, trunk: &str) -> Option<RegStatus> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(trunk).map(|s| RegStatus {
            state: s.state,
            expires_ms: s.expires_ms,
            last_status: s.last_status,
            changed_ms: s.changed_ms,
        })
    }

    /// The REGISTERs due at `now` among `trunks` (new ones, refreshes, retries and
    /// retransmissions), with the changes that unanswered ones made; `me` says how the
    /// node is reached on a trunk (`None`: not now, no listener of its transport).
    /// Trunks no longer configured, or whose settings changed, start over.
    pub fn due(
        &self,
        trunks: &[Trunk],
        now: Instant,
        me: impl Fn(&Trunk) -> Option<Me>,
    ) -> (Vec<Send>, Vec<Change>) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|name, s| {
            trunks
                .iter()
                .any(|t| &t.name == name && t.register.as_ref() == Some(&s.cfg) && t.addr == s.to)
        });
        let (mut sends, mut changes) = (Vec::new(), Vec::new());
        for t in trunks {
            let Some(cfg) = &t.register else { continue };
            if t.addr.port() == 0 {
                // Named by DNS and not resolved yet.
                continue;
            }
            let s = states.entry(t.name.clone()).or_insert_with(|| State {
                cfg: cfg.clone(),
                to: t.addr,
                call_id: format!("tlrg-{:016x}", rand::random::<u64>()),
                from_tag: format!("{:016x}", rand::random::<u64>()),
                cseq: 0,
                state: RegState::Registering,
                expires_ms: 0,
                last_status: 0,
                changed_ms: crate::directory::now_ms(),
                next_at: now,
                failures: 0,
                min_expires: None,
                in_flight: None,
                closing: false,
            });
            if s.state == RegState::Registered
                && s.failures > 0
                && s.expires_ms <= crate::directory::now_ms()
            {
                // Refreshes failed until the binding ran out.
                if let Some(c) = set_state(&t.name, s, RegState::Failed) {
                    changes.push(c);
                }
            }
            if let Some(f) = &mut s.in_flight {
                if now >= f.sent + 64 * T1 {
                    // No final answer in time: the registrar is unreachable for now.
                    s.in_flight = None;
                    if let Some(c) = failed(&t.name, s, 408, now) {
                        changes.push(c);
                    }
                } else if f.next_resend.is_some_and(|at| now >= at) {
                    f.interval = (f.interval * 2).min(T2);
                    f.next_resend = Some(now + f.interval);
                    sends.push(Send {
                        trunk: t.name.clone(),
                        bytes: f.bytes.clone(),
                    });
                }
                continue;
            }
            if now < s.next_at || s.closing {
                continue;
            }
            let Some(me) = me(t) else { continue };
            sends.push(self.register(t, s, &me, None, now));
        }
        (sends, changes)
    }

    /// A response to a REGISTER (its top Via branch starts with `BRANCH`) from `from`,
    /// with how the node is reached on that trunk; what it asks to send (the answer to
    /// a challenge) and the change it makes.
    pub fn on_response(
        &self,
        resp: &Response,
        from: SocketAddr,
        trunks: &[Trunk],
        now: Instant,
        me: impl Fn(&Trunk) -> Option<Me>,
    ) -> (Option<Send>, Option<Change>) {
        let Some(seq) = resp
            .headers
            .top_branch()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|b| b.strip_prefix(BRANCH))
            .and_then(|b| b.parse::<u64>().ok())
        else {
            return (None, None);
        };
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let Some((name, s)) = states
            .iter_mut()
            .find(|(_, s)| s.in_flight.as_ref().is_some_and(|f| f.seq == seq))
        else {
            return (None, None);
        };
        if s.to != from {
            return (None, None);
        }
        let name = name.clone();
        if resp.status < 200 {
            // Proceeding: retransmit at T2 from now on (RFC 3261 §17.1.2.2).
            if let Some(f) = &mut s.in_flight {
                f.interval = T2;
                f.next_resend = f.next_resend.map(|_| now + T2);
            }
            return (None, None);
        }
        let Some(f) = s.in_flight.take() else {
            return (None, None);
        };
        let Some(t) = trunks.iter().find(|t| t.name == name) else {
            return (None, None);
        };
        match resp.status {
            200..=299 if s.closing => {
                s.last_status = resp.status;
                s.expires_ms = 0;
                (None, set_state(&name, s, RegState::Unregistered))
            }
            200..=299 => {
                let granted = granted_expires(resp, f.expires);
                s.failures = 0;
                s.last_status = resp.status;
                s.expires_ms = crate::directory::now_ms() + granted.as_millis() as u64;
                // Refresh a minute before the end, or halfway for short bindings.
                let refresh = (granted / 2).max(granted.saturating_sub(Duration::from_secs(60)));
                s.next_at = now + refresh.max(Duration::from_secs(1));
                (None, set_state(&name, s, RegState::Registered))
            }
            401 | 407 => {
                let Some((want, header)) = challenge_headers(resp.status) else {
                    return (None, None);
                };
                let challenge = resp.headers.get_all(want).find_map(|v| Challenge::parse(v));
                match (challenge, &t.outbound_credentials, me(t)) {
                    (Some(ch), Some(_), Some(me)) if !f.answered || ch.stale => {
                        let send = self.register(t, s, &me, Some((header, ch)), now);
                        (Some(send), None)
                    }
                    _ => (None, failed(&name, s, resp.status, now)),
                }
            }
            423 => {
                // Interval Too Brief: ask again at once with the registrar's minimum.
                let min = resp
                    .headers
                    .get_named("Min-Expires")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                match min {
                    Some(min) if min > f.expires && s.min_expires.is_none() => {
                        s.min_expires = Some(min);
                        s.next_at = now;
                        s.last_status = 423;
                        (None, None)
                    }
                    _ => (None, failed(&name, s, 423, now)),
                }
            }
            status => (None, failed(&name, s, status, now)),
        }
    }

    /// The node is going away: every binding a registrar may still hold is removed with
    /// a REGISTER with Expires 0 (RFC 3261 §10.2.2), so the carrier stops sending calls
    /// to a node that is gone instead of until the binding runs out. No registration is
    /// refreshed or retried after this. Returns the REGISTERs to send.
    pub fn unregister_all(
        &self,
        trunks: &[Trunk],
        now: Instant,
        me: impl Fn(&Trunk) -> Option<Me>,
    ) -> Vec<Send> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut sends = Vec::new();
        for t in trunks {
            let Some(s) = states.get_mut(&t.name) else {
                continue;
            };
            if s.closing {
                continue;
            }
            s.closing = true;
            // A REGISTER in flight may bind: remove whatever it and the last one did.
            let bound = s.expires_ms > crate::directory::now_ms() || s.in_flight.is_some();
            if !bound {
                s.in_flight = None;
                continue;
            }
            let Some(me) = me(t) else { continue };
            sends.push(self.register(t, s, &me, None, now));
        }
        sends
    }

    /// Whether REGISTERs that remove bindings are still waiting for their answer.
    pub fn unregistering(&self) -> bool {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.values().any(|s| s.closing && s.in_flight.is_some())
    }

    /// Builds the next REGISTER of `t` (the next CSeq, a new branch) and puts it in
    /// flight; with `auth`, it answers that challenge.
    fn register(
        &self,
        t: &Trunk,
        s: &mut State,
        me: &Me,
        auth: Option<(HeaderName, Challenge)>,
        now: Instant,
    ) -> Send {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        s.cseq = s.cseq.wrapping_add(1);
        let expires = if s.closing {
            Duration::ZERO
        } else {
            s.min_expires.unwrap_or(s.cfg.expires).max(s.cfg.expires)
        };
        let uri = format!("sip:{}", s.cfg.domain);
        let aor = format!("sip:{}@{}", s.cfg.user, s.cfg.domain);
        let tr = me.transport.via_token();
        let contact_params = match me.transport {
            Transport::Udp => String::new(),
            other => format!(";transport={}", other.via_token().to_ascii_lowercase()),
        };
        let mut text = format!(
            "REGISTER {uri} SIP/2.0\r\n\
             Via: SIP/2.0/{tr} {me};branch={BRANCH}{seq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{aor}>;tag={tag}\r\n\
             To: <{aor}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{me}{contact_params}>\r\n\
             Expires: {secs}\r\n",
            me = me.hostport,
            tag = s.from_tag,
            call_id = s.call_id,
            cseq = s.cseq,
            user = s.cfg.user,
            secs = expires.as_secs(),
        );
        let answered = auth.is_some();
        if let (Some((header, ch)), Some(creds)) = (auth, &t.outbound_credentials) {
            let cnonce = format!("{:016x}", rand::random::<u64>());
            let value = ch.answer(
                &creds.username,
                &creds.password,
                "REGISTER",
                &uri,
                &cnonce,
                1,
            );
            text.push_str(&format!("{}: {value}\r\n", header.canonical()));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        let bytes = bytes::Bytes::from(text);
        s.in_flight = Some(InFlight {
            seq,
            sent: now,
            next_resend: (t.transport == Transport::Udp).then_some(now + T1),
            interval: T1,
            bytes: bytes.clone(),
            answered,
            expires,
        });
        Send {
            trunk: t.name.clone(),
            bytes,
        }
    }
}

/// The lifetime the registrar granted: the `expires` of our Contact, else the Expires
/// header, else what we asked for (RFC 3261 §10.2.4).
fn granted_expires(resp: &Response, asked: Duration) -> Duration {
    let from_contact = resp
        .headers
        .contact()
        .and_then(|c| c.params.get("expires").flatten()?.parse::<u64>().ok());
    let from_header = resp
        .headers
        .get(HeaderName::Expires)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    from_contact
        .or(from_header)
        .map_or(asked, Duration::from_secs)
}

fn set_state(trunk: &Arc<str>, s: &mut State, state: RegState) -> Option<Change> {
    if s.state == state {
        return None;
    }
    s.state = state;
    s.changed_ms = crate::directory::now_ms();
    Some(Change {
        trunk: trunk.clone(),
        state,
        last_status: s.last_status,
    })
}

/// An attempt failed with `status`: retry after the back-off. A binding the registrar
/// granted earlier is kept as registered until it ends.
fn failed(trunk: &Arc<str>, s: &mut State, status: u16, now: Instant) -> Option<Change> {
    s.last_status = status;
    s.failures = s.failures.saturating_add(1);
    let backoff = s
        .cfg
        .retry_min
        .saturating_mul(1u32 << (s.failures - 1).min(16))
        .min(s.cfg.retry_max);
    s.next_at = now + backoff;
    let still_bound = s.expires_ms > crate::directory::now_ms();
    if still_bound {
        return None;
    }
    let change = set_state(trunk, s, RegState::Failed);
    if change.is_none() {
        // Still failing: the log hears of it once per state change, the metrics always.
        tracing::debug!(trunk = %trunk, status, "trunk registration failed again");
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_b2bua::PeerCredentials;
    use trunkline_sip::{parse_message, Message};

    const ADDR: &str = "192.0.2.1:5060";

    fn trunk() -> Trunk {
        Trunk {
            register: Some(RegisterConfig {
                user: "acme".into(),
                domain: "carrier.test".into(),
                expires: Duration::from_secs(300),
                retry_min: Duration::from_secs(10),
                retry_max: Duration::from_secs(60),
            }),
            outbound_credentials: Some(PeerCredentials {
                username: "acme".into(),
                password: "s3cret".into(),
            }),
            ..Trunk::plain("carrier", ADDR.parse().unwrap())
        }
    }

    fn me(_: &Trunk) -> Option<Me> {
        Some(Me {
            hostport: "198.51.100.5:5060".into(),
            transport: Transport::Udp,
        })
    }

    fn request(s: &Send) -> trunkline_sip::Request {
        match parse_message(s.bytes.clone()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => panic!("not a request"),
        }
    }

    fn answer(req: &trunkline_sip::Request, status: u16, extra: &str) -> Response {
        let h = &req.headers;
        let text = format!(
            "SIP/2.0 {status} X\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=r1\r\nCall-ID: {}\r\n\
             CSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
            String::from_utf8_lossy(h.get(HeaderName::Via).unwrap()),
            String::from_utf8_lossy(h.get(HeaderName::From).unwrap()),
            String::from_utf8_lossy(h.get(HeaderName::To).unwrap()),
            String::from_utf8_lossy(h.get(HeaderName::CallId).unwrap()),
            String::from_utf8_lossy(h.get(HeaderName::CSeq).unwrap()),
        );
        match parse_message(bytes::Bytes::from(text)).unwrap() {
            Message::Response(r) => r,
            Message::Request(_) => panic!("not a response"),
        }
    }

    #[test]
    fn a_challenged_register_is_answered_bound_and_refreshed() {
        let r = Registrations::default();
        let trunks = vec![trunk()];
        let from: SocketAddr = ADDR.parse().unwrap();
        let t0 = Instant::now();
        let (sends, _) = r.due(&trunks, t0, me);
        assert_eq!(sends.len(), 1);
        let first = request(&sends[0]);
        assert_eq!(first.uri.to_string(), "sip:carrier.test");
        assert_eq!(r.status("carrier").unwrap().state, RegState::Registering);
        // Unanswered over UDP: retransmitted after T1.
        let (again, _) = r.due(&trunks, t0 + T1, me);
        assert_eq!(again[0].bytes, sends[0].bytes);
        // A challenge: the next CSeq, the same Call-ID, credentials for REGISTER.
        let ch = answer(
            &first,
            401,
            "WWW-Authenticate: Digest realm=\"carrier.test\", nonce=\"abc\", qop=\"auth\"\r\n",
        );
        let (send, change) = r.on_response(&ch, from, &trunks, t0, me);
        assert!(change.is_none());
        let second = request(&send.unwrap());
        assert_eq!(second.headers.cseq().unwrap().seq, 2);
        assert_eq!(
            second.headers.call_id(),
            first.headers.call_id(),
            "one Call-ID for every REGISTER to this registrar"
        );
        let auth = String::from_utf8_lossy(second.headers.get(HeaderName::Authorization).unwrap())
            .into_owned();
        assert!(auth.contains("uri=\"sip:carrier.test\""), "{auth}");
        // An answer from elsewhere does not count.
        let ok = answer(
            &second,
            200,
            "Contact: <sip:acme@198.51.100.5:5060>;expires=120\r\n",
        );
        let elsewhere: SocketAddr = "192.0.2.9:5060".parse().unwrap();
        assert_eq!(r.on_response(&ok, elsewhere, &trunks, t0, me), (None, None));
        let (_, change) = r.on_response(&ok, from, &trunks, t0, me);
        assert_eq!(change.unwrap().state, RegState::Registered);
        let st = r.status("carrier").unwrap();
        assert_eq!((st.state, st.last_status), (RegState::Registered, 200));
        // The granted 120 s, refreshed halfway (a minute before the end).
        assert!(r
            .due(&trunks, t0 + Duration::from_secs(59), me)
            .0
            .is_empty());
        let (refresh, _) = r.due(&trunks, t0 + Duration::from_secs(60), me);
        let third = request(&refresh[0]);
        assert_eq!(third.headers.cseq().unwrap().seq, 3);
        assert!(third.headers.get(HeaderName::Authorization).is_none());
    }

    #[test]
    fn shutting_down_removes_the_binding_and_nothing_is_refreshed_after() {
        let r = Registrations::default();
        let trunks = vec![trunk()];
        let from: SocketAddr = ADDR.parse().unwrap();
        let t0 = Instant::now();
        let (sends, _) = r.due(&trunks, t0, me);
        let first = request(&sends[0]);
        let ok = answer(&first, 200, "Expires: 300\r\n");
        r.on_response(&ok, from, &trunks, t0, me);
        assert_eq!(r.status("carrier").unwrap().state, RegState::Registered);
        let bye = r.unregister_all(&trunks, t0, me);
        assert_eq!(bye.len(), 1);
        let removal = request(&bye[0]);
        assert_eq!(removal.headers.cseq().unwrap().seq, 2);
        assert_eq!(removal.headers.call_id(), first.headers.call_id());
        assert_eq!(
            removal.headers.get(HeaderName::Expires).map(|v| v.to_vec()),
            Some(b"0".to_vec())
        );
        assert!(r.unregistering());
        // The registrar challenges the removal too: answered, still Expires 0.
        let ch = answer(
            &removal,
            401,
            "WWW-Authenticate: Digest realm=\"carrier.test\", nonce=\"n2\"\r\n",
        );
        let (send, _) = r.on_response(&ch, from, &trunks, t0, me);
        let answered = request(&send.unwrap());
        assert!(answered.headers.get(HeaderName::Authorization).is_some());
        assert_eq!(
            answered
                .headers
                .get(HeaderName::Expires)
                .map(|v| v.to_vec()),
            Some(b"0".to_vec())
        );
        let done = answer(&answered, 200, "");
        let (_, change) = r.on_response(&done, from, &trunks, t0, me);
        assert_eq!(change.unwrap().state, RegState::Unregistered);
        assert!(!r.unregistering());
        // Past the old refresh time nothing is sent again, and a second call sends nothing.
        assert!(r
            .due(&trunks, t0 + Duration::from_secs(600), me)
            .0
            .is_empty());
        assert!(r.unregister_all(&trunks, t0, me).is_empty());
    }

    #[test]
    fn refusals_and_silence_back_off_and_a_wrong_password_is_not_repeated() {
        let r = Registrations::default();
        let trunks = vec![trunk()];
        let from: SocketAddr = ADDR.parse().unwrap();
        let t0 = Instant::now();
        let (sends, _) = r.due(&trunks, t0, me);
        let first = request(&sends[0]);
        let ch = "WWW-Authenticate: Digest realm=\"carrier.test\", nonce=\"abc\"\r\n";
        let (send, _) = r.on_response(&answer(&first, 401, ch), from, &trunks, t0, me);
        let second = request(&send.unwrap());
        // Challenged again, not stale: the password is wrong; no third try now.
        let (send, change) = r.on_response(&answer(&second, 401, ch), from, &trunks, t0, me);
        assert!(send.is_none());
        assert_eq!(change.unwrap().state, RegState::Failed);
        assert_eq!(r.status("carrier").unwrap().last_status, 401);
        // Retried after retry_min (10 s), then 20 s after a timeout (32 s unanswered).
        assert!(r.due(&trunks, t0 + Duration::from_secs(9), me).0.is_empty());
        let at = t0 + Duration::from_secs(10);
        assert_eq!(r.due(&trunks, at, me).0.len(), 1);
        let (_, change) = r.due(&trunks, at + 64 * T1, me);
        assert!(change.is_empty(), "already failed: no new change");
        assert_eq!(r.status("carrier").unwrap().last_status, 408);
        let after = at + 64 * T1;
        assert!(r
            .due(&trunks, after + Duration::from_secs(19), me)
            .0
            .is_empty());
        assert_eq!(
            r.due(&trunks, after + Duration::from_secs(20), me).0.len(),
            1
        );
    }

    #[test]
    fn interval_too_brief_takes_min_expires_and_removed_trunks_are_forgotten() {
        let r = Registrations::default();
        let trunks = vec![trunk()];
        let from: SocketAddr = ADDR.parse().unwrap();
        let t0 = Instant::now();
        let (sends, _) = r.due(&trunks, t0, me);
        let first = request(&sends[0]);
        let resp = answer(&first, 423, "Min-Expires: 900\r\n");
        assert_eq!(r.on_response(&resp, from, &trunks, t0, me), (None, None));
        let (sends, _) = r.due(&trunks, t0, me);
        let again = request(&sends[0]);
        assert_eq!(
            again.headers.get(HeaderName::Expires).map(|v| v.to_vec()),
            Some(b"900".to_vec())
        );
        r.due(&[Trunk::plain("other", ADDR.parse().unwrap())], t0, me);
        assert!(r.status("carrier").is_none());
    }
}
