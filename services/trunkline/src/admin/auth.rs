//! Who may use the admin API: bearer tokens with two roles.
//!
//! - `viewer` reads: `GetNode`, `ListCalls`, `GetCall`, `WatchCalls`.
//! - `operator` does everything, including drain, undrain and hang-up.
//!
//! Tokens come from `[admin] tokens_file` and/or the `TRUNKLINE_ADMIN_TOKENS` environment
//! variable, one `role:name:token` entry per line (or comma-separated in the variable). The
//! name is who the logs say acted. Only SHA-256 digests of the tokens are kept, and a
//! presented token is compared with every one of them in constant time, so neither a
//! token's bytes nor its length leak through timing.
//!
//! With no token configured the API is open to whoever reaches it, which the
//! configuration allows on loopback only, or behind mutual TLS (`admin.tls_client_ca_file`):
//! then every client has proved a certificate from the configured CA, and acts as an
//! operator named by that certificate's fingerprint. Health and reflection stay open either way: a Kubernetes probe carries no token,
//! and reflection describes only what `proto/` already publishes.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The environment variable with extra token entries.
pub const TOKENS_ENV: &str = "TRUNKLINE_ADMIN_TOKENS";

/// Tokens shorter than this are refused at start: a bearer token is a password.
const MIN_TOKEN_LEN: usize = 16;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// Who made a request: a token's name and role, or, with authentication off, whoever
/// reached the loopback listener (named by its address).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Clone)]
struct Entry {
    digest: [u8; 32],
    name: String,
    role: Role,
}

/// The configured tokens (digests only).
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Reads `file` (if any) and the environment variable's value `env` (if any). Errors
    /// name where the bad entry is, never the token itself.
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("admin.tokens_file {}: {e}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                tokens.add(
                    line,
                    &format!("admin.tokens_file {} line {}", path.display(), i + 1),
                )?;
            }
        }
        if let Some(value) = env {
            for (i, item) in value.split([',', '\n']).enumerate() {
                tokens.add(item, &format!("{TOKENS_ENV} entry {}", i + 1))?;
            }
        }
        Ok(tokens)
    }

    fn add(&mut self, line: &str, at: &str) -> Result<(), String> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let mut parts = line.splitn(3, ':');
        let (Some(role), Some(name), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{at}: not role:name:token"));
        };
        let role = match role.trim() {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            other => {
                return Err(format!(
                    "{at}: role {other:?} is neither viewer nor operator"
                ))
            }
        };
        let name = name.trim();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
        if !name_ok {
            return Err(format!(
                "{at}: name {name:?} must be 1-64 letters, digits, '.', '_', '@' or '-'"
            ));
        }
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{at}: the token of {name:?} must be at least {MIN_TOKEN_LEN} printable characters \
                 without spaces"
            ));
        }
        let d = digest(token.as_bytes());
        if self.entries.iter().any(|e| e.digest == d) {
            return Err(format!(
                "{at}: the token of {name:?} is also another entry's"
            ));
        }
        self.entries.push(Entry {
            digest: d,
            name: name.to_string(),
            role,
        });
        Ok(())
    }

    /// Whether any token is configured (then every request must carry one).
    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The caller a presented token belongs to. Every entry is compared, whatever
    /// matched first.
    fn find(&self, token: &[u8]) -> Option<Caller> {
        let d = digest(token);
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&d)) {
                found = Some(Caller {
                    name: e.name.clone(),
                    role: e.role,
                });
            }
        }
        found
    }

    /// The tonic interceptor of the API's services: a request with a valid token carries
    /// its `Caller` on; one without, or with a wrong one, ends here as UNAUTHENTICATED.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if !self.enabled() {
            return Ok(req);
        }
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing credentials: send `authorization: Bearer <token>`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("authorization is not `Bearer <token>`"))?;
        match self.find(token.as_bytes()) {
            Some(caller) => {
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            None => Err(Status::unauthenticated("invalid token")),
        }
    }
}

/// The caller of `req` if it may do what needs `role`; `action` names it in the refusal.
/// With authentication off, everyone is an operator named by their address.
#[allow(clippy::result_large_err)]
pub fn require<T>(req: &Request<T>, role: Role, action: &str) -> Result<Caller, Status> {
    match req.extensions().get::<Caller>() {
        Some(caller) if caller.role >= role => Ok(caller.clone()),
        Some(caller) => Err(Status::permission_denied(format!(
            "{action} needs the {} role; {} is a {}",
            role.name(),
            caller.name,
            caller.role.name()
        ))),
        None => Ok(Caller {
            name: anonymous_name(req),
            role: Role::Operator,
        }),
    }
}

/// Who a caller without a token is: the client certificate it presented (mutual TLS,
/// named by the first 16 hex digits of its SHA-256), else its address.
fn anonymous_name<T>(req: &Request<T>) -> String {
    if let Some(cert) = req.peer_certs().and_then(|c| c.first().cloned()) {
        let d = Sha256::digest(cert.as_ref());
        let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
        return format!("cert:{hex}");
    }
    req.remote_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: &str = "0123456789abcdef-ops";
    const VIEW: &str = "0123456789abcdef-view";

    fn tokens() -> Tokens {
        Tokens::load(
            None,
            Some(&format!("operator:ops:{OPS}, viewer:grafana:{VIEW}")),
        )
        .unwrap()
    }

    fn with_auth(value: &str) -> Request<()> {
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        req
    }

    #[test]
    fn a_valid_token_names_its_caller_and_role() {
        let t = tokens();
        assert_eq!(t.len(), 2);
        let req = t.check(with_auth(&format!("Bearer {OPS}"))).unwrap();
        let who = require(&req, Role::Operator, "Drain").unwrap();
        assert_eq!((who.name.as_str(), who.role), ("ops", Role::Operator));
        let req = t.check(with_auth(&format!("Bearer {VIEW}"))).unwrap();
        assert!(require(&req, Role::Viewer, "ListCalls").is_ok());
        let denied = require(&req, Role::Operator, "HangupCall").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("grafana"), "{}", denied.message());
    }

    #[test]
    fn missing_malformed_and_wrong_tokens_are_unauthenticated() {
        let t = tokens();
        for req in [
            Request::new(()),
            with_auth(OPS),
            with_auth("Basic b3BzOnNlY3JldA=="),
            with_auth("Bearer 0123456789abcdef-opz"),
            with_auth("Bearer "),
        ] {
            assert_eq!(
                t.check(req).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
    }

    #[test]
    fn without_tokens_everyone_passes_as_an_operator() {
        let t = Tokens::default();
        assert!(!t.enabled());
        let req = t.check(Request::new(())).unwrap();
        assert_eq!(
            require(&req, Role::Operator, "Drain").unwrap().role,
            Role::Operator
        );
    }

    #[test]
    fn bad_entries_are_refused_with_where_they_are_and_never_the_token() {
        for (entry, says) in [
            ("admin:x:0123456789abcdef", "role"),
            ("viewer::0123456789abcdef", "name"),
            ("viewer:x:short", "at least 16"),
            ("viewer:x", "role:name:token"),
            (
                "viewer:a:0123456789abcdef,operator:b:0123456789abcdef",
                "also another",
            ),
        ] {
            let err = Tokens::load(None, Some(entry)).unwrap_err();
            assert!(err.contains(says), "{entry}: {err}");
            assert!(err.contains(TOKENS_ENV), "{err}");
            assert!(
                !err.contains("0123456789abcdef"),
                "the error shows the token: {err}"
            );
        }
    }

    #[test]
    fn the_file_takes_comments_and_blank_lines() {
        let dir = std::env::temp_dir().join(format!("trunkline-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, format!("# who may operate\n\noperator:ops:{OPS}\n")).unwrap();
        let t = Tokens::load(Some(&path), None).unwrap();
        assert_eq!(t.len(), 1);
        std::fs::write(&path, "operator:ops:x\n").unwrap();
        let err = Tokens::load(Some(&path), None).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        let err = Tokens::load(Some(Path::new("/nonexistent/tokens")), None).unwrap_err();
        assert!(err.contains("admin.tokens_file"), "{err}");
    }
}
