//! The kernel fast path: once both ends of a stream are latched, its RTP is relayed by an
//! eBPF program on the interfaces' ingress instead of going through a worker, as
//! rtpengine does with its kernel module (`table` ≥ 0). It needs no module: Linux 6.6+
//! with tcx links and `CAP_BPF` + `CAP_NET_ADMIN` suffice; without them the relay logs
//! why and forwards everything in user space.
//!
//! The workers stay in charge: a packet the program does not match (first packets, a new
//! source, RTCP, IPv6, anything odd) goes up to the relay socket as before, and the worker
//! decides by its latching policy and then installs, replaces or removes the entry. The
//! program counts what it forwards in the entry, and the worker folds those counts into
//! the stream's statistics (see `worker`).

mod insn;
mod program;
mod sys;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use program::value;

/// Entries the map holds: one per forwarded direction (two per bidirectional stream).
const MAX_ENTRIES: u32 = 131_072;

/// How one direction of a stream is relayed by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// The relay socket the party sends to.
    pub(crate) local: SocketAddrV4,
    /// The only source accepted: where the party was latched.
    pub(crate) from: SocketAddrV4,
    /// The relay socket the packets leave from (the other party's).
    pub(crate) out_local: SocketAddrV4,
    /// Where they go: the other party's latched address.
    pub(crate) to: SocketAddrV4,
    /// The only SSRC relayed; another goes to the worker, whose statistics follow it.
    pub(crate) ssrc: u32,
}

/// Where a route's sequence-number tracking stands: the highest sequence number and how
/// often it wrapped, as `SeqTracker` keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SeqPosition {
    pub(crate) max_seq: u16,
    pub(crate) cycles: u32,
}

/// What the program counted for one route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Forwarded {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    /// CLOCK_MONOTONIC time of the last packet, if any.
    pub(crate) last: Option<Duration>,
    /// Sequence tracking, moved on from where the route was installed.
    pub(crate) seq: SeqPosition,
}

/// The loaded program, its links and its map. Dropping it detaches everything.
pub(crate) struct KernelPath {
    map: OwnedFd,
    _prog: OwnedFd,
    _links: Vec<OwnedFd>,
    loopback: u32,
    /// Every address of this host, with its interface if Ethernet-framed.
    ifindex_of: HashMap<Ipv4Addr, Option<u32>>,
}

impl std::fmt::Debug for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPath")
            .field("interfaces", &self._links.len())
            .finish()
    }
}

/// Whether interface `name` frames packets as the program reads them: an Ethernet header
/// (ARPHRD_ETHER, and loopback, which fakes one). Layer-3 devices (tun, WireGuard, GRE)
/// start at the IP header, so the program would misread them; their media stays in user
/// space.
fn ethernet_framed(name: &str) -> bool {
    const ARPHRD_ETHER: &str = "1";
    const ARPHRD_LOOPBACK: &str = "772";
    std::fs::read_to_string(format!("/sys/class/net/{name}/type"))
        .is_ok_and(|t| matches!(t.trim(), ARPHRD_ETHER | ARPHRD_LOOPBACK))
}

/// Every IPv4 address of this host, with its interface when the program can serve it.
fn host_addresses() -> io::Result<HashMap<Ipv4Addr, Option<u32>>> {
    let mut out = HashMap::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let Some(ip) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|a| a.ip())
        else {
            continue;
        };
        let index = if ethernet_framed(&ifa.interface_name) {
            Some(
                nix::net::if_::if_nametoindex(ifa.interface_name.as_str())
                    .map_err(io::Error::from)?,
            )
        } else {
            None
        };
        out.insert(ip, index);
    }
    Ok(out)
}

impl KernelPath {
    /// Loads the program and attaches it to the loopback interface and the interface of
    /// every relay address given (IPv6 and unspecified addresses are skipped: their media
    /// stays in user space).
    pub(crate) fn open(relay_addresses: &[IpAddr]) -> io::Result<KernelPath> {
        let ifindex_of = host_addresses()?;
        let loopback = nix::net::if_::if_nametoindex("lo").map_err(io::Error::from)?;
        let map = sys::hash_map(
            "tl_fwd",
            program::KEY_SIZE,
            u32::try_from(value::SIZE).unwrap_or(u32::MAX),
            MAX_ENTRIES,
        )?;
        let code = program::forwarder(map.as_raw_fd()).map_err(io::Error::other)?;
        let prog = sys::load_classifier("tl_fwd", &code)?;
        let mut attach = vec![loopback];
        for ip in relay_addresses {
            if let IpAddr::V4(v4) = ip {
                if let Some(&Some(i)) = ifindex_of.get(v4) {
                    if !attach.contains(&i) {
                        attach.push(i);
                    }
                }
            }
        }
        let links = attach
            .iter()
            .map(|&i| sys::attach_tcx_ingress(&prog, i))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(KernelPath {
            map,
            _prog: prog,
            _links: links,
            loopback,
            ifindex_of,
        })
    }

    fn is_local(&self, ip: Ipv4Addr) -> bool {
        ip.is_loopback() || self.ifindex_of.contains_key(&ip)
    }

    /// The interface holding a relay address (loopback for the whole 127/8).
    fn interface_of(&self, ip: Ipv4Addr) -> Option<u32> {
        if ip.is_loopback() {
            Some(self.loopback)
        } else {
            self.ifindex_of.get(&ip).copied().flatten()
        }
    }

    /// The (ingress, egress) interfaces of a route; `None` when the kernel cannot relay it
    /// (an address it does not know, such as a wildcard bind). Traffic between addresses of
    /// this host arrives on loopback; egress 0 means local delivery.
    fn interfaces(&self, r: &Route) -> Option<(u32, u32)> {
        let ingress = if self.is_local(*r.from.ip()) {
            self.loopback
        } else {
            self.interface_of(*r.local.ip())?
        };
        let egress = if self.is_local(*r.to.ip()) {
            0
        } else {
            self.interface_of(*r.out_local.ip())?
        };
        Some((ingress, egress))
    }

    fn key(local: SocketAddrV4) -> [u8; 8] {
        let mut k = [0u8; 8];
        k[..4].copy_from_slice(&local.ip().octets());
        k[4..6].copy_from_slice(&local.port().to_be_bytes());
        k
    }

    /// Installs (or replaces) a route, with its counters starting from zero and its
    /// sequence tracking from `seq`. False when the kernel cannot relay this route and the
    /// worker keeps it.
    pub(crate) fn install(&self, r: &Route, seq: SeqPosition) -> io::Result<bool> {
        let Some((ingress, egress)) = self.interfaces(r) else {
            return Ok(false);
        };
        let mut v = [0u8; value::SIZE];
        let mut put = |at: usize, bytes: &[u8]| v[at..at + bytes.len()].copy_from_slice(bytes);
        put(value::FROM_ADDR, &r.from.ip().octets());
        put(value::FROM_PORT, &r.from.port().to_be_bytes());
        put(value::NEW_SADDR, &r.out_local.ip().octets());
        put(value::NEW_DADDR, &r.to.ip().octets());
        put(value::NEW_SPORT, &r.out_local.port().to_be_bytes());
        put(value::NEW_DPORT, &r.to.port().to_be_bytes());
        put(value::IN_IFINDEX, &ingress.to_ne_bytes());
        put(value::OUT_IFINDEX, &egress.to_ne_bytes());
        put(value::SSRC, &r.ssrc.to_be_bytes());
        put(value::MAX_SEQ, &u32::from(seq.max_seq).to_ne_bytes());
        put(value::CYCLES, &seq.cycles.to_ne_bytes());
        sys::update(&self.map, &Self::key(r.local), &v)?;
        Ok(true)
    }

    /// What the program counted for the route on `local`, if it has one.
    pub(crate) fn forwarded(&self, local: SocketAddrV4) -> io::Result<Option<Forwarded>> {
        let mut v = [0u8; value::SIZE];
        if !sys::lookup(&self.map, &Self::key(local), &mut v)? {
            return Ok(None);
        }
        Ok(Some(Self::counts(&v)))
    }

    fn counts(v: &[u8; value::SIZE]) -> Forwarded {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[at..at + 8]);
            u64::from_ne_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&v[at..at + 4]);
            u32::from_ne_bytes(b)
        };
        let last = u64_at(value::LAST_NS);
        Forwarded {
            packets: u64_at(value::PACKETS),
            bytes: u64_at(value::BYTES),
            last: (last != 0).then(|| Duration::from_nanos(last)),
            seq: SeqPosition {
                max_seq: u16::try_from(u32_at(value::MAX_SEQ) & 0xffff).unwrap_or(0),
                cycles: u32_at(value::CYCLES),
            },
        }
    }

    /// Removes the route on `local` and returns its final counts (`None` if it had
    /// none), atomically, so no packet forwarded before the removal goes uncounted.
    pub(crate) fn take(&self, local: SocketAddrV4) -> io::Result<Option<Forwarded>> {
        let mut v = [0u8; value::SIZE];
        if !sys::lookup_and_delete(&self.map, &Self::key(local), &mut v)? {
            return Ok(None);
        }
        Ok(Some(Self::counts(&v)))
    }
}

/// CLOCK_MONOTONIC now, the clock `bpf_ktime_get_ns` reads (and `Instant` on Linux).
pub(crate) fn monotonic_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(Duration::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
