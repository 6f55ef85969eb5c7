//! Minimal rtpengine "ng" control-protocol client: `<cookie> <bencoded dict>` over UDP,
//! the reply echoes the cookie. Only what the benchmark needs: ping, offer, answer, delete,
//! query.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_bencode::value::Value;

pub struct NgClient {
    sock: UdpSocket,
    server: SocketAddr,
    cookie_prefix: String,
    counter: u64,
    retries: u32,
}

fn bytes(s: &str) -> Value {
    Value::Bytes(s.as_bytes().to_vec())
}

/// A request dict from (key, value) pairs.
pub fn dict(pairs: Vec<(&str, Value)>) -> Value {
    Value::Dict(
        pairs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

pub fn get_str<'a>(d: &'a HashMap<Vec<u8>, Value>, key: &str) -> Option<&'a [u8]> {
    match d.get(key.as_bytes()) {
        Some(Value::Bytes(b)) => Some(b),
        _ => None,
    }
}

impl NgClient {
    pub fn new(
        server: SocketAddr,
        local_ip: IpAddr,
        timeout: Duration,
        retries: u32,
    ) -> Result<Self> {
        let sock =
            UdpSocket::bind(SocketAddr::new(local_ip, 0)).context("bind ng client socket")?;
        sock.set_read_timeout(Some(timeout))?;
        Ok(Self {
            sock,
            server,
            cookie_prefix: format!("rb{}_", std::process::id()),
            counter: 0,
            retries,
        })
    }

    /// Sends one command and waits for the reply with the same cookie (retransmitting the same
    /// cookie on timeout, as rtpengine's clients do: the server caches replies per cookie).
    pub fn request(&mut self, req: &Value) -> Result<HashMap<Vec<u8>, Value>> {
        self.counter += 1;
        let cookie = format!("{}{}", self.cookie_prefix, self.counter);
        let body = serde_bencode::to_bytes(req).context("encode ng request")?;
        let mut msg = Vec::with_capacity(cookie.len() + 1 + body.len());
        msg.extend_from_slice(cookie.as_bytes());
        msg.push(b' ');
        msg.extend_from_slice(&body);
        let mut buf = vec![0u8; 65536];
        for _attempt in 0..=self.retries {
            self.sock
                .send_to(&msg, self.server)
                .context("send ng request")?;
            loop {
                match self.sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        if from != self.server {
                            continue;
                        }
                        let data = &buf[..n];
                        let Some(sp) = data.iter().position(|&b| b == b' ') else {
                            continue; // malformed: no cookie separator
                        };
                        if &data[..sp] != cookie.as_bytes() {
                            continue; // a late reply to an earlier request
                        }
                        let v: Value = serde_bencode::from_bytes(&data[sp + 1..])
                            .map_err(|e| anyhow!("undecodable ng reply: {e}"))?;
                        let Value::Dict(d) = v else {
                            bail!("ng reply is not a dictionary")
                        };
                        match get_str(&d, "result") {
                            Some(b"ok") | Some(b"pong") => return Ok(d),
                            Some(other) => {
                                let reason = get_str(&d, "error-reason")
                                    .map(|r| String::from_utf8_lossy(r).into_owned())
                                    .unwrap_or_default();
                                bail!("ng {}: {}", String::from_utf8_lossy(other), reason)
                            }
                            None => bail!("ng reply without result"),
                        }
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break; // retransmit
                    }
                    Err(e) => return Err(e).context("receive ng reply"),
                }
            }
        }
        bail!(
            "no ng reply from {} after {} attempts",
            self.server,
            self.retries + 1
        )
    }

    pub fn ping(&mut self) -> Result<()> {
        self.request(&dict(vec![("command", bytes("ping"))]))
            .map(|_| ())
    }

    fn sdp_command(
        &mut self,
        command: &str,
        call_id: &str,
        from_tag: &str,
        to_tag: Option<&str>,
        sdp: &str,
    ) -> Result<String> {
        let mut pairs = vec![
            ("command", bytes(command)),
            ("call-id", bytes(call_id)),
            ("from-tag", bytes(from_tag)),
            ("sdp", bytes(sdp)),
            (
                "replace",
                Value::List(vec![bytes("origin"), bytes("session-connection")]),
            ),
        ];
        if let Some(t) = to_tag {
            pairs.push(("to-tag", bytes(t)));
        }
        let d = self.request(&dict(pairs))?;
        let sdp = get_str(&d, "sdp").ok_or_else(|| anyhow!("{command} reply without sdp"))?;
        Ok(String::from_utf8_lossy(sdp).into_owned())
    }

    pub fn offer(&mut self, call_id: &str, from_tag: &str, sdp: &str) -> Result<String> {
        self.sdp_command("offer", call_id, from_tag, None, sdp)
    }

    pub fn answer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &str,
    ) -> Result<String> {
        self.sdp_command("answer", call_id, from_tag, Some(to_tag), sdp)
    }

    pub fn delete(&mut self, call_id: &str, from_tag: &str) -> Result<()> {
        self.request(&dict(vec![
            ("command", bytes("delete")),
            ("call-id", bytes(call_id)),
            ("from-tag", bytes(from_tag)),
        ]))
        .map(|_| ())
    }
}

/// A minimal SDP for one PCMU audio stream at `ip:port`.
pub fn make_sdp(ip: IpAddr, port: u16, session: u64) -> String {
    format!(
        "v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=rtpbench\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// The media address of the first audio stream of an SDP: the media-level `c=` if there is
/// one, else the session-level one.
pub fn sdp_audio_addr(sdp: &str) -> Result<SocketAddr> {
    let mut session_c: Option<IpAddr> = None;
    let mut media_c: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    let mut in_audio = false;
    let mut seen_media = false;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            if port.is_some() {
                break; // only the first audio m= line
            }
            seen_media = true;
            let mut it = rest.split_whitespace();
            in_audio = it.next() == Some("audio");
            if in_audio {
                let p = it.next().ok_or_else(|| anyhow!("m= line without port"))?;
                let p = p.split('/').next().unwrap_or(p);
                port = Some(p.parse().with_context(|| format!("bad m= port {p:?}"))?);
            }
        } else if let Some(rest) = line.strip_prefix("c=") {
            let addr = rest
                .split_whitespace()
                .nth(2)
                .ok_or_else(|| anyhow!("bad c= line {line:?}"))?;
            let addr = addr.split('/').next().unwrap_or(addr);
            let ip: IpAddr = addr
                .parse()
                .with_context(|| format!("bad c= address {addr:?}"))?;
            if !seen_media {
                session_c = Some(ip);
            } else if in_audio {
                media_c = Some(ip);
            }
        }
    }
    let port = port.ok_or_else(|| anyhow!("no m=audio line in SDP"))?;
    let ip = media_c
        .or(session_c)
        .ok_or_else(|| anyhow!("no c= line in SDP"))?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_media_level_connection() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                   m=audio 30004 RTP/AVP 0\r\nc=IN IP4 127.0.0.1\r\na=rtcp:30005\r\n";
        assert_eq!(sdp_audio_addr(sdp).ok(), "127.0.0.1:30004".parse().ok());
    }

    #[test]
    fn parses_session_level_connection() {
        let sdp = make_sdp("127.0.0.1".parse().expect("ip"), 4000, 7);
        assert_eq!(sdp_audio_addr(&sdp).ok(), "127.0.0.1:4000".parse().ok());
    }

    #[test]
    fn rejects_sdp_without_audio() {
        assert!(sdp_audio_addr("v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 5 RTP/AVP 96\r\n").is_err());
    }
}
