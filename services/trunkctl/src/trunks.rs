//! `trunkctl trunks …` and `trunkctl routes …`: files in the node's own configuration
//! format (`[[trunks]]`, `[[routes]]`, `[routing] default_trunk`), so what an operator
//! applies is what a node's file would say; printing as tables, JSON or YAML.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};
use trunkline_proto::admin::v1::{
    Route, RouteTrunk, RoutingTable, Trunk, TrunkAuth, TrunkHealth, TrunkLimits, TrunkRegister,
    TrunkRewrite, TrunkRewrites, TrunkTls,
};

use crate::calls::table;

/// A `[[trunks]]` entry as the node's configuration spells it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrunkFile {
    name: String,
    address: String,
    #[serde(default)]
    transport: Option<String>,
    #[serde(default)]
    anchor_media: Option<bool>,
    #[serde(default)]
    media_interface: Option<String>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    fix_nated_contact: bool,
    #[serde(default)]
    media_address: Option<String>,
    #[serde(default)]
    local_address: Option<String>,
    #[serde(default)]
    limits: Option<LimitsFile>,
    #[serde(default)]
    auth: Option<AuthFile>,
    #[serde(default)]
    outbound_auth: Option<AuthFile>,
    #[serde(default)]
    health: Option<HealthFile>,
    #[serde(default)]
    register: Option<RegisterFile>,
    #[serde(default)]
    tls: Option<TlsFile>,
    #[serde(default)]
    rewrites: Vec<RewriteFile>,
    #[serde(default)]
    trusted_identity: Option<bool>,
}

/// `[trunks.health]`; a key left out is the node's default (sent as 0 or empty).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HealthFile {
    interval_secs: u64,
    down_after: u32,
    up_after: u32,
    up_statuses: Vec<String>,
}

/// `[trunks.register]`; a key left out is the node's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RegisterFile {
    user: String,
    domain: String,
    expires_secs: u64,
    retry_min_secs: u64,
    retry_max_secs: u64,
}

/// `[trunks.tls]`: file paths on the node.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TlsFile {
    server_name: String,
    ca_file: String,
    cert_file: String,
    key_file: String,
    require_client_cert: bool,
}

/// `[[trunks.rewrites]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteFile {
    direction: String,
    field: String,
    pattern: String,
    replace: String,
}

/// `[trunks.auth]`: the password inline or in a file (read here, sent to the node).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    username: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_file: Option<std::path::PathBuf>,
}

/// `[trunks.limits]`; 0 or absent: no limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default)]
    calls_in: u32,
    #[serde(default)]
    cps_in: u32,
    #[serde(default)]
    calls_out: u32,
    #[serde(default)]
    cps_out: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    prefix: String,
    #[serde(default)]
    trunk: Option<String>,
    #[serde(default)]
    trunks: Vec<RouteTrunkFile>,
    #[serde(default)]
    from_trunk: Option<String>,
    #[serde(default)]
    provisional_timeout_ms: Option<u32>,
    #[serde(default)]
    failover_statuses: Vec<String>,
}

/// One trunk of a route's `trunks`: a name, or `{ name, priority, weight }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RouteTrunkFile {
    Name(String),
    Weighted(WeightedFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedFile {
    name: String,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    weight: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    #[serde(default)]
    default_trunk: Option<String>,
}

/// What `apply -f` reads: trunks, or routes and the default trunk.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyFile {
    #[serde(default)]
    trunks: Vec<TrunkFile>,
    #[serde(default)]
    routes: Vec<RouteFile>,
    #[serde(default)]
    routing: Option<RoutingFile>,
}

fn read(path: &Path) -> Result<ApplyFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if yaml {
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    } else {
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The trunks of a file, for `trunks apply -f`.
pub fn trunks_from(path: &Path) -> Result<Vec<Trunk>, String> {
    let file = read(path)?;
    if file.trunks.is_empty() {
        return Err(format!("{}: no [[trunks]] entry", path.display()));
    }
    file.trunks
        .into_iter()
        .map(|t| {
            let auth = t
                .auth
                .map(|a| credentials(a, &format!("trunks.{}.auth", t.name)))
                .transpose()?;
            let outbound_auth = t
                .outbound_auth
                .map(|a| credentials(a, &format!("trunks.{}.outbound_auth", t.name)))
                .transpose()?;
            Ok(Trunk {
                auth,
                outbound_auth,
                health: t.health.map(|h| TrunkHealth {
                    interval_secs: h.interval_secs,
                    down_after: h.down_after,
                    up_after: h.up_after,
                    up_statuses: h.up_statuses,
                }),
                register: t.register.map(|r| TrunkRegister {
                    user: r.user,
                    domain: r.domain,
                    expires_secs: r.expires_secs,
                    retry_min_secs: r.retry_min_secs,
                    retry_max_secs: r.retry_max_secs,
                }),
                tls: t.tls.map(|c| TrunkTls {
                    server_name: c.server_name,
                    ca_file: c.ca_file,
                    cert_file: c.cert_file,
                    key_file: c.key_file,
                    require_client_cert: c.require_client_cert,
                }),
                rewrites: (!t.rewrites.is_empty()).then(|| TrunkRewrites {
                    rules: t
                        .rewrites
                        .into_iter()
                        .map(|r| TrunkRewrite {
                            direction: r.direction,
                            field: r.field,
                            pattern: r.pattern,
                            replace: r.replace,
                        })
                        .collect(),
                }),
                trusted_identity: t.trusted_identity,
                clear: Vec::new(),
                state: None,
                name: t.name,
                address: t.address,
                transport: t.transport.unwrap_or_default(),
                sources: t.sources,
                anchor_media: t.anchor_media,
                media_interface: t.media_interface.unwrap_or_default(),
                fix_nated_contact: t.fix_nated_contact,
                media_address: t.media_address.unwrap_or_default(),
                local_address: t.local_address.unwrap_or_default(),
                limits: t.limits.map(|l| TrunkLimits {
                    calls_in: l.calls_in,
                    cps_in: l.cps_in,
                    calls_out: l.calls_out,
                    cps_out: l.cps_out,
                }),
            })
        })
        .collect()
}

/// Credentials with the password inline or in a file (read here: the node gets the
/// password, not the path).
fn credentials(a: AuthFile, key: &str) -> Result<TrunkAuth, String> {
    let password = match (a.password, a.password_file) {
        (Some(p), None) => p,
        (None, Some(f)) => std::fs::read_to_string(&f)
            .map_err(|e| format!("{key}: {}: {e}", f.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        _ => return Err(format!("{key}: give password or password_file")),
    };
    Ok(TrunkAuth {
        password,
        username: a.username,
    })
}

/// The routing table of a file, for `routes apply -f` (the whole table: routes the file
/// does not list are removed).
pub fn table_from(path: &Path) -> Result<RoutingTable, String> {
    let file = read(path)?;
    Ok(RoutingTable {
        routes: file
            .routes
            .into_iter()
            .map(|r| Route {
                prefix: r.prefix,
                trunk: r.trunk.unwrap_or_default(),
                trunks: r
                    .trunks
                    .into_iter()
                    .map(|t| match t {
                        RouteTrunkFile::Name(name) => RouteTrunk {
                            name,
                            priority: None,
                            weight: None,
                        },
                        RouteTrunkFile::Weighted(w) => RouteTrunk {
                            name: w.name,
                            priority: w.priority,
                            weight: w.weight,
                        },
                    })
                    .collect(),
                from_trunk: r.from_trunk.unwrap_or_default(),
                provisional_timeout_ms: r.provisional_timeout_ms.unwrap_or(0),
                failover_statuses: r.failover_statuses,
            })
            .collect(),
        default_trunk: file
            .routing
            .and_then(|r| r.default_trunk)
            .unwrap_or_default(),
    })
}

pub fn trunk_json(t: &Trunk) -> Value {
    json!({
        "name": t.name,
        "address": t.address,
        "transport": t.transport,
        "sources": t.sources,
        "anchorMedia": t.anchor_media,
        "mediaInterface": t.media_interface,
        "fixNatedContact": t.fix_nated_contact,
        "mediaAddress": t.media_address,
        "localAddress": t.local_address,
        "limits": t.limits.as_ref().map(|l| json!({
            "callsIn": l.calls_in,
            "cpsIn": l.cps_in,
            "callsOut": l.calls_out,
            "cpsOut": l.cps_out,
        })),
        "auth": t.auth.as_ref().map(|a| json!({ "username": a.username })),
        "outboundAuth": t.outbound_auth.as_ref().map(|a| json!({ "username": a.username })),
        "health": t.health.as_ref().map(|h| json!({
            "intervalSecs": h.interval_secs,
            "downAfter": h.down_after,
            "upAfter": h.up_after,
            "upStatuses": h.up_statuses,
        })),
        "register": t.register.as_ref().map(|r| json!({
            "user": r.user,
            "domain": r.domain,
            "expiresSecs": r.expires_secs,
            "retryMinSecs": r.retry_min_secs,
            "retryMaxSecs": r.retry_max_secs,
        })),
        "tls": t.tls.as_ref().map(|c| json!({
            "serverName": c.server_name,
            "caFile": c.ca_file,
            "certFile": c.cert_file,
            "keyFile": c.key_file,
            "requireClientCert": c.require_client_cert,
        })),
        "rewrites": t.rewrites.as_ref().map(|r| r.rules.iter().map(|r| json!({
            "direction": r.direction,
            "field": r.field,
            "pattern": r.pattern,
            "replace": r.replace,
        })).collect::<Vec<_>>()),
        "trustedIdentity": t.trusted_identity,
        "state": t.state.as_ref().map(|s| json!({
            "health": s.health,
            "healthChangedMs": s.health_changed_ms,
            "registration": (!s.registration.is_empty()).then_some(&s.registration),
            "registrationExpiresMs": s.registration_expires_ms,
            "registrationLastStatus": s.registration_last_status,
        })),
    })
}

pub fn trunks_table(trunks: &[Trunk]) -> String {
    let rows: Vec<Vec<String>> = trunks
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.address.clone(),
                t.transport.clone(),
                if t.anchor_media.unwrap_or(true) {
                    "anchored"
                } else {
                    "direct"
                }
                .to_string(),
                if t.sources.is_empty() {
                    t.address.clone()
                } else {
                    t.sources.join(",")
                },
                t.state
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |s| s.health.clone()),
                t.state
                    .as_ref()
                    .filter(|s| !s.registration.is_empty())
                    .map_or_else(|| "-".to_string(), |s| s.registration.clone()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ADDRESS",
            "TRANSPORT",
            "MEDIA",
            "SOURCES",
            "HEALTH",
            "REGISTRATION",
        ],
        &rows,
    )
}

pub fn table_json(t: &RoutingTable) -> Value {
    json!({
        "routes": t.routes.iter().map(route_json).collect::<Vec<_>>(),
        "defaultTrunk": t.default_trunk,
    })
}

fn route_json(r: &Route) -> Value {
    json!({
        "prefix": r.prefix,
        "trunk": (!r.trunk.is_empty()).then_some(&r.trunk),
        "fromTrunk": (!r.from_trunk.is_empty()).then_some(&r.from_trunk),
        "trunks": listed(r).iter().map(|(name, priority, weight)| json!({
            "name": name,
            "priority": priority,
            "weight": weight,
        })).collect::<Vec<_>>(),
        "provisionalTimeoutMs": (r.provisional_timeout_ms > 0).then_some(r.provisional_timeout_ms),
        "failoverStatuses": (!r.failover_statuses.is_empty()).then_some(&r.failover_statuses),
    })
}

/// A route's trunks with the priority and weight the node gives them (priority: the
/// position in the list unless set; weight 1 unless set).
fn listed(r: &Route) -> Vec<(String, u32, u32)> {
    let named = (!r.trunk.is_empty()).then(|| (r.trunk.clone(), None, None));
    named
        .into_iter()
        .chain(
            r.trunks
                .iter()
                .map(|t| (t.name.clone(), t.priority, t.weight)),
        )
        .enumerate()
        .map(|(i, (name, p, w))| {
            (
                name,
                p.unwrap_or(u32::try_from(i).unwrap_or(u32::MAX)),
                w.unwrap_or(1),
            )
        })
        .collect()
}

pub fn routes_table(t: &RoutingTable) -> String {
    let mut rows: Vec<Vec<String>> = t
        .routes
        .iter()
        .map(|r| {
            let trunks = listed(r)
                .iter()
                .map(|(name, p, w)| format!("{name}(p{p},w{w})"))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                r.prefix.clone(),
                if r.from_trunk.is_empty() {
                    "*".to_string()
                } else {
                    r.from_trunk.clone()
                },
                trunks,
                if r.provisional_timeout_ms > 0 {
                    format!("{} ms", r.provisional_timeout_ms)
                } else {
                    "-".to_string()
                },
            ]
        })
        .collect();
    if !t.default_trunk.is_empty() {
        rows.push(vec![
            "(default)".to_string(),
            "*".to_string(),
            t.default_trunk.clone(),
            "-".to_string(),
        ]);
    }
    table(&["PREFIX", "FROM", "TRUNKS", "NO-ANSWER TIMER"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("trunkctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_node_file_format_applies_as_is() {
        let p = write(
            "t.toml",
            "[[trunks]]\nname = \"b\"\naddress = \"192.0.2.1:5060\"\ntransport = \"tcp\"\n\
             anchor_media = false\n\n[[routes]]\nprefix = \"49\"\ntrunk = \"b\"\n\n\
             [routing]\ndefault_trunk = \"b\"\n",
        );
        let trunks = trunks_from(&p).unwrap();
        assert_eq!(trunks[0].transport, "tcp");
        assert_eq!(trunks[0].anchor_media, Some(false));
        let t = table_from(&p).unwrap();
        assert_eq!(t.routes[0].prefix, "49");
        assert_eq!(t.default_trunk, "b");
        assert!(routes_table(&t).contains("(default)"));
        let p = write(
            "l.toml",
            "[[routes]]\nprefix = \"44\"\nfrom_trunk = \"peer\"\nprovisional_timeout_ms = 1500\n\
             trunks = [\"a\", { name = \"b\", priority = 0, weight = 3 }]\n",
        );
        let t = table_from(&p).unwrap();
        let r = &t.routes[0];
        assert_eq!(r.trunks[1].weight, Some(3));
        assert_eq!(listed(r), vec![("a".into(), 0, 1), ("b".into(), 0, 3)]);
        let shown = routes_table(&t);
        assert!(shown.contains("a(p0,w1) b(p0,w3)"), "{shown}");
        assert!(
            shown.contains("1500 ms") && shown.contains("peer"),
            "{shown}"
        );
    }

    #[test]
    fn a_trunk_with_every_section_of_the_node_file_applies() {
        let p = write(
            "full.toml",
            "[[trunks]]\nname = \"c\"\naddress = \"sbc.carrier.example\"\ntransport = \"tls\"\n\
             trusted_identity = true\n\
             [trunks.outbound_auth]\nusername = \"acme\"\npassword = \"pw\"\n\
             [trunks.health]\ninterval_secs = 5\n\
             [trunks.register]\nexpires_secs = 600\n\
             [trunks.tls]\nserver_name = \"sbc.carrier.example\"\nrequire_client_cert = true\n\
             [[trunks.rewrites]]\ndirection = \"outbound\"\nfield = \"ruri\"\n\
             pattern = '^\\+44(\\d+)$'\nreplace = '0$1'\n",
        );
        let t = trunks_from(&p).unwrap().remove(0);
        assert_eq!(t.outbound_auth.as_ref().unwrap().password, "pw");
        assert_eq!(t.health.as_ref().unwrap().interval_secs, 5);
        assert_eq!(t.register.as_ref().unwrap().expires_secs, 600);
        assert!(t.tls.as_ref().unwrap().require_client_cert);
        assert_eq!(
            t.rewrites.as_ref().unwrap().rules[0].pattern,
            r"^\+44(\d+)$"
        );
        assert_eq!(t.trusted_identity, Some(true));
        let shown = trunk_json(&t);
        assert_eq!(shown["tls"]["serverName"], "sbc.carrier.example");
        assert_eq!(shown["outboundAuth"]["username"], "acme");
        assert!(shown["outboundAuth"].get("password").is_none());
    }

    #[test]
    fn yaml_works_and_unknown_keys_are_refused() {
        let p = write(
            "r.yaml",
            "routes:\n  - prefix: \"44\"\n    trunk: uk\nrouting:\n  default_trunk: uk\n",
        );
        assert_eq!(table_from(&p).unwrap().routes[0].trunk, "uk");
        let p = write(
            "w.yaml",
            "routes:\n  - prefix: \"44\"\n    trunks: [{name: uk, weight: 2, colour: red}]\n",
        );
        assert!(table_from(&p).is_err(), "an unknown key in a route's trunk");
        let p = write("bad.toml", "[[trunks]]\nname = \"b\"\naddres = \"x\"\n");
        let err = trunks_from(&p).unwrap_err();
        assert!(err.contains("addres"), "{err}");
        let p = write("none.toml", "[[routes]]\nprefix = \"1\"\ntrunk = \"b\"\n");
        assert!(trunks_from(&p).unwrap_err().contains("no [[trunks]]"));
    }
}
