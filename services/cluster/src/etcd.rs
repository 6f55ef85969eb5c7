//! How the node reaches etcd: its client URLs and, for `https://` ones, TLS.
//!
//! etcd holds the cluster's membership and its shared trunks and routes (credentials
//! included), so on any network the cluster does not own alone it is reached over TLS,
//! checked against the CA that signed etcd's certificate, and usually with a client
//! certificate etcd requires (`--client-cert-auth`). One value of this type is handed to
//! every part of the node that talks to etcd, so they all connect alike.

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::time::Duration;

/// TLS toward etcd, as PEM bytes read at start (a bad file stops the node there, not at
/// the first reconnection).
#[derive(Clone)]
pub struct EtcdTls {
    /// CA certificate(s) that signed etcd's server certificate.
    pub ca_pem: Vec<u8>,
    /// The node's client certificate chain and key, for an etcd that requires one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name etcd's certificate must carry; `None`: the endpoint's host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for EtcdTls {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// etcd's client URLs and how to connect to them.
#[derive(Debug, Clone, Default)]
pub struct Etcd {
    /// `http://host:port` or, with `tls`, `https://host:port`.
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
}

impl Etcd {
    /// A client with short timeouts and keep-alives: a dead etcd is noticed within
    /// seconds, and the callers retry with back-off.
    pub(crate) async fn connect(&self) -> Result<Client, etcd_client::Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            options = options.with_tls(config);
        }
        Client::connect(&self.endpoints, Some(options)).await
    }
}
