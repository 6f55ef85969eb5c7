//! HTTP Digest as SIP uses it (RFC 3261 §22, RFC 7616, RFC 8760): the algorithms, the
//! parameter syntax of challenges and credentials, and the client's side, which answers
//! a 401/407 challenge with an `Authorization`/`Proxy-Authorization` value. The server's
//! side (nonces, replay protection) lives with the node that issues them.
//!
//! The hashes are RustCrypto's `md-5` and `sha2`; only the parameter syntax is parsed
//! here.

use md5::Md5;
use sha2::{Digest as _, Sha256};

/// A digest algorithm (the `-sess` variants are not offered by SIP peers in practice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// The `algorithm=` token.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn from_token(t: &str) -> Option<Algorithm> {
        if t.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if t.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex of the hash of `parts` joined by `:` (how every digest value —
    /// H(A1), H(A2), the response — is formed).
    pub fn hash(self, parts: &[&str]) -> String {
        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        let joined = parts.join(":");
        match self {
            Algorithm::Md5 => hex(&Md5::digest(joined.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(joined.as_bytes())),
        }
    }
}

/// Whether `a` and `b` are equal, compared whole in time independent of where they
/// differ (a secret's hash is never leaked a byte at a time).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The parameters of a `Digest k=v, k="v", ...` header value; `None` for another scheme
/// or garbage.
pub fn digest_params(value: &str) -> Option<Vec<(String, String)>> {
    let v = value.trim_start();
    let (scheme, rest) = v.split_at(v.find(char::is_whitespace)?);
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    params(rest)
}

/// Comma-separated `name=token` / `name="quoted"` pairs (RFC 3261 §25.1); `None` when
/// malformed. At most 32 pairs: a header stuffed with parameters costs no more.
pub fn params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        if out.len() >= 32 {
            return None;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || name.is_empty() {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name, value));
    }
}

/// For a 401 or 407: the header that carries the challenge and the one that carries the
/// answer (`WWW-Authenticate`/`Authorization`, `Proxy-Authenticate`/`Proxy-Authorization`).
pub fn challenge_headers(status: u16) -> Option<(crate::HeaderName, crate::HeaderName)> {
    use crate::HeaderName;
    match status {
        401 => Some((HeaderName::WwwAuthenticate, HeaderName::Authorization)),
        407 => Some((
            HeaderName::ProxyAuthenticate,
            HeaderName::ProxyAuthorization,
        )),
        _ => None,
    }
}

/// One `WWW-Authenticate`/`Proxy-Authenticate` challenge a client can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The server offered `qop=auth` (then the answer carries qop, nc and cnonce).
    pub qop_auth: bool,
    /// The server says the previous nonce expired, not that the password was wrong.
    pub stale: bool,
}

impl Challenge {
    /// A Digest challenge with an algorithm this side can compute, and, when it lists
    /// qops, one of them `auth` (an `auth-int`-only challenge is not answerable here).
    pub fn parse(value: &[u8]) -> Option<Challenge> {
        let value = std::str::from_utf8(value).ok()?;
        let mut ch = Challenge {
            realm: String::new(),
            nonce: String::new(),
            opaque: None,
            algorithm: Algorithm::Md5,
            qop_auth: false,
            stale: false,
        };
        let mut qop_listed = false;
        for (k, v) in digest_params(value)? {
            match k.to_ascii_lowercase().as_str() {
                "realm" => ch.realm = v,
                "nonce" => ch.nonce = v,
                "opaque" => ch.opaque = Some(v),
                "algorithm" => ch.algorithm = Algorithm::from_token(&v)?,
                "qop" => {
                    qop_listed = true;
                    ch.qop_auth = v.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth"));
                }
                "stale" => ch.stale = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        if ch.nonce.is_empty() || (qop_listed && !ch.qop_auth) {
            return None;
        }
        Some(ch)
    }

    /// The credentials value answering this challenge for a `method` request to `uri`
    /// (RFC 7616 §3.4.1). `cnonce` must be unpredictable and `nc` count the uses of
    /// this nonce from 1.
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let alg = self.algorithm;
        let ha1 = alg.hash(&[username, &self.realm, password]);
        let ha2 = alg.hash(&[method, uri]);
        let mut out = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\"",
            quote(username),
            quote(&self.realm),
            quote(&self.nonce)
        );
        if self.qop_auth {
            let nc = format!("{nc:08x}");
            let response = alg.hash(&[&ha1, &self.nonce, &nc, cnonce, "auth", &ha2]);
            out.push_str(&format!(
                ", response=\"{response}\", algorithm={}, cnonce=\"{}\", qop=auth, nc={nc}",
                alg.token(),
                quote(cnonce)
            ));
        } else {
            // RFC 2069 style, for servers that offer no qop.
            let response = alg.hash(&[&ha1, &self.nonce, &ha2]);
            out.push_str(&format!(
                ", response=\"{response}\", algorithm={}",
                alg.token()
            ));
        }
        if let Some(opaque) = &self.opaque {
            out.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
        }
        out
    }
}

/// `s` escaped for a quoted-string.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hashes_match_rfc_7616s_example() {
        // RFC 7616 §3.9.1 (HTTP, so method GET and uri /dir/index.html).
        for (alg, want) in [
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let ch = Challenge {
                realm: "http-auth@example.org".into(),
                nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
                opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS".into()),
                algorithm: alg,
                qop_auth: true,
                stale: false,
            };
            let a = ch.answer(
                "Mufasa",
                "Circle of Life",
                "GET",
                "/dir/index.html",
                "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
                1,
            );
            assert!(a.contains(&format!("response=\"{want}\"")), "{alg:?}: {a}");
            assert!(a.contains("nc=00000001"));
            assert!(a.contains("opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""));
        }
    }

    #[test]
    fn challenges_are_read_as_peers_send_them() {
        let ch = Challenge::parse(
            b"Digest realm=\"carrier.example\", nonce=\"abc\", algorithm=SHA-256, \
              qop=\"auth,auth-int\", stale=TRUE",
        )
        .unwrap();
        assert_eq!(ch.realm, "carrier.example");
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        assert!(ch.qop_auth && ch.stale);
        // No algorithm means MD5; no qop is the RFC 2069 form.
        let old = Challenge::parse(b"Digest realm=\"r\", nonce=\"n\"").unwrap();
        assert_eq!(old.algorithm, Algorithm::Md5);
        assert!(!old.qop_auth);
        let a = old.answer("u", "p", "INVITE", "sip:x@y", "c", 1);
        assert!(!a.contains("qop") && !a.contains("cnonce"));
        // Not answerable: another scheme, an unknown algorithm, auth-int only, no nonce.
        assert!(Challenge::parse(b"Basic realm=\"r\"").is_none());
        assert!(
            Challenge::parse(b"Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256").is_none()
        );
        assert!(Challenge::parse(b"Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"").is_none());
        assert!(Challenge::parse(b"Digest realm=\"r\"").is_none());
    }

    #[test]
    fn malformed_parameters_are_no_answer() {
        assert!(params("a=\"unterminated").is_none());
        assert!(params("=x").is_none());
        assert!(params(&"a=1,".repeat(40)).is_none());
        let p = params(" username=\"a\\\"b\", nc=00000001").unwrap();
        assert_eq!(p[0], ("username".into(), "a\"b".into()));
        assert_eq!(p[1], ("nc".into(), "00000001".into()));
    }
}
