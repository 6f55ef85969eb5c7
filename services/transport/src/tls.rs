//! SIP over TLS (RFC 3261 §26.2, `SIP/2.0/TLS`) with rustls: the node's certificate
//! (reloaded when its files change), the client certificates it asks for, and how each
//! outbound connection verifies its peer (a CA bundle and the name to check, per
//! destination, with an optional client certificate for mutual TLS).
//!
//! A TLS connection is a TCP connection with a handshake in front: it is counted, limited
//! and timed out exactly as TCP ones are (see `tcp`), and the handshake itself is bounded
//! by `TlsContext::handshake_timeout` while the connection already holds its place in the
//! table, so a flood of half-open handshakes costs no more than the inbound limit allows.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::ClientConfig;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where Debian keeps the system's trusted CAs: the default roots of a trunk that names
/// no CA bundle (a carrier with a certificate from a public CA).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A TLS file or setting that cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file, in order (a chain: the leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// The CAs of a PEM bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| file_error(key, e))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        TlsError::Config(format!(
            "{} does not match the key in {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(ck)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The node's certificate and key, served to every TLS client and replaced when the
/// files change (a renewed certificate takes effect for new connections without a
/// restart; connections already up keep theirs).
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ReloadingCert {
    /// Loads the pair; an unreadable file, a missing key or a key that does not match
    /// the certificate is an error naming the file.
    pub fn load(cert: &Path, key: &Path) -> Result<ReloadingCert, TlsError> {
        let ck = certified_key(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(ck),
            stamps: Mutex::new((modified(cert), modified(key))),
        })
    }

    /// Loads the files again if either changed since the last load: `Ok(true)` when the
    /// new pair is now served. A pair that fails to load leaves the old one in service.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (modified(&self.cert), modified(&self.key));
        let mut stamps = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        if *stamps == now {
            return Ok(false);
        }
        let ck = certified_key(&self.cert, &self.key)?;
        self.current.store(Arc::new(ck));
        *stamps = now;
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What TLS clients of the node are served with: `cert`, and, with `client_ca`, a
/// request for a client certificate signed by one of those CAs (required with
/// `require_client_cert`, else optional and checked per trunk by `TlsPeerCheck`).
pub fn server_config(
    cert: Arc<ReloadingCert>,
    client_ca: Option<&Path>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = match client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| file_error(ca, format!("client CA bundle: {e}")))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(cert)
        }
        None if require_client_cert => {
            return Err(TlsError::Config(
                "client certificates are required but no client CA bundle is set".into(),
            ))
        }
        None => builder.with_no_client_auth().with_cert_resolver(cert),
    };
    Ok(Arc::new(config))
}

/// How the node verifies a server it connects to: the CAs of `ca` (else the system's
/// bundle), and with `identity` (certificate and key files) it presents a client
/// certificate (mutual TLS).
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE)))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| file_error(cert, e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// How one destination is connected to: the name its certificate must carry and the
/// client settings.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub name: ServerName<'static>,
    pub config: Arc<ClientConfig>,
}

/// Checks an accepted TLS connection after its handshake, before any of its bytes are
/// read: `cert` is the client certificate the handshake verified, if any. An `Err` closes
/// the connection (a trunk that must present a certificate, presenting none or one for
/// another name).
pub trait TlsPeerCheck: Send + Sync {
    fn check(&self, peer: SocketAddr, cert: Option<&CertificateDer<'_>>) -> Result<(), String>;
}

/// Where the TLS settings of a destination come from: the node's trunk table, which an
/// operator may change at any time (read at each connect, so a new trunk's CA is used at
/// once).
pub trait TlsTargets: Send + Sync {
    fn target(&self, addr: SocketAddr) -> Option<TlsTarget>;
}

/// The node's TLS settings, shared by every TLS listener and outbound connection.
pub struct TlsContext {
    /// Served to TLS clients (`None`: the node has no certificate; TLS listeners refuse
    /// to start).
    pub server: Option<Arc<ServerConfig>>,
    /// The certificate `server` serves, for reloading.
    pub cert: Option<Arc<ReloadingCert>>,
    /// Outbound settings by destination address (the trunks').
    pub targets: Option<Arc<dyn TlsTargets>>,
    /// For a destination no trunk names (an in-dialog request to a TLS Contact): its IP
    /// is the name checked.
    pub default_client: Option<Arc<ClientConfig>>,
    pub peer_check: Option<Arc<dyn TlsPeerCheck>>,
    /// A handshake not done in this time closes the connection.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("server", &self.server.is_some())
            .field("default_client", &self.default_client.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// How to connect to `addr`.
    pub(crate) fn target(&self, addr: SocketAddr) -> Option<TlsTarget> {
        if let Some(t) = self.targets.as_ref().and_then(|t| t.target(addr)) {
            return Some(t);
        }
        let config = self.default_client.clone()?;
        Some(TlsTarget {
            name: ServerName::IpAddress(addr.ip().into()),
            config,
        })
    }
}
