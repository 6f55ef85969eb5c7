//! The admin API's accept loop. The API is a network input like SIP: a flood of
//! connections must not take the node's file descriptors (which its SIP and media sockets
//! share), and a connection that never says anything must not hold a slot for ever.
//!
//! - At most `max_connections` are open at once. The loop takes a slot before it accepts,
//!   so past the bound new connections wait in the kernel's backlog (and then fail there)
//!   instead of being accepted and costing a task each.
//! - A connection has `first_bytes_timeout` to send its first `FIRST_BYTES` bytes (the
//!   HTTP/2 preface and SETTINGS, or a TLS ClientHello), else it is closed. Past that, an
//!   idle peer is found by the server's HTTP/2 pings and by TCP keep-alives.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a new connection must send within the deadline: more than the HTTP/2 client
/// preface (24) plus an empty SETTINGS frame (9), less than any TLS ClientHello.
const FIRST_BYTES: usize = 33;

/// The bounds of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub first_bytes_timeout: Duration,
}

/// An accepted API connection: the socket, its slot, and the deadline for its first
/// bytes while it has not sent them.
pub struct ApiConn {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
    received: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Connected for ApiConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for ApiConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.received += buf.filled().len() - before;
                if this.received >= FIRST_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "admin API client sent too little too late",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for ApiConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener` within `limits` until `stop`; the stream tonic serves.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<ApiConn>> {
    let (tx, rx) = mpsc::channel(1);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut full_logged = false;
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    if !full_logged {
                        tracing::warn!(
                            max = limits.max_connections,
                            "admin API at admin.max_connections: new connections wait"
                        );
                        full_logged = true;
                    }
                    tokio::select! {
                        s = slots.clone().acquire_owned() => match s {
                            Ok(s) => s,
                            Err(_) => return,
                        },
                        () = stop.cancelled() => return,
                    }
                }
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = stop.cancelled() => return,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: back off a
                    // little rather than spin; the listener itself stays up.
                    tracing::debug!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            full_logged = false;
            let _ = stream.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(10));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            let conn = ApiConn {
                inner: stream,
                _slot: slot,
                received: 0,
                deadline: Some(Box::pin(tokio::time::sleep(limits.first_bytes_timeout))),
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
