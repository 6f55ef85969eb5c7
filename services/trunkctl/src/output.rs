//! How `trunkctl` prints what the API returns: an aligned table for people, JSON or YAML
//! (the same document) for scripts. Field names in JSON/YAML are the proto's JSON names,
//! so a script written against `trunkctl -o json` reads a generic gRPC client's output too.

use std::fmt::Write as _;

use serde_json::{json, Value};
use trunkline_proto::admin::v1::{ClusterNode, ListNodesResponse, Node, NodeState};

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

fn state_name(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::Active) => "ACTIVE",
        Ok(NodeState::Draining) => "DRAINING",
        _ => "UNKNOWN",
    }
}

pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map(ToString::to_string).unwrap_or_default()
}

fn seconds(d: Option<&prost_types::Duration>) -> u64 {
    d.and_then(|d| u64::try_from(d.seconds).ok()).unwrap_or(0)
}

/// "3d 4h 5m 6s", leading zero units left out.
fn human(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (v, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if v > 0 || !out.is_empty() {
            let _ = write!(out, "{v}{unit} ");
        }
    }
    let _ = write!(out, "{s}s");
    out
}

/// The node as the proto's JSON mapping writes it (uint64 as strings, enums by name).
pub fn node_json(n: &Node) -> Value {
    let limits = n.limits.unwrap_or_default();
    json!({
        "id": n.id,
        "version": n.version,
        "startedAt": rfc3339(n.started_at.as_ref()),
        "uptime": format!("{}s", seconds(n.uptime.as_ref())),
        "state": format!("NODE_STATE_{}", state_name(n.state)),
        "activeCalls": n.active_calls.to_string(),
        "sipListeners": n.sip_listeners.iter().map(|l| json!({
            "transport": l.transport,
            "address": l.address,
            "advertise": l.advertise,
        })).collect::<Vec<_>>(),
        "adminAddress": n.admin_address,
        "metricsAddress": n.metrics_address,
        "limits": {
            "maxCalls": limits.max_calls.to_string(),
            "mediaPortMin": limits.media_port_min,
            "mediaPortMax": limits.media_port_max,
        },
    })
}

/// Key/value rows, keys aligned.
pub fn node_table(n: &Node) -> String {
    let limits = n.limits.unwrap_or_default();
    let mut rows: Vec<(&str, String)> = vec![
        ("ID", n.id.clone()),
        ("VERSION", n.version.clone()),
        ("STATE", state_name(n.state).to_string()),
        ("STARTED", rfc3339(n.started_at.as_ref())),
        ("UPTIME", human(seconds(n.uptime.as_ref()))),
        (
            "CALLS",
            format!("{} active, at most {}", n.active_calls, limits.max_calls),
        ),
    ];
    for l in &n.sip_listeners {
        rows.push((
            "SIP",
            format!("{} {} (advertises {})", l.transport, l.address, l.advertise),
        ));
    }
    rows.push(("ADMIN", n.admin_address.clone()));
    rows.push((
        "METRICS",
        if n.metrics_address.is_empty() {
            "off".to_string()
        } else {
            n.metrics_address.clone()
        },
    ));
    rows.push((
        "MEDIA PORTS",
        if limits.media_port_max == 0 {
            "media off".to_string()
        } else {
            format!("{}-{}", limits.media_port_min, limits.media_port_max)
        },
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn cluster_node_json(n: &ClusterNode) -> Value {
    json!({
        "id": n.id,
        "version": n.version,
        "state": format!("NODE_STATE_{}", state_name(n.state)),
        "sip": n.sip,
        "adminAddress": n.admin_address,
        "startedAt": rfc3339(n.started_at.as_ref()),
        "local": n.local,
    })
}

/// `node list`: the members, and how this node sees etcd.
pub fn print_nodes(r: &ListNodesResponse, format: Format) -> anyhow::Result<()> {
    let value = json!({
        "nodes": r.nodes.iter().map(cluster_node_json).collect::<Vec<_>>(),
        "clustered": r.clustered,
        "etcdConnected": r.etcd_connected,
        "registered": r.registered,
    });
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(&value)?),
        Format::Table => {
            let rows: Vec<Vec<String>> = r
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        if n.local {
                            format!("{} *", n.id)
                        } else {
                            n.id.clone()
                        },
                        state_name(n.state).to_string(),
                        n.version.clone(),
                        n.sip.join(" "),
                        n.admin_address.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::calls::table(&["ID", "STATE", "VERSION", "SIP", "ADMIN"], &rows)
            );
            if r.clustered && !r.etcd_connected {
                println!("(etcd unreachable: the last membership seen)");
            }
        }
    }
    Ok(())
}

pub fn print_node(n: &Node, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Table => print!("{}", node_table(n)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&node_json(n))?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(&node_json(n))?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_proto::admin::v1::{Limits, SipListener};

    fn node() -> Node {
        Node {
            id: "n1".into(),
            version: "0.1.0".into(),
            started_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            uptime: Some(prost_types::Duration {
                seconds: 3_725,
                nanos: 5,
            }),
            state: NodeState::Draining as i32,
            active_calls: 7,
            sip_listeners: vec![SipListener {
                transport: "udp".into(),
                address: "127.0.0.1:5060".into(),
                advertise: "192.0.2.1".into(),
            }],
            admin_address: "127.0.0.1:50051".into(),
            metrics_address: String::new(),
            limits: Some(Limits {
                max_calls: 100,
                media_port_min: 30000,
                media_port_max: 39999,
            }),
        }
    }

    #[test]
    fn table_rows_are_aligned_and_readable() {
        let t = node_table(&node());
        assert!(t.contains("STATE        DRAINING\n"), "{t}");
        assert!(t.contains("UPTIME       1h 2m 5s\n"), "{t}");
        assert!(t.contains("CALLS        7 active, at most 100\n"), "{t}");
        assert!(
            t.contains("SIP          udp 127.0.0.1:5060 (advertises 192.0.2.1)\n"),
            "{t}"
        );
        assert!(t.contains("METRICS      off\n"), "{t}");
        assert!(t.contains("MEDIA PORTS  30000-39999\n"), "{t}");
    }

    #[test]
    fn json_uses_the_proto_json_names_and_yaml_says_the_same() {
        let j = node_json(&node());
        assert_eq!(j["state"], "NODE_STATE_DRAINING");
        assert_eq!(j["activeCalls"], "7");
        assert_eq!(j["limits"]["maxCalls"], "100");
        assert_eq!(j["sipListeners"][0]["advertise"], "192.0.2.1");
        let yaml = serde_yaml_ng::to_string(&j).unwrap();
        let back: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back, j);
    }

    #[test]
    fn durations_print_without_leading_zero_units() {
        assert_eq!(human(0), "0s");
        assert_eq!(human(61), "1m 1s");
        assert_eq!(human(86_400 + 1), "1d 0h 0m 1s");
    }
}
