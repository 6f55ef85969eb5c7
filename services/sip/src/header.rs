//! Header fields as received: the name is classified once (compact forms and case
//! folded to a known kind) but the original bytes are kept, so unknown headers are
//! re-serialised byte for byte.

use bytes::Bytes;

/// Headers the stack interprets. Everything else is `Other` and passes untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    MaxForwards,
    ContentLength,
    ContentType,
    ContentEncoding,
    Route,
    RecordRoute,
    Require,
    ProxyRequire,
    Supported,
    Unsupported,
    Allow,
    Accept,
    Expires,
    Event,
    ReferTo,
    Subject,
    Authorization,
    WwwAuthenticate,
    ProxyAuthorization,
    ProxyAuthenticate,
    UserAgent,
    Server,
    Date,
    Reason,
    RetryAfter,
    Rseq,
    Rack,
    SessionExpires,
    MinSe,
    ContentDisposition,
    Other,
}

impl HeaderName {
    /// Classifies a raw header name, folding case and compact forms (RFC 3261 §7.3.3).
    pub fn classify(raw: &[u8]) -> HeaderName {
        if raw.len() == 1 {
            return match raw[0].to_ascii_lowercase() {
                b'v' => HeaderName::Via,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'i' => HeaderName::CallId,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                b'e' => HeaderName::ContentEncoding,
                b'k' => HeaderName::Supported,
                b's' => HeaderName::Subject,
                b'o' => HeaderName::Event,
                b'r' => HeaderName::ReferTo,
                _ => HeaderName::Other,
            };
        }
        // Every header line of every message is classified: only the names of the
        // right length are compared, not the whole table.
        let Some(candidates) = BY_LEN.get(raw.len()) else {
            return HeaderName::Other;
        };
        candidates
            .iter()
            // Most peers write the canonical case: a plain comparison settles those.
            .find(|(name, _)| raw == name.as_bytes() || raw.eq_ignore_ascii_case(name.as_bytes()))
            .map_or(HeaderName::Other, |(_, kind)| *kind)
    }

    /// Canonical long name, used when the stack writes a header itself.
    pub fn canonical(self) -> &'static str {
        KNOWN
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("")
    }
}

/// [`KNOWN`] grouped by the length of the name.
static BY_LEN: std::sync::LazyLock<Vec<Vec<(&'static str, HeaderName)>>> =
    std::sync::LazyLock::new(|| {
        let longest = KNOWN.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut by_len = vec![Vec::new(); longest + 1];
        for &(name, kind) in KNOWN {
            by_len[name.len()].push((name, kind));
        }
        by_len
    });

const KNOWN: &[(&str, HeaderName)] = &[
    ("Via", HeaderName::Via),
    ("From", HeaderName::From),
    ("To", HeaderName::To),
    ("Call-ID", HeaderName::CallId),
    ("CSeq", HeaderName::CSeq),
    ("Contact", HeaderName::Contact),
    ("Max-Forwards", HeaderName::MaxForwards),
    ("Content-Length", HeaderName::ContentLength),
    ("Content-Type", HeaderName::ContentType),
    ("Content-Encoding", HeaderName::ContentEncoding),
    ("Route", HeaderName::Route),
    ("Record-Route", HeaderName::RecordRoute),
    ("Require", HeaderName::Require),
    ("Proxy-Require", HeaderName::ProxyRequire),
    ("Supported", HeaderName::Supported),
    ("Unsupported", HeaderName::Unsupported),
    ("Allow", HeaderName::Allow),
    ("Accept", HeaderName::Accept),
    ("Expires", HeaderName::Expires),
    ("Event", HeaderName::Event),
    ("Refer-To", HeaderName::ReferTo),
    ("Subject", HeaderName::Subject),
    ("Authorization", HeaderName::Authorization),
    ("WWW-Authenticate", HeaderName::WwwAuthenticate),
    ("Proxy-Authorization", HeaderName::ProxyAuthorization),
    ("Proxy-Authenticate", HeaderName::ProxyAuthenticate),
    ("User-Agent", HeaderName::UserAgent),
    ("Server", HeaderName::Server),
    ("Date", HeaderName::Date),
    ("Reason", HeaderName::Reason),
    ("Retry-After", HeaderName::RetryAfter),
    ("RSeq", HeaderName::Rseq),
    ("RAck", HeaderName::Rack),
    ("Session-Expires", HeaderName::SessionExpires),
    ("Min-SE", HeaderName::MinSe),
    ("Content-Disposition", HeaderName::ContentDisposition),
];

/// Header lines per kind, from [`Headers::census`].
#[derive(Debug, Clone, Copy)]
pub struct Census([u32; HeaderName::Other as usize + 1]);

impl Census {
    /// Number of lines of `kind`, as [`Headers::count`] gives it.
    pub fn count(&self, kind: HeaderName) -> usize {
        self.0[kind as usize] as usize
    }
}

/// One header field line (after unfolding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: HeaderName,
    /// The name exactly as received (or canonical, for headers we add).
    pub name: Bytes,
    /// The value, trimmed, with folded continuation lines joined by one space.
    pub value: Bytes,
}

impl Header {
    /// A header the stack writes itself, under its canonical name.
    pub fn new(kind: HeaderName, value: impl Into<Bytes>) -> Header {
        Header {
            kind,
            name: Bytes::from_static(kind.canonical().as_bytes()),
            value: value.into(),
        }
    }

    /// An extension header with a caller-chosen name.
    pub fn other(name: impl Into<Bytes>, value: impl Into<Bytes>) -> Header {
        let name = name.into();
        Header {
            kind: HeaderName::classify(&name),
            name,
            value: value.into(),
        }
    }
}

/// The header section, in received order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    items: Vec<Header>,
}

impl Headers {
    pub fn new() -> Self {
        Headers { items: Vec::new() }
    }

    pub fn with_capacity(n: usize) -> Self {
        Headers {
            items: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, h: Header) {
        self.items.push(h);
    }

    /// Adds a header of a known kind with its canonical name.
    pub fn add(&mut self, kind: HeaderName, value: impl Into<Bytes>) {
        self.items.push(Header::new(kind, value));
    }

    /// Inserts at the front (a new top Via).
    pub fn prepend(&mut self, h: Header) {
        self.items.insert(0, h);
    }

    /// First value of a known header.
    pub fn get(&self, kind: HeaderName) -> Option<&Bytes> {
        self.items.iter().find(|h| h.kind == kind).map(|h| &h.value)
    }

    /// First value of a header by name (case-insensitive), for extension headers.
    pub fn get_named(&self, name: &str) -> Option<&Bytes> {
        self.items
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| &h.value)
    }

    /// Every line of a known header, in order.
    pub fn get_all(&self, kind: HeaderName) -> impl Iterator<Item = &Bytes> {
        self.items
            .iter()
            .filter(move |h| h.kind == kind)
            .map(|h| &h.value)
    }

    /// Number of header lines of a kind (not comma-separated values).
    pub fn count(&self, kind: HeaderName) -> usize {
        self.items.iter().filter(|h| h.kind == kind).count()
    }

    /// How many lines of each kind, counted in one pass: the validator asks about a
    /// dozen kinds of every message, which was a dozen walks over the list.
    pub fn census(&self) -> Census {
        let mut counts = [0u32; HeaderName::Other as usize + 1];
        for h in &self.items {
            counts[h.kind as usize] = counts[h.kind as usize].saturating_add(1);
        }
        Census(counts)
    }

    /// Every comma-separated value of a multi-value header, in order. `None` when
    /// a line cannot be split (unbalanced quotes or brackets).
    pub fn values(&self, kind: HeaderName) -> Option<Vec<Bytes>> {
        let mut out = Vec::new();
        for v in self.get_all(kind) {
            out.extend(crate::scan::split_commas(v)?);
        }
        Some(out)
    }

    /// Removes every line of a kind.
    pub fn remove(&mut self, kind: HeaderName) {
        self.items.retain(|h| h.kind != kind);
    }

    /// Replaces every line of a kind by one value (appended where the first was).
    pub fn set(&mut self, kind: HeaderName, value: impl Into<Bytes>) {
        let h = Header::new(kind, value);
        match self.items.iter().position(|x| x.kind == kind) {
            Some(pos) => {
                self.items[pos] = h;
                let mut i = 0;
                self.items.retain(|x| {
                    let keep = x.kind != kind || i == pos;
                    i += 1;
                    keep
                });
            }
            None => self.items.push(h),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Mutable access to the first line of a kind.
    pub fn first_mut(&mut self, kind: HeaderName) -> Option<&mut Header> {
        self.items.iter_mut().find(|h| h.kind == kind)
    }

    /// Removes and returns the first line of a kind.
    pub fn remove_first(&mut self, kind: HeaderName) -> Option<Header> {
        let pos = self.items.iter().position(|h| h.kind == kind)?;
        Some(self.items.remove(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn census_counts_as_count_does() {
        let mut h = Headers::new();
        for kind in [
            HeaderName::Via,
            HeaderName::To,
            HeaderName::Via,
            HeaderName::Other,
        ] {
            h.add(kind, "x");
        }
        let census = h.census();
        for &(_, kind) in KNOWN.iter().chain([("", HeaderName::Other)].iter()) {
            assert_eq!(census.count(kind), h.count(kind), "{kind:?}");
        }
        assert_eq!(census.count(HeaderName::Via), 2);
    }

    #[test]
    fn every_known_name_classifies_to_its_kind_in_any_case() {
        for &(name, kind) in KNOWN {
            assert_eq!(HeaderName::classify(name.as_bytes()), kind, "{name}");
            assert_eq!(
                HeaderName::classify(name.to_ascii_uppercase().as_bytes()),
                kind
            );
            assert_eq!(
                HeaderName::classify(name.to_ascii_lowercase().as_bytes()),
                kind
            );
            assert_eq!(kind.canonical(), name);
        }
        assert_eq!(HeaderName::classify(b""), HeaderName::Other);
        assert_eq!(HeaderName::classify(&[b'a'; 300]), HeaderName::Other);
    }

    #[test]
    fn compact_and_case_forms_classify() {
        assert_eq!(HeaderName::classify(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::classify(b"I"), HeaderName::CallId);
        assert_eq!(HeaderName::classify(b"cAlL-iD"), HeaderName::CallId);
        assert_eq!(
            HeaderName::classify(b"MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::classify(b"C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::classify(b"X-Custom"), HeaderName::Other);
    }

    #[test]
    fn set_replaces_all_lines_in_place() {
        let mut h = Headers::new();
        h.add(HeaderName::Via, "a");
        h.add(HeaderName::Contact, "c1");
        h.add(HeaderName::Via, "b");
        h.set(HeaderName::Via, "z");
        let v: Vec<_> = h.get_all(HeaderName::Via).collect();
        assert_eq!(v, vec![&Bytes::from("z")]);
        assert_eq!(h.iter().next().unwrap().kind, HeaderName::Via);
    }
}
