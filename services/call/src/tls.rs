//! The trunks' TLS settings as the transports read them: how the node connects to a TLS
//! trunk (`TlsTargets`: its CA bundle, the name its certificate must carry, the client
//! certificate the node presents) and what a TLS connection from a trunk's addresses must
//! show (`TlsPeerCheck`: with `require_client_cert`, a certificate valid for the trunk's
//! name). Both read the routing table in force, so an operator's change applies to the
//! next connection.

use crate::dispatcher::Dispatcher;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use trunkline_sip::Transport;
use trunkline_transport::tls::{TlsPeerCheck, TlsTarget, TlsTargets};

/// A TLS trunk's settings.
#[derive(Debug, Clone)]
pub struct TrunkTls {
    /// The CA bundle, client certificate and the name checked in the trunk's
    /// certificate when the node connects.
    pub target: TlsTarget,
    /// A TLS connection from the trunk's sources must present a client certificate
    /// (verified against the node's client CA bundle) valid for `target.name`.
    pub require_client_cert: bool,
}

impl PartialEq for TrunkTls {
    fn eq(&self, other: &Self) -> bool {
        self.target.name == other.target.name
            && std::sync::Arc::ptr_eq(&self.target.config, &other.target.config)
            && self.require_client_cert == other.require_client_cert
    }
}

impl Eq for TrunkTls {}

impl TlsTargets for Dispatcher {
    fn target(&self, addr: SocketAddr) -> Option<TlsTarget> {
        let routing = self.routing();
        routing
            .router
            .trunks()
            .iter()
            .filter(|t| t.transport == Transport::Tls && t.addr == addr)
            .find_map(|t| t.tls.as_ref().map(|tls| tls.target.clone()))
    }
}

impl TlsPeerCheck for Dispatcher {
    fn check(&self, peer: SocketAddr, cert: Option<&CertificateDer<'_>>) -> Result<(), String> {
        let routing = self.routing();
        let demanding = routing.router.trunks().iter().filter(|t| {
            t.tls.as_ref().is_some_and(|tls| tls.require_client_cert)
                && t.sources.iter().any(|s| s.matches(peer, Transport::Tls))
        });
        for t in demanding {
            let Some(tls) = &t.tls else { continue };
            let Some(cert) = cert else {
                return Err(format!(
                    "trunk {} must present a client certificate",
                    t.name
                ));
            };
            // The handshake checked the chain; the name must be the trunk's own.
            let parsed = rustls::server::ParsedCertificate::try_from(cert)
                .map_err(|e| format!("trunk {}: unreadable client certificate: {e}", t.name))?;
            rustls::client::verify_server_name(&parsed, &tls.target.name).map_err(|e| {
                format!(
                    "trunk {}: client certificate is not for {}: {e}",
                    t.name,
                    name_of(&tls.target.name)
                )
            })?;
        }
        Ok(())
    }
}

fn name_of(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "?".into(),
    }
}
