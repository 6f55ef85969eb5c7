//! Transaction keys: which transaction a received message belongs to
//! (RFC 3261 §17.1.3 for responses, §17.2.3 for requests).

use crate::message::{Request, Response};
use crate::method::Method;
use crate::uri::{Host, HostRef};
use crate::via::{Via, ViaRef};
use bytes::Bytes;
use std::fmt;

/// Identifies one transaction. Built from a received request (server side), a
/// received response (client side) or a request we are about to send.
///
/// Client keys carry no sent-by (§17.1.3 matches on branch and CSeq method only),
/// server keys do (§17.2.3), so a request that spirals back to this node never
/// collides with the client transaction that sent it, even in a shared map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxKey {
    id: TxId,
    method: Method,
}

/// The method-independent part of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TxId {
    /// RFC 3261 peers: the branch is unique per transaction, sent-by guards
    /// against two clients that happen to pick the same branch.
    Branch {
        branch: Box<str>,
        sent_by: Option<SentBy>,
    },
    /// RFC 2543 peers: no usable branch, so the request's identity is the tuple
    /// §17.2.3 lists (To tag left out so the ACK for a non-2xx, which carries the
    /// tag our response added, still matches its INVITE).
    Rfc2543(Box<Rfc2543Id>),
}

/// Host and port of a Via; domain names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SentBy {
    host: Host,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Rfc2543Id {
    request_uri: String,
    from_tag: Option<String>,
    call_id: Bytes,
    cseq: u32,
    top_via: String,
}

impl SentBy {
    fn of(via: &ViaRef<'_>) -> SentBy {
        let host = match via.host {
            HostRef::Domain(d) => Host::Domain(d.to_ascii_lowercase()),
            other => other.to_host(),
        };
        SentBy {
            host,
            port: via.port,
        }
    }
}

/// The method a server transaction is keyed by: the ACK for a non-2xx belongs to
/// the INVITE transaction (§17.2.3).
fn server_method(m: &Method) -> Method {
    match m {
        Method::Ack => Method::Invite,
        other => other.clone(),
    }
}

impl TxKey {
    /// RFC 3261 §17.2.3 matching for a request we received: magic-cookie branch +
    /// sent-by + method, where ACK maps to INVITE (so an ACK for a non-2xx matches
    /// the INVITE server transaction). CANCEL has its own key (method CANCEL). For
    /// an RFC 2543 peer (branch missing or not starting with z9hG4bK + more chars)
    /// fall back to: Request-URI, From tag, Call-ID, CSeq number, top Via, and
    /// method (ACK→INVITE). Returns None if the needed headers are missing.
    pub fn server(req: &Request) -> Option<TxKey> {
        Some(TxKey {
            id: server_id(req)?,
            method: server_method(&req.method),
        })
    }

    /// The key of the INVITE server transaction that a CANCEL targets (same
    /// branch/sent-by, method INVITE), so the TU can find what to cancel (§9.2).
    pub fn cancel_target(cancel: &Request) -> Option<TxKey> {
        Some(TxKey {
            id: server_id(cancel)?,
            method: Method::Invite,
        })
    }

    /// §17.1.3 matching of a response to a client transaction: top Via branch +
    /// CSeq method (a CANCEL's 200 shares the INVITE's branch but not its method).
    pub fn client(resp: &Response) -> Option<TxKey> {
        // The branch as written (what `Via::parse(..).branch()` gives, without parsing
        // the whole Via: this runs for every response).
        let branch = std::str::from_utf8(resp.headers.top_branch()?).ok()?;
        let method = resp.headers.cseq()?.method;
        Some(TxKey::client_key(branch, method))
    }

    /// The key a client transaction for this outgoing request will match
    /// responses with, so the TU can index it before the first response arrives.
    pub fn client_for_request(req: &Request) -> Option<TxKey> {
        let branch = std::str::from_utf8(req.headers.top_branch()?).ok()?;
        Some(TxKey::client_key(branch, req.method.clone()))
    }

    fn client_key(branch: &str, method: Method) -> TxKey {
        TxKey {
            id: TxId::Branch {
                branch: branch.into(),
                sent_by: None,
            },
            method,
        }
    }

    /// A key for a request the TU should have rejected (no Via, Call-ID or CSeq):
    /// the RFC 2543 tuple with whatever parts exist. Used only so that the
    /// constructors stay infallible; such keys are not meaningful for matching.
    pub(crate) fn degraded(req: &Request) -> TxKey {
        let top_via = req
            .headers
            .top_via()
            .map(|v| v.to_string())
            .unwrap_or_default();
        TxKey {
            id: TxId::Rfc2543(Box::new(Rfc2543Id {
                request_uri: req.uri.to_string(),
                from_tag: req
                    .headers
                    .from_addr()
                    .and_then(|f| f.tag().map(str::to_string)),
                call_id: req.headers.call_id().cloned().unwrap_or_default(),
                cseq: req.headers.cseq().map(|c| c.seq).unwrap_or(0),
                top_via,
            })),
            method: server_method(&req.method),
        }
    }

    /// The method this key matches (INVITE for an ACK's key).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The branch, when the key is branch-based (logs and metrics labels).
    pub fn branch(&self) -> Option<&str> {
        match &self.id {
            TxId::Branch { branch, .. } => Some(branch),
            TxId::Rfc2543(_) => None,
        }
    }

    /// True for keys built by the RFC 2543 fallback.
    pub fn is_rfc2543(&self) -> bool {
        matches!(self.id, TxId::Rfc2543(_))
    }
}

fn server_id(req: &Request) -> Option<TxId> {
    let via = req.headers.top_via_ref()?;
    let branch = via.branch();
    if let Some(branch) = branch.filter(|b| Via::is_rfc3261_branch(b)) {
        return Some(TxId::Branch {
            branch: branch.into(),
            sent_by: Some(SentBy::of(&via)),
        });
    }
    let call_id = req.headers.call_id()?.clone();
    let cseq = req.headers.cseq()?.seq;
    let from_tag = req
        .headers
        .from_addr()
        .and_then(|f| f.tag().map(str::to_string));
    Some(TxId::Rfc2543(Box::new(Rfc2543Id {
        request_uri: req.uri.to_string(),
        from_tag,
        call_id,
        cseq,
        // RFC 2543 peers only: the Via as this node writes it, so equal Vias compare
        // equal however they were spaced.
        top_via: req.headers.top_via()?.to_string(),
    })))
}

impl fmt::Display for TxKey {
    /// A compact rendering for logs: `branch/METHOD` or `2543:call-id:cseq/METHOD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            TxId::Branch { branch, .. } => write!(f, "{branch}/{}", self.method),
            TxId::Rfc2543(id) => write!(
                f,
                "2543:{}:{}/{}",
                String::from_utf8_lossy(&id.call_id),
                id.cseq,
                self.method
            ),
        }
    }
}
