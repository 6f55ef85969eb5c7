//! TLS for the admin API (rustls, through tonic): the node's certificate and key, and
//! optionally the CAs that sign client certificates (mutual TLS). Files are read once at
//! start; a bad file stops the node with the key that names it.

use anyhow::Context;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::AdminConfig;

/// The API listener's TLS settings.
#[derive(Debug, Clone)]
pub struct ApiTls {
    pub config: ServerTlsConfig,
    /// Clients must present a certificate signed by `admin.tls_client_ca_file`.
    pub client_certificates: bool,
}

pub(crate) fn read_pem(key: &str, path: &std::path::Path, marker: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("{key} {}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains(marker) {
        anyhow::bail!("{key} {}: no PEM {marker:?} block", path.display());
    }
    Ok(pem)
}

/// The TLS settings of `[admin]`, or `None` when the API speaks plain HTTP/2.
pub fn load(admin: &AdminConfig) -> anyhow::Result<Option<ApiTls>> {
    let (Some(cert), Some(key)) = (&admin.tls_cert_file, &admin.tls_key_file) else {
        return Ok(None);
    };
    let cert = read_pem("admin.tls_cert_file", cert, "CERTIFICATE")?;
    let key = read_pem("admin.tls_key_file", key, "PRIVATE KEY")?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    let client_certificates = match &admin.tls_client_ca_file {
        Some(ca) => {
            let ca = read_pem("admin.tls_client_ca_file", ca, "CERTIFICATE")?;
            config = config.client_ca_root(Certificate::from_pem(ca));
            true
        }
        None => false,
    };
    Ok(Some(ApiTls {
        config,
        client_certificates,
    }))
}
