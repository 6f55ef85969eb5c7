//! The configured media interfaces and how one is picked for a party — rtpengine's logical
//! interfaces (`daemon/media_socket.c`, `get_logical_interface`; `daemon/call.c`,
//! `__init_interface`).
//!
//! A *logical interface* is a name; under it sit one address per family (an IPv4 and an
//! IPv6 address may both be `external`). A party is given a logical interface by name (ng
//! `direction`), or keeps the one it has, or gets the default; the address family then
//! picks the address. Pure: no sockets, so selection is unit-tested on its own.

use crate::{AddressFamily, MediaError, MediaInterface};
use std::net::IpAddr;

/// A checked, immutable list of interfaces; indices into it identify an address, and
/// "logical ids" identify a name.
#[derive(Debug, Clone)]
pub struct Interfaces {
    list: Vec<MediaInterface>,
    /// Logical id of each entry of `list`: the index of the first entry with its name.
    logical: Vec<usize>,
}

impl Interfaces {
    /// Checks what rtpengine refuses or what could not work here: no interface at all, an
    /// empty name, bind and advertised addresses of different families, and a second
    /// address of one family under one name (rtpengine would offer it as an extra ICE
    /// candidate; without ICE it could never be used, so it is a configuration mistake).
    pub fn new(list: Vec<MediaInterface>) -> Result<Self, MediaError> {
        if list.is_empty() {
            return Err(MediaError::Config("no media interface configured".into()));
        }
        let mut logical = Vec::with_capacity(list.len());
        for (i, iface) in list.iter().enumerate() {
            if iface.name.is_empty() {
                return Err(MediaError::Config(format!(
                    "interface {} has an empty name",
                    iface.bind
                )));
            }
            if iface.bind.is_ipv4() != iface.advertise.is_ipv4() {
                return Err(MediaError::Config(format!(
                    "interface {iface}: bind {} and advertise {} are of different address families",
                    iface.bind, iface.advertise
                )));
            }
            if let Some(dup) = list[..i]
                .iter()
                .find(|o| o.name == iface.name && o.family() == iface.family())
            {
                return Err(MediaError::Config(format!(
                    "interfaces {dup} and {iface}: one name may have one {} address",
                    iface.family()
                )));
            }
            let first = list[..i]
                .iter()
                .position(|o| o.name == iface.name)
                .unwrap_or(i);
            logical.push(first);
        }
        Ok(Interfaces { list, logical })
    }

    /// A small number naming the bind address `ip`: the index of the first entry bound
    /// on it (two entries may share one), so that a bound socket is named by this and its
    /// port alone.
    pub fn bind_index(&self, ip: IpAddr) -> usize {
        self.list
            .iter()
            .position(|i| i.bind == ip)
            .unwrap_or(self.list.len())
    }

    /// All entries, in configuration order.
    pub fn all(&self) -> &[MediaInterface] {
        &self.list
    }

    /// The entry at `index` (an index [`Interfaces::select`] returned). Falls back to the
    /// default so a stale index can never panic; indices come from this list only.
    pub fn get(&self, index: usize) -> &MediaInterface {
        self.list.get(index).unwrap_or(&self.list[0])
    }

    /// The logical id (name) of the entry at `index`.
    pub fn logical_of(&self, index: usize) -> usize {
        self.logical.get(index).copied().unwrap_or(0)
    }

    /// The logical id of `name`, if it is configured.
    pub fn logical_id(&self, name: &str) -> Option<usize> {
        self.list
            .iter()
            .position(|i| i.name == name)
            .map(|i| self.logical_of(i))
    }

    /// Whether a logical interface called `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.logical_id(name).is_some()
    }

    /// The address to bind a party on: under the logical interface `logical` (a logical
    /// id), or with none the default, the entry of `family` if there is one, else the
    /// name's first entry — rtpengine's fallback to another family when the name has no
    /// address of the wanted one.
    ///
    /// Without a name, rtpengine takes the first interface *of the wanted family*, whatever
    /// its name (for IPv4 that is the first one given, as its documentation says), and the
    /// first of all when no interface has that family.
    pub fn select(&self, logical: Option<usize>, family: Option<AddressFamily>) -> usize {
        let fits = |i: &MediaInterface| family.is_none_or(|f| i.family() == f);
        match logical {
            Some(id) => {
                let named = |(idx, _): &(usize, &MediaInterface)| self.logical[*idx] == id;
                self.list
                    .iter()
                    .enumerate()
                    .filter(named)
                    .find(|(_, i)| fits(i))
                    .or_else(|| self.list.iter().enumerate().find(named))
                    .map_or(0, |(idx, _)| idx)
            }
            None => self.list.iter().position(fits).unwrap_or(0),
        }
    }

    /// [`Interfaces::select`] by name; a name that is not configured is
    /// [`MediaError::UnknownInterface`].
    pub fn select_name(
        &self,
        name: Option<&str>,
        family: Option<AddressFamily>,
    ) -> Result<usize, MediaError> {
        let logical = match name {
            Some(n) => Some(
                self.logical_id(n)
                    .ok_or_else(|| MediaError::UnknownInterface(n.to_owned()))?,
            ),
            None => None,
        };
        Ok(self.select(logical, family))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn iface(name: &str, bind: &str) -> MediaInterface {
        MediaInterface::new(name, ip(bind), ip(bind))
    }

    fn sbc() -> Interfaces {
        Interfaces::new(vec![
            iface("internal", "10.0.0.5"),
            MediaInterface::new("external", ip("192.0.2.5"), ip("203.0.113.5")),
            iface("external", "2001:db8::5"),
            iface("v6only", "2001:db8::6"),
        ])
        .expect("valid")
    }

    const V4: Option<AddressFamily> = Some(AddressFamily::Ip4);
    const V6: Option<AddressFamily> = Some(AddressFamily::Ip6);

    #[test]
    fn a_name_picks_its_address_of_the_wanted_family() {
        let i = sbc();
        assert_eq!(i.select_name(Some("internal"), V4).expect("known"), 0);
        assert_eq!(i.select_name(Some("external"), V4).expect("known"), 1);
        assert_eq!(i.select_name(Some("external"), V6).expect("known"), 2);
        assert_eq!(i.select_name(Some("external"), None).expect("known"), 1);
        assert_eq!(i.get(1).advertise, ip("203.0.113.5"));
        assert_eq!(i.logical_of(2), i.logical_of(1));
    }

    #[test]
    fn a_name_without_the_wanted_family_falls_back_to_its_other_address() {
        let i = sbc();
        assert_eq!(i.select_name(Some("internal"), V6).expect("known"), 0);
        assert_eq!(i.select_name(Some("v6only"), V4).expect("known"), 3);
    }

    #[test]
    fn no_name_is_the_first_interface_of_the_family() {
        let i = sbc();
        assert_eq!(i.select_name(None, None).expect("default"), 0);
        assert_eq!(i.select_name(None, V4).expect("default"), 0);
        assert_eq!(i.select_name(None, V6).expect("default"), 2);
        let v4_only = Interfaces::new(vec![iface("a", "127.0.0.1")]).expect("valid");
        assert_eq!(v4_only.select(None, V6), 0);
    }

    #[test]
    fn unknown_names_are_an_error() {
        let e = sbc()
            .select_name(Some("dmz"), V4)
            .expect_err("not configured");
        assert!(
            matches!(e, MediaError::UnknownInterface(ref n) if n == "dmz"),
            "{e}"
        );
        assert!(!sbc().contains("dmz"));
        assert!(sbc().contains("external"));
    }

    #[test]
    fn bad_lists_are_refused() {
        let refused =
            |list: Vec<MediaInterface>| matches!(Interfaces::new(list), Err(MediaError::Config(_)));
        assert!(refused(vec![]));
        assert!(refused(vec![iface("", "127.0.0.1")]));
        assert!(refused(vec![MediaInterface::new(
            "x",
            ip("127.0.0.1"),
            ip("::1")
        )]));
        assert!(refused(vec![
            iface("x", "127.0.0.1"),
            iface("x", "127.0.0.2")
        ]));
        // One name, one address of each family; two names on one address: fine.
        assert!(!refused(vec![iface("x", "127.0.0.1"), iface("x", "::1")]));
        assert!(!refused(vec![
            iface("x", "127.0.0.1"),
            iface("y", "127.0.0.1")
        ]));
    }
}
