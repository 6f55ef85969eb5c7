//! The scrape endpoint: `GET /metrics` (OpenMetrics text from the node's registry) and
//! `GET /health` (liveness), over HTTP/1.1 with hyper.
//!
//! It binds before the node reports "started", so a port clash fails start-up with the key
//! to fix instead of leaving a node that runs but cannot be monitored.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What `prometheus_client::encoding::text::encode` produces (it ends with `# EOF` and types
/// counters by family name), so scrapers must parse it as OpenMetrics, not Prometheus 0.0.4.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrapers are few; anything beyond this many open connections is dropped, so a misbehaving
/// client cannot exhaust the node's file descriptors through this port.
const MAX_CONNECTIONS: usize = 64;

/// A slow client must not hold a connection open forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A running metrics endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves until `stop` is cancelled. Fails (naming `metrics.listen`) when
    /// the address cannot be bound.
    pub async fn start(
        addr: SocketAddr,
        registry: Arc<Registry>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics.listen: cannot bind {addr}"))?;
        let local_addr = listener
            .local_addr()
            .context("metrics.listen: no local address")?;
        let task = tokio::spawn(accept_loop(listener, registry, stop));
        Ok(Self { local_addr, task })
    }

    /// The bound address (differs from the configured one when it used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the accept loop to end after `stop` was cancelled. Connections in flight
    /// finish on their own.
    pub async fn join(self) {
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "metrics server task failed");
        }
    }
}

async fn accept_loop(listener: TcpListener, registry: Arc<Registry>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Typically EMFILE; back off instead of spinning on the error.
                tracing::warn!(error = %err, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "metrics endpoint connection limit reached");
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let registry = Arc::clone(&registry);
                async move { Ok::<_, Infallible>(respond(&request, &registry)) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
    tracing::debug!("metrics endpoint stopped");
}

/// Routes one request; pure apart from reading the registry, so it is tested directly.
fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    route(request.method(), request.uri().path(), registry)
}

fn route(method: &Method, path: &str, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" | "/health" if method != Method::GET && method != Method::HEAD => {
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n".into(),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (StatusCode::OK, OPENMETRICS, text),
                Err(err) => {
                    tracing::error!(error = %err, "cannot encode metrics");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        "encoding failed\n".into(),
                    )
                }
            }
        }
        "/health" => (StatusCode::OK, "text/plain", "ok".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    reply(status, content_type, body)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use trunkline_call::metrics::CallMetrics;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_health_and_404_over_loopback() {
        let mut registry = Registry::default();
        let metrics = CallMetrics::register(&mut registry);
        metrics.call_started();
        let stop = CancellationToken::new();
        let server = MetricsServer::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::new(registry),
            stop.clone(),
        )
        .await
        .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let scrape = get(addr, "/metrics").await;
        assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
        assert!(
            scrape.contains("content-type: application/openmetrics-text"),
            "{scrape}"
        );
        assert!(scrape.contains("\ntrunkline_calls_active 1\n"), "{scrape}");
        assert!(scrape.ends_with("# EOF\n"), "{scrape}");

        let health = get(addr, "/health").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok"), "{health}");

        let missing = get(addr, "/nope").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server.join())
            .await
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener still open after stop"
        );
    }

    #[test]
    fn wrong_method_is_405() {
        let registry = Registry::default();
        let response = route(&Method::POST, "/metrics", &registry);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn bind_failure_names_key() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsServer::start(
            addr,
            Arc::new(Registry::default()),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("metrics.listen"), "{err:#}");
    }
}
