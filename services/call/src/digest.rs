//! Digest authentication of requests from peers no source rule names (RFC 3261 §22,
//! RFC 7616 with RFC 8760's SHA-256 for SIP): the node challenges with 407, and a trunk
//! whose credentials the answer proves is the caller.
//!
//! Nonces are checked without storing them: a nonce is its issue time, a serial number
//! and a keyed hash (HMAC-SHA-256 under the node's secret) of both, so the node knows any
//! nonce it made, and one older than `nonce_ttl` is answered `stale=true`. Replays are
//! refused as Kamailio's auth module does with its nonce ids: the serial picks one slot
//! of a fixed table (`max_nonces` slots) that holds the serial that owns it and the
//! highest nonce-count seen; a nonce whose slot a newer nonce took is stale, and a count
//! not above the one seen is a replay. Every check is O(1) and the memory is fixed,
//! however many calls are challenged.
//!
//! The algorithms and the parameter syntax are `trunkline_sip::digest`'s; the keyed
//! hash is RustCrypto's `hmac`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
pub use trunkline_sip::digest::Algorithm;
use trunkline_sip::digest::{digest_params, same};

/// Node-wide digest settings.
#[derive(Debug, Clone)]
pub struct DigestConfig {
    pub realm: String,
    /// Offered in this order of preference (RFC 8760 §2.4: one challenge each).
    pub algorithms: Vec<Algorithm>,
    /// How long a nonce is good for; an older one gets `stale=true`.
    pub nonce_ttl: Duration,
    /// Key of the nonces' keyed hash. Nodes that share it accept each other's nonces.
    pub secret: [u8; 32],
    /// Nonces whose nonce-count is remembered at most.
    pub max_nonces: usize,
}

/// A trunk's credentials, kept as the H(A1) of each algorithm (never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    ha1_md5: String,
    ha1_sha256: String,
}

impl Credentials {
    pub fn new(username: &str, password: &str, realm: &str) -> Credentials {
        Credentials {
            username: username.to_string(),
            ha1_md5: Algorithm::Md5.hash(&[username, realm, password]),
            ha1_sha256: Algorithm::Sha256.hash(&[username, realm, password]),
        }
    }

    fn ha1(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }
}

/// What checking a request's credentials found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No Digest credentials for our realm: challenge.
    Missing,
    /// A nonce the node made, now too old: challenge again with `stale=true` (the
    /// peer's password is not in question).
    Stale,
    /// The credentials prove user `username` (the caller's trunk).
    Valid { username: String },
    /// Wrong, forged, replayed or malformed: refuse (and count the failure).
    Invalid(&'static str),
}

/// The Digest parameters of one credentials header.
#[derive(Debug, Default)]
struct Answer {
    username: String,
    realm: String,
    nonce: String,
    uri: String,
    response: String,
    algorithm: Option<String>,
    qop: Option<String>,
    nc: Option<String>,
    cnonce: Option<String>,
}

/// Issues and checks nonces; remembers nonce-counts.
#[derive(Debug)]
pub struct DigestAuth {
    cfg: DigestConfig,
    /// Slot `serial % len`: (the serial that owns it, the highest nonce-count seen).
    slots: Mutex<Vec<(u64, u32)>>,
    next_serial: std::sync::atomic::AtomicU64,
}

type HmacSha256 = Hmac<Sha256>;

impl DigestAuth {
    pub fn new(cfg: DigestConfig) -> DigestAuth {
        DigestAuth {
            slots: Mutex::new(vec![(u64::MAX, 0); cfg.max_nonces.max(1)]),
            next_serial: std::sync::atomic::AtomicU64::new(rand::random::<u32>().into()),
            cfg,
        }
    }

    pub fn realm(&self) -> &str {
        &self.cfg.realm
    }

    fn tag(&self, issued: u64, serial: u64) -> String {
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.cfg.secret) else {
            return String::new();
        };
        mac.update(&issued.to_be_bytes());
        mac.update(&serial.to_be_bytes());
        mac.finalize().into_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A fresh nonce issued at `now` (seconds since the epoch).
    pub fn nonce(&self, now: u64) -> String {
        let serial = self
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let len = slots.len() as u64;
            if let Some(slot) = slots.get_mut((serial % len) as usize) {
                *slot = (serial, 0);
            }
        }
        format!("{now:016x}{serial:016x}{}", self.tag(now, serial))
    }

    /// The issue time and serial of a nonce this node (or one sharing its secret) made.
    fn issued(&self, nonce: &str) -> Option<(u64, u64)> {
        if nonce.len() != 64 || !nonce.is_ascii() {
            return None;
        }
        let issued = u64::from_str_radix(&nonce[..16], 16).ok()?;
        let serial = u64::from_str_radix(&nonce[16..32], 16).ok()?;
        let expected = self.tag(issued, serial);
        (expected.len() == 32 && same(expected.as_bytes(), &nonce.as_bytes()[32..]))
            .then_some((issued, serial))
    }

    /// The Proxy-Authenticate values of a challenge: one per algorithm, preferred
    /// first, all with one nonce.
    pub fn challenge(&self, now: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now);
        self.cfg
            .algorithms
            .iter()
            .map(|alg| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
                    self.cfg.realm,
                    alg.token(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Checks the credentials headers `values` of a `method` request, looking users up
    /// with `lookup`. `now` is seconds since the epoch.
    pub fn verify<'v, 'c>(
        &self,
        method: &str,
        values: impl Iterator<Item = &'v [u8]>,
        lookup: impl Fn(&str) -> Option<&'c Credentials>,
        now: u64,
    ) -> Verdict {
        // The answer for our realm; others are for proxies further on.
        let answer = values
            .filter_map(|v| std::str::from_utf8(v).ok())
            .filter_map(parse_answer)
            .find(|a| a.realm == self.cfg.realm);
        let Some(a) = answer else {
            return Verdict::Missing;
        };
        let alg = match a.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(t) => match Algorithm::from_token(t) {
                Some(alg) => alg,
                None => return Verdict::Invalid("algorithm not offered"),
            },
        };
        if !self.cfg.algorithms.contains(&alg) {
            return Verdict::Invalid("algorithm not offered");
        }
        let Some((issued, serial)) = self.issued(&a.nonce) else {
            return Verdict::Invalid("nonce not ours");
        };
        if issued > now + 5 {
            return Verdict::Invalid("nonce from the future");
        }
        if now - issued.min(now) > self.cfg.nonce_ttl.as_secs() {
            return Verdict::Stale;
        }
        // qop=auth was offered and RFC 7616 requires it: no qop is an old client's
        // answer that a replay could reuse at will.
        let (Some(qop), Some(nc), Some(cnonce)) = (&a.qop, &a.nc, &a.cnonce) else {
            return Verdict::Invalid("no qop=auth");
        };
        if !qop.eq_ignore_ascii_case("auth") {
            return Verdict::Invalid("qop is not auth");
        }
        let Ok(count) = u32::from_str_radix(nc, 16) else {
            return Verdict::Invalid("nonce-count");
        };
        let Some(creds) = lookup(&a.username) else {
            return Verdict::Invalid("unknown user");
        };
        let ha2 = alg.hash(&[method, &a.uri]);
        let expected = alg.hash(&[creds.ha1(alg), &a.nonce, nc, cnonce, qop, &ha2]);
        if !same(
            expected.as_bytes(),
            a.response.to_ascii_lowercase().as_bytes(),
        ) {
            return Verdict::Invalid("wrong response");
        }
        match self.count_is_new(serial, count) {
            Some(true) => {}
            Some(false) => return Verdict::Invalid("nonce-count replayed"),
            // A newer nonce took its slot: as good as expired.
            None => return Verdict::Stale,
        }
        Verdict::Valid {
            username: a.username,
        }
    }

    /// Records `count` for the nonce `serial` if it is higher than any seen (RFC 7616
    /// §3.4: a replay repeats one); `None` when a newer nonce owns its slot.
    fn count_is_new(&self, serial: u64, count: u32) -> Option<bool> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let len = slots.len() as u64;
        let slot = slots.get_mut((serial % len) as usize)?;
        if slot.0 != serial {
            return None;
        }
        if count <= slot.1 {
            return Some(false);
        }
        slot.1 = count;
        Some(true)
    }
}

/// Seconds since the epoch (nonces carry wall-clock time so that nodes sharing the
/// secret agree on their age).
pub fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The parameters of `Digest k=v, k="v", ...`; `None` for another scheme or garbage.
fn parse_answer(value: &str) -> Option<Answer> {
    let mut a = Answer::default();
    for (k, val) in digest_params(value)? {
        match k.to_ascii_lowercase().as_str() {
            "username" => a.username = val,
            "realm" => a.realm = val,
            "nonce" => a.nonce = val,
            "uri" => a.uri = val,
            "response" => a.response = val,
            "algorithm" => a.algorithm = Some(val),
            "qop" => a.qop = Some(val),
            "nc" => a.nc = Some(val),
            "cnonce" => a.cnonce = Some(val),
            _ => {}
        }
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(algorithms: Vec<Algorithm>) -> DigestAuth {
        DigestAuth::new(DigestConfig {
            realm: "trunkline".into(),
            algorithms,
            nonce_ttl: Duration::from_secs(300),
            secret: [7; 32],
            max_nonces: 4,
        })
    }

    /// A client's answer, as the node's own client side computes it (so the two sides
    /// are checked against each other).
    fn answer(
        alg: Algorithm,
        user: &str,
        password: &str,
        nonce: &str,
        nc: &str,
        method: &str,
    ) -> String {
        let ch = trunkline_sip::digest::Challenge {
            realm: "trunkline".into(),
            nonce: nonce.into(),
            opaque: None,
            algorithm: alg,
            qop_auth: true,
            stale: false,
        };
        let nc = u32::from_str_radix(nc, 16).unwrap();
        ch.answer(
            user,
            password,
            method,
            "sip:+15550100@192.0.2.1",
            "0a4f113b",
            nc,
        )
    }

    #[test]
    fn a_correct_answer_with_either_algorithm_proves_the_user() {
        let a = auth(vec![Algorithm::Sha256, Algorithm::Md5]);
        let creds = Credentials::new("pbx1", "s3cret", "trunkline");
        let now = epoch_secs();
        let challenge = a.challenge(now, false);
        assert_eq!(challenge.len(), 2);
        assert!(challenge[0].contains("algorithm=SHA-256"));
        assert!(challenge[1].contains("algorithm=MD5"));
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let nonce = a.nonce(now);
            let h = answer(alg, "pbx1", "s3cret", &nonce, "00000001", "INVITE");
            let v = a.verify(
                "INVITE",
                std::iter::once(h.as_bytes()),
                |u| (u == "pbx1").then_some(&creds),
                now,
            );
            assert_eq!(
                v,
                Verdict::Valid {
                    username: "pbx1".into()
                }
            );
        }
    }

    #[test]
    fn wrong_forged_stale_and_replayed_answers_are_told_apart() {
        let a = auth(vec![Algorithm::Md5]);
        let creds = Credentials::new("pbx1", "s3cret", "trunkline");
        let now = epoch_secs();
        let nonce = a.nonce(now);
        let check = |h: &str, at: u64| {
            a.verify(
                "INVITE",
                std::iter::once(h.as_bytes()),
                |u| (u == "pbx1").then_some(&creds),
                at,
            )
        };
        assert_eq!(
            check(
                &answer(
                    Algorithm::Md5,
                    "pbx1",
                    "wrong",
                    &nonce,
                    "00000001",
                    "INVITE"
                ),
                now
            ),
            Verdict::Invalid("wrong response")
        );
        assert_eq!(
            check(
                &answer(
                    Algorithm::Md5,
                    "pbx9",
                    "s3cret",
                    &nonce,
                    "00000001",
                    "INVITE"
                ),
                now
            ),
            Verdict::Invalid("unknown user")
        );
        // A nonce another secret made.
        let other = auth(vec![Algorithm::Md5]);
        let mut forged = other.nonce(now);
        forged.replace_range(60.., "0000");
        assert_eq!(
            check(
                &answer(
                    Algorithm::Md5,
                    "pbx1",
                    "s3cret",
                    &forged,
                    "00000001",
                    "INVITE"
                ),
                now
            ),
            Verdict::Invalid("nonce not ours")
        );
        // SHA-256 was not offered.
        assert_eq!(
            check(
                &answer(
                    Algorithm::Sha256,
                    "pbx1",
                    "s3cret",
                    &nonce,
                    "00000001",
                    "INVITE"
                ),
                now
            ),
            Verdict::Invalid("algorithm not offered")
        );
        // Good once; the same nonce-count again is a replay; a higher one is fine.
        let good = answer(
            Algorithm::Md5,
            "pbx1",
            "s3cret",
            &nonce,
            "00000001",
            "INVITE",
        );
        assert!(matches!(check(&good, now), Verdict::Valid { .. }));
        assert_eq!(check(&good, now), Verdict::Invalid("nonce-count replayed"));
        let next = answer(
            Algorithm::Md5,
            "pbx1",
            "s3cret",
            &nonce,
            "00000002",
            "INVITE",
        );
        assert!(matches!(check(&next, now), Verdict::Valid { .. }));
        // Past its lifetime the nonce is stale, not wrong.
        assert_eq!(check(&next, now + 301), Verdict::Stale);
        // Not an answer for our realm, or not Digest at all: a challenge is due.
        assert_eq!(check("Basic cGJ4MTpzM2NyZXQ=", now), Verdict::Missing);
        assert_eq!(
            check(&good.replace("realm=\"trunkline\"", "realm=\"other\""), now),
            Verdict::Missing
        );
    }

    #[test]
    fn a_nonce_whose_slot_a_newer_one_took_is_stale() {
        // Four slots: the fifth nonce issued takes the first one's.
        let a = auth(vec![Algorithm::Md5]);
        let creds = Credentials::new("pbx1", "s3cret", "trunkline");
        let now = epoch_secs();
        let first = a.nonce(now);
        for _ in 0..4 {
            a.nonce(now);
        }
        let h = answer(
            Algorithm::Md5,
            "pbx1",
            "s3cret",
            &first,
            "00000001",
            "INVITE",
        );
        let v = a.verify(
            "INVITE",
            std::iter::once(h.as_bytes()),
            |_| Some(&creds),
            now,
        );
        assert_eq!(v, Verdict::Stale);
        assert_eq!(a.slots.lock().unwrap().len(), 4);
    }
}
