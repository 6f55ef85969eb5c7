//! The ng listeners: one UDP socket (a datagram per message, like rtpengine's `listen-ng`) and
//! an optional TCP listener (`listen-tcp-ng`: messages back to back on the stream, each ended
//! by its self-delimiting bencode dictionary).
//!
//! Engine calls run inline on the runtime thread: they hold the engine's control lock for
//! microseconds and never wait on the network, so a `spawn_blocking` hop per command would
//! cost more than it protects. The UDP loop handles one datagram at a time, which also means
//! a retransmission can never race its original through the reply cache.

use super::bencode;
use super::commands::Dispatcher;
use super::message::{self, NgError, MAX_COOKIE};
use super::NgEngine;
use serde_bencode::value::Value;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Bounds on what a control peer can make us hold.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest TCP message (cookie + dictionary) buffered before the connection is closed.
    pub max_tcp_message: usize,
    /// Concurrent TCP control connections; further ones are closed at once.
    pub max_tcp_connections: usize,
    /// A TCP connection silent this long is closed.
    pub tcp_idle: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_tcp_message: 256 * 1024,
            max_tcp_connections: 128,
            tcp_idle: Duration::from_secs(300),
        }
    }
}

/// Running ng listeners. Dropping it (or [`NgServer::shutdown`]) stops them.
pub struct NgServer {
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl NgServer {
    /// Binds the listeners that are given and starts serving on the current tokio runtime.
    pub async fn start<E: NgEngine>(
        dispatcher: Arc<Dispatcher<E>>,
        udp: Option<SocketAddr>,
        tcp: Option<SocketAddr>,
        limits: ServerLimits,
    ) -> io::Result<NgServer> {
        let mut server = NgServer {
            udp: None,
            tcp: None,
            tasks: Vec::new(),
        };
        if let Some(addr) = udp {
            let sock = UdpSocket::bind(addr).await?;
            server.udp = Some(sock.local_addr()?);
            server
                .tasks
                .push(tokio::spawn(serve_udp(sock, Arc::clone(&dispatcher))));
        }
        if let Some(addr) = tcp {
            let listener = TcpListener::bind(addr).await?;
            server.tcp = Some(listener.local_addr()?);
            server
                .tasks
                .push(tokio::spawn(serve_tcp(listener, dispatcher, limits)));
        }
        Ok(server)
    }

    /// The bound UDP address (useful with port 0).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// Stops the listeners (connections in progress are dropped).
    pub fn shutdown(mut self) {
        self.abort();
    }

    fn abort(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for NgServer {
    fn drop(&mut self) {
        self.abort();
    }
}

async fn serve_udp<E: NgEngine>(sock: UdpSocket, dispatcher: Arc<Dispatcher<E>>) {
    // 64 KiB: the largest UDP payload; a bigger message cannot arrive in one datagram.
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // E.g. ICMP errors surfacing; don't spin on a persistent one.
                tracing::warn!(error = %e, "ng udp receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(msg) = buf.get(..n) else { continue };
        if let Some(reply) = dispatcher.handle(peer.ip(), msg) {
            if let Err(e) = sock.send_to(&reply, peer).await {
                tracing::warn!(%peer, error = %e, "ng udp reply failed");
            }
        }
    }
}

async fn serve_tcp<E: NgEngine>(
    listener: TcpListener,
    dispatcher: Arc<Dispatcher<E>>,
    limits: ServerLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_tcp_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "ng tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "ng tcp connection limit reached; closing");
            continue;
        };
        let dispatcher = Arc::clone(&dispatcher);
        let limits = limits.clone();
        tokio::spawn(async move {
            tracing::info!(%peer, "ng tcp connection");
            if let Err(e) = serve_conn(stream, peer, &dispatcher, &limits).await {
                tracing::info!(%peer, error = %e, "ng tcp connection error");
            }
            tracing::info!(%peer, "ng tcp connection closed");
            drop(permit);
        });
    }
}

/// What the buffer holds at its front.
enum Next {
    /// A complete message of this many bytes.
    Message(usize),
    /// Need more bytes.
    More,
    /// Garbage: reply with this error (if a cookie is known) and close.
    Bad(Option<Vec<u8>>, NgError),
}

fn next_message(buf: &[u8]) -> Next {
    let space = match buf.iter().take(MAX_COOKIE + 1).position(|&b| b == b' ') {
        Some(0) => return Next::Bad(None, NgError::NoCookie),
        Some(p) => p,
        None if buf.len() > MAX_COOKIE => return Next::Bad(None, NgError::NoCookie),
        None => return Next::More,
    };
    let cookie = buf[..space].to_vec();
    let body = &buf[space + 1..];
    if body.first() == Some(&b'{') {
        return Next::Bad(Some(cookie), NgError::Json);
    }
    match bencode::scan(body) {
        Ok(Some(n)) => Next::Message(space + 1 + n),
        Ok(None) => Next::More,
        Err(e) => Next::Bad(Some(cookie), NgError::Decode(Some(e))),
    }
}

async fn serve_conn<E: NgEngine>(
    mut stream: TcpStream,
    peer: SocketAddr,
    dispatcher: &Dispatcher<E>,
    limits: &ServerLimits,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Every complete message in the buffer; each pass removes at least one byte or stops.
        loop {
            let ws = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            buf.drain(..ws);
            if buf.is_empty() {
                break;
            }
            match next_message(&buf) {
                Next::Message(end) => {
                    let reply = dispatcher.handle(peer.ip(), &buf[..end]);
                    buf.drain(..end);
                    if let Some(reply) = reply {
                        stream.write_all(&reply).await?;
                    }
                }
                Next::More => {
                    if buf.len() > limits.max_tcp_message {
                        tracing::warn!(%peer, len = buf.len(), "ng tcp message too large; closing");
                        return Ok(());
                    }
                    break;
                }
                Next::Bad(cookie, err) => {
                    tracing::warn!(%peer, error = %err, "ng tcp protocol error; closing");
                    if let Some(cookie) = cookie {
                        let reply = Value::from(err);
                        if let Ok(framed) = message::frame_reply(&cookie, &reply) {
                            stream.write_all(&framed).await?;
                        }
                    }
                    return Ok(());
                }
            }
        }
        let n = match tokio::time::timeout(limits.tcp_idle, stream.read(&mut chunk)).await {
            Err(_) => {
                tracing::info!(%peer, "ng tcp connection idle; closing");
                return Ok(());
            }
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
