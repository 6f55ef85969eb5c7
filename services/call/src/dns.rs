//! Trunks named by DNS (RFC 3263 §4): a trunk whose `address` is a host name is resolved
//! NAPTR → SRV → A/AAAA (a name with a port: A/AAAA only, §4.2), in the background, and
//! every call picks among the targets of the last answer without waiting for DNS: the
//! lowest priority first, weighted within a priority (RFC 2782), skipping targets that
//! failed recently (§4.3: a target that answered 503, timed out or refused the
//! connection is avoided for `avoid`). Answers are kept until their TTL runs out and
//! then looked up again; a failed lookup keeps the previous answer and is retried soon.
//!
//! The picking and the avoid table are plain data (tested without DNS); the lookups are
//! hickory-resolver's, on a task beside the dispatcher (`refresh`), so a call actor
//! never blocks on DNS.

use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trunkline_sip::Transport;

/// One place a named trunk can be reached, from its SRV record (or its A/AAAA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// Lower first: the NAPTR order, then the SRV priority.
    pub priority: u32,
    /// Share of the calls among the targets of one priority (RFC 2782).
    pub weight: u16,
}

/// What the node asks the resolver, and how long a failed target is avoided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers (`ip:port`, UDP); empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    pub avoid: Duration,
    /// A failed lookup is tried again after this long (the previous answer stays in use).
    pub retry: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            avoid: Duration::from_secs(30),
            retry: Duration::from_secs(5),
        }
    }
}

/// The name a trunk is resolved by, with how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsName {
    pub host: Arc<str>,
    /// Given with the name: A/AAAA only, at this port.
    pub port: Option<u16>,
    pub transport: Transport,
}

#[derive(Debug)]
struct Entry {
    targets: Arc<[Target]>,
    refresh_at: Instant,
    looking: bool,
}

/// The answers of every named trunk and the targets being avoided.
#[derive(Debug, Default)]
pub struct DnsTable {
    entries: Mutex<HashMap<DnsName, Entry>>,
    avoided: Mutex<HashMap<SocketAddr, Instant>>,
}

impl DnsTable {
    /// The targets of `name` from its last answer (empty: never resolved, or nothing).
    pub fn targets(&self, name: &DnsName) -> Arc<[Target]> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(name)
            .map_or_else(|| Arc::from(Vec::new()), |e| e.targets.clone())
    }

    /// `addr` failed a request at `now`: calls avoid it until `until`.
    pub fn avoid(&self, addr: SocketAddr, now: Instant, until: Instant) {
        let mut avoided = self.avoided.lock().unwrap_or_else(|e| e.into_inner());
        avoided.retain(|_, t| *t > now);
        avoided.insert(addr, until);
    }

    pub fn is_avoided(&self, addr: SocketAddr, now: Instant) -> bool {
        let avoided = self.avoided.lock().unwrap_or_else(|e| e.into_inner());
        avoided.get(&addr).is_some_and(|t| *t > now)
    }

    /// The names due for a lookup at `now` among `names` (each marked as being looked
    /// up); names no longer wanted are forgotten.
    pub fn due(&self, names: &[DnsName], now: Instant) -> Vec<DnsName> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|n, _| names.contains(n));
        let mut out = Vec::new();
        for n in names {
            let e = entries.entry(n.clone()).or_insert_with(|| Entry {
                targets: Arc::from(Vec::new()),
                refresh_at: now,
                looking: false,
            });
            if !e.looking && e.refresh_at <= now {
                e.looking = true;
                out.push(n.clone());
            }
        }
        out
    }

    /// A lookup of `name` ended: its targets until `valid_until`, or (`Err`) the previous
    /// answer kept and a new lookup at `retry_at`.
    pub fn answered(
        &self,
        name: &DnsName,
        result: Result<(Vec<Target>, Instant), String>,
        retry_at: Instant,
    ) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = entries.get_mut(name) else {
            return false;
        };
        e.looking = false;
        match result {
            Ok((targets, valid_until)) => {
                let changed = *e.targets != *targets;
                e.targets = Arc::from(targets);
                e.refresh_at = valid_until.max(Instant::now() + Duration::from_secs(1));
                changed
            }
            Err(_) => {
                e.refresh_at = retry_at;
                false
            }
        }
    }
}

/// The target a call tries next among `targets`: the lowest priority among those `skip`
/// does not exclude, and within it a weighted random pick (RFC 2782: weight 0 gets a
/// small chance, the others in proportion); `roll` is a random number.
pub fn pick(targets: &[Target], skip: impl Fn(SocketAddr) -> bool, roll: u32) -> Option<Target> {
    let usable: Vec<&Target> = targets.iter().filter(|t| !skip(t.addr)).collect();
    let best = usable.iter().map(|t| t.priority).min()?;
    let tier: Vec<&Target> = usable.into_iter().filter(|t| t.priority == best).collect();
    let total: u64 = tier.iter().map(|t| u64::from(t.weight) + 1).sum();
    let mut at = u64::from(roll) % total;
    for t in &tier {
        let w = u64::from(t.weight) + 1;
        if at < w {
            return Some(**t);
        }
        at -= w;
    }
    tier.last().map(|t| **t)
}

/// The resolver of `cfg` (its servers, else the system's).
pub fn resolver(cfg: &DnsConfig) -> Result<TokioResolver, String> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::name_server::TokioConnectionProvider;
    use hickory_resolver::proto::xfer::Protocol;
    if cfg.servers.is_empty() {
        return TokioResolver::builder_tokio()
            .map(|b| b.build())
            .map_err(|e| e.to_string());
    }
    let mut config = ResolverConfig::new();
    for s in &cfg.servers {
        config.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
    }
    let mut builder =
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
    builder.options_mut().attempts = 2;
    builder.options_mut().timeout = Duration::from_secs(2);
    Ok(builder.build())
}

/// The NAPTR service of a transport (RFC 3263 §4.1).
fn service(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "SIP+D2U",
        Transport::Tcp => "SIP+D2T",
        Transport::Tls => "SIPS+D2T",
    }
}

/// The SRV prefix of a transport when there is no NAPTR (§4.1).
fn srv_prefix(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "_sip._udp",
        Transport::Tcp => "_sip._tcp",
        Transport::Tls => "_sips._tcp",
    }
}

fn default_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tls => 5061,
        _ => 5060,
    }
}

/// Resolves `name` as RFC 3263 §4 says for its transport: its targets and when the
/// answer runs out (the smallest TTL met on the way). A record that does not exist is
/// an answer (the name has no NAPTR, a target has no address); a lookup that failed
/// (timeout, server failure) is an error for the whole name, so a transient failure
/// never replaces a complete answer with part of one: the caller keeps the last.
pub async fn resolve(
    resolver: &TokioResolver,
    name: &DnsName,
) -> Result<(Vec<Target>, Instant), String> {
    let mut valid = Instant::now() + Duration::from_secs(3600);
    let host = name.host.as_ref();
    if let Some(port) = name.port {
        return addresses(resolver, host, port, 0, 0, &mut valid)
            .await
            .map(|t| (t, valid))
            .map_err(String::from);
    }
    // NAPTR: the SRV names offered for our transport, in order and preference.
    let mut srv_names: Vec<(u32, String)> = Vec::new();
    match resolver.lookup(host, RecordType::NAPTR).await {
        Ok(naptr) => {
            valid = valid.min(naptr.valid_until());
            let mut records: Vec<_> = naptr
                .iter()
                .filter_map(|r| match r {
                    RData::NAPTR(n) => Some(n.clone()),
                    _ => None,
                })
                .filter(|n| {
                    n.flags().eq_ignore_ascii_case(b"s")
                        && n.services()
                            .eq_ignore_ascii_case(service(name.transport).as_bytes())
                })
                .collect();
            records.sort_by_key(|n| (n.order(), n.preference()));
            for (rank, n) in records.iter().enumerate() {
                srv_names.push((rank as u32, n.replacement().to_utf8()));
            }
        }
        Err(e) if absent(&e) => {}
        Err(e) => return Err(format!("{host} NAPTR: {e}")),
    }
    if srv_names.is_empty() {
        srv_names.push((0, format!("{}.{host}", srv_prefix(name.transport))));
    }
    let mut targets = Vec::new();
    for (rank, srv_name) in &srv_names {
        let srv = match resolver.srv_lookup(srv_name.as_str()).await {
            Ok(srv) => srv,
            Err(e) if absent(&e) => continue,
            Err(e) => return Err(format!("{srv_name}: {e}")),
        };
        valid = valid.min(srv.as_lookup().valid_until());
        for r in srv.iter() {
            let target = r.target().to_utf8();
            match addresses(
                resolver,
                &target,
                r.port(),
                (rank << 16) | u32::from(r.priority()),
                r.weight(),
                &mut valid,
            )
            .await
            {
                Ok(mut found) => targets.append(&mut found),
                // A target named by SRV with no address is left out; one whose lookup
                // failed fails the whole answer (see above).
                Err(Lookup::Absent(_)) => {}
                Err(Lookup::Failed(e)) => return Err(e),
            }
        }
        if !targets.is_empty() {
            break;
        }
    }
    if targets.is_empty() {
        // No SRV: the name's own addresses at the transport's default port (§4.2).
        targets = addresses(
            resolver,
            host,
            default_port(name.transport),
            0,
            0,
            &mut valid,
        )
        .await?;
    }
    Ok((targets, valid))
}

/// The answer says the record does not exist (as opposed to: no answer came).
fn absent(e: &hickory_resolver::ResolveError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}

/// Why a name gave no addresses.
enum Lookup {
    /// It has none.
    Absent(String),
    /// The lookup failed.
    Failed(String),
}

impl From<Lookup> for String {
    fn from(l: Lookup) -> String {
        match l {
            Lookup::Absent(e) | Lookup::Failed(e) => e,
        }
    }
}

async fn addresses(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
    priority: u32,
    weight: u16,
    valid: &mut Instant,
) -> Result<Vec<Target>, Lookup> {
    let ips = resolver.lookup_ip(host).await.map_err(|e| {
        let text = format!("{host}: {e}");
        if absent(&e) {
            Lookup::Absent(text)
        } else {
            Lookup::Failed(text)
        }
    })?;
    *valid = (*valid).min(ips.valid_until());
    Ok(ips
        .iter()
        .map(|ip| Target {
            addr: SocketAddr::new(ip, port),
            priority,
            weight,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(addr: &str, priority: u32, weight: u16) -> Target {
        Target {
            addr: addr.parse().unwrap(),
            priority,
            weight,
        }
    }

    #[test]
    fn the_lowest_priority_wins_and_weights_share_it() {
        let targets = [
            t("192.0.2.1:5060", 10, 3),
            t("192.0.2.2:5060", 10, 1),
            t("192.0.2.3:5060", 20, 100),
        ];
        // Weights 3 and 1 (each +1): 4/6 and 2/6 of the rolls; the priority 20 never.
        let picks: Vec<Target> = (0..600u32)
            .map(|r| pick(&targets, |_| false, r).unwrap())
            .collect();
        let first = picks.iter().filter(|p| p.addr == targets[0].addr).count();
        assert_eq!(first, 400);
        assert!(picks.iter().all(|p| p.priority == 10));
        // The first two skipped (tried, or avoided): the next priority.
        let next = pick(&targets, |a| a != targets[2].addr, 7);
        assert_eq!(next.unwrap().addr, "192.0.2.3:5060".parse().unwrap());
        assert!(pick(&targets, |_| true, 0).is_none());
    }

    #[test]
    fn answers_are_kept_until_their_ttl_and_kept_when_a_lookup_fails() {
        let table = DnsTable::default();
        let name = DnsName {
            host: "carrier.test".into(),
            port: None,
            transport: Transport::Udp,
        };
        let now = Instant::now();
        let names = std::slice::from_ref(&name);
        assert_eq!(table.due(names, now), vec![name.clone()]);
        // In flight: not due again.
        assert!(table.due(names, now).is_empty());
        let targets = vec![t("192.0.2.1:5060", 0, 0)];
        let ttl = now + Duration::from_secs(30);
        assert!(table.answered(&name, Ok((targets.clone(), ttl)), now));
        assert_eq!(&*table.targets(&name), &targets[..]);
        assert!(table.due(names, now + Duration::from_secs(29)).is_empty());
        assert_eq!(table.due(names, ttl).len(), 1);
        // A failure keeps the answer and retries later.
        assert!(!table.answered(&name, Err("timeout".into()), ttl + Duration::from_secs(5)));
        assert_eq!(&*table.targets(&name), &targets[..]);
        assert!(table.due(names, ttl + Duration::from_secs(4)).is_empty());
        // Avoided targets come back after their time.
        let a: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        table.avoid(a, now, now + Duration::from_secs(30));
        assert!(table.is_avoided(a, now + Duration::from_secs(29)));
        assert!(!table.is_avoided(a, now + Duration::from_secs(30)));
        // A name no longer configured is forgotten.
        table.due(&[], now);
        assert!(table.targets(&name).is_empty());
    }
}
