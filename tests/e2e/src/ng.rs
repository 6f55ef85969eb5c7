//! A small client of rtpengine's ng control protocol (bencode over UDP), to drive
//! `trunkline-relay` and rtpengine the same way in the tests.

use crate::NODE_IP;
use anyhow::{anyhow, bail, ensure, Result};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A bencode value.
#[derive(Clone, Debug)]
pub enum Bv {
    Int(i64),
    Str(Vec<u8>),
    List(Vec<Bv>),
    Dict(BTreeMap<Vec<u8>, Bv>),
}

impl Bv {
    /// Appends its encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bv::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bv::Str(s) => {
                out.extend_from_slice(format!("{}:", s.len()).as_bytes());
                out.extend_from_slice(s);
            }
            Bv::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Bv::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Bv::Str(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes the value at `*i`, moving `*i` past it.
    pub fn decode(b: &[u8], i: &mut usize) -> Result<Bv> {
        let c = *b.get(*i).ok_or_else(|| anyhow!("bencode: truncated"))?;
        match c {
            b'i' => {
                let end = *i
                    + b[*i..]
                        .iter()
                        .position(|&x| x == b'e')
                        .ok_or_else(|| anyhow!("bencode: bad int"))?;
                let n = std::str::from_utf8(&b[*i + 1..end])?.parse()?;
                *i = end + 1;
                Ok(Bv::Int(n))
            }
            b'l' | b'd' => {
                *i += 1;
                let mut list = Vec::new();
                let mut dict = BTreeMap::new();
                while b.get(*i) != Some(&b'e') {
                    ensure!(*i < b.len(), "bencode: truncated container");
                    if c == b'l' {
                        list.push(Bv::decode(b, i)?);
                    } else {
                        let Bv::Str(k) = Bv::decode(b, i)? else {
                            bail!("bencode: non-string key");
                        };
                        dict.insert(k, Bv::decode(b, i)?);
                    }
                }
                *i += 1;
                Ok(if c == b'l' {
                    Bv::List(list)
                } else {
                    Bv::Dict(dict)
                })
            }
            b'0'..=b'9' => {
                let colon = *i
                    + b[*i..]
                        .iter()
                        .position(|&x| x == b':')
                        .ok_or_else(|| anyhow!("bencode: bad string"))?;
                let n: usize = std::str::from_utf8(&b[*i..colon])?.parse()?;
                let s = b
                    .get(colon + 1..colon + 1 + n)
                    .ok_or_else(|| anyhow!("bencode: truncated string"))?;
                *i = colon + 1 + n;
                Ok(Bv::Str(s.to_vec()))
            }
            _ => bail!("bencode: unexpected byte {c:#x}"),
        }
    }

    /// A dictionary's value at `key`.
    pub fn get(&self, key: &str) -> Option<&Bv> {
        match self {
            Bv::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }
    /// A string, lossily UTF-8.
    pub fn str(&self) -> Option<String> {
        match self {
            Bv::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        }
    }
    /// An integer.
    pub fn int(&self) -> Option<i64> {
        match self {
            Bv::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// A list's items (none for anything else).
    pub fn list(&self) -> &[Bv] {
        match self {
            Bv::List(l) => l,
            _ => &[],
        }
    }
    /// A dictionary's entries.
    pub fn dict(&self) -> Option<&BTreeMap<Vec<u8>, Bv>> {
        match self {
            Bv::Dict(d) => Some(d),
            _ => None,
        }
    }
}

/// One ng request (a dictionary of strings) to `ng`; returns the reply dictionary.
pub fn ng(ng: SocketAddr, cmd: &[(&str, &str)]) -> Result<Bv> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let cookie = format!(
        "e2e{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let dict = Bv::Dict(
        cmd.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Bv::Str(v.as_bytes().to_vec())))
            .collect(),
    );
    let mut msg = format!("{cookie} ").into_bytes();
    dict.encode(&mut msg);
    let sock = UdpSocket::bind((NODE_IP, 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..4 {
        sock.send_to(&msg, ng)?;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                break;
            };
            let data = &buf[..n];
            if let Some(body) = data.strip_prefix(format!("{cookie} ").as_bytes()) {
                return Bv::decode(body, &mut 0);
            }
        }
    }
    bail!("no ng reply from {ng} to {cmd:?}")
}

/// Per tag of an ng `query` reply: (tag, local port, packets received, endpoint), the
/// endpoint only once the relay has `confirmed` it from the party's packets (before that,
/// rtpengine and trunkline-relay show the SDP address there).
pub fn query_streams(reply: &Bv) -> Vec<(String, i64, i64, Option<String>)> {
    let mut out = Vec::new();
    let Some(tags) = reply.get("tags").and_then(Bv::dict) else {
        return out;
    };
    for (tag, t) in tags {
        for m in t.get("medias").map(Bv::list).unwrap_or_default() {
            let Some(st) = m.get("streams").map(Bv::list).and_then(<[Bv]>::first) else {
                continue;
            };
            let confirmed = st
                .get("flags")
                .map(Bv::list)
                .unwrap_or_default()
                .iter()
                .any(|f| f.str().as_deref() == Some("confirmed"));
            let endpoint = st.get("endpoint").filter(|_| confirmed).and_then(|e| {
                Some(format!(
                    "{}:{}",
                    e.get("address")?.str()?,
                    e.get("port")?.int()?
                ))
            });
            out.push((
                String::from_utf8_lossy(tag).into_owned(),
                st.get("local port").and_then(Bv::int).unwrap_or(-1),
                st.get("stats")
                    .and_then(|s| s.get("packets"))
                    .and_then(Bv::int)
                    .unwrap_or(0),
                endpoint,
            ));
        }
    }
    out
}
