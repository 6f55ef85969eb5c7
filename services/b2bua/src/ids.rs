//! Identifiers the node generates: Call-IDs, tags and branches.
//!
//! Each carries the node id (`<node>-<random>`), so any node can tell which node owns
//! a stray in-dialog message without a lookup (ARCHITECTURE.md rule 3). The random
//! part comes from a per-call SplitMix64 stream seeded by the caller from the OS;
//! it is not a cryptographic generator, but its 64-bit outputs are not guessable from
//! another call's identifiers since every call has its own seed.

use serde::{Deserialize, Serialize};

/// A per-call identifier source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ids {
    node: String,
    state: u64,
}

impl Ids {
    pub fn new(node: &str, seed: u64) -> Self {
        Ids {
            node: node.to_string(),
            state: seed,
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A dialog tag.
    pub fn tag(&mut self) -> String {
        let r = self.next() >> 16;
        let mut s = self.start("", 13);
        push_hex(&mut s, r, 12);
        s
    }

    /// A Call-ID for a leg we originate.
    pub fn call_id(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        let mut s = self.start("", 25);
        push_hex(&mut s, a, 16);
        push_hex(&mut s, b >> 32, 8);
        s
    }

    /// An RFC 3261 branch.
    pub fn branch(&mut self) -> String {
        let r = self.next();
        let mut s = self.start(trunkline_sip::MAGIC_COOKIE, 17);
        push_hex(&mut s, r, 16);
        s
    }

    /// `<prefix><node>-`, with room for `more` bytes after it.
    fn start(&self, prefix: &str, more: usize) -> String {
        let mut s = String::with_capacity(prefix.len() + self.node.len() + more);
        s.push_str(prefix);
        s.push_str(&self.node);
        s.push('-');
        s
    }
}

/// Appends the low `digits` hex digits of `v`, zero-padded, as `{:0digits$x}` would:
/// every call makes several identifiers, and `format!`'s padding machinery cost more
/// than the rest of their making.
fn push_hex(s: &mut String, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        let nibble = (v >> (i * 4)) & 0xf;
        s.push(char::from(b"0123456789abcdef"[nibble as usize]));
    }
}

/// The node id embedded in an identifier we generated, if it is one of ours.
pub fn owner_of(id: &str) -> Option<&str> {
    let id = id.strip_prefix(trunkline_sip::MAGIC_COOKIE).unwrap_or(id);
    let (node, rest) = id.split_once('-')?;
    if node.is_empty() || rest.is_empty() || node.len() > 16 {
        return None;
    }
    node.bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_formatted_as_before() {
        let mut ids = Ids::new("n7", 42);
        let mut twin = Ids::new("n7", 42);
        let r = twin.next() >> 16;
        assert_eq!(ids.tag(), format!("n7-{r:012x}"));
        let (a, b) = (twin.next(), twin.next());
        assert_eq!(ids.call_id(), format!("n7-{a:016x}{:08x}", b >> 32));
        let r = twin.next();
        assert_eq!(ids.branch(), format!("z9hG4bKn7-{r:016x}"));
        let mut s = String::new();
        push_hex(&mut s, 0xab, 4);
        assert_eq!(s, "00ab");
    }

    #[test]
    fn identifiers_carry_the_node() {
        let mut ids = Ids::new("n7", 42);
        let t = ids.tag();
        let c = ids.call_id();
        let b = ids.branch();
        assert_eq!(owner_of(&t), Some("n7"));
        assert_eq!(owner_of(&c), Some("n7"));
        assert_eq!(owner_of(&b), Some("n7"));
        assert!(b.starts_with("z9hG4bK"));
        assert_ne!(ids.tag(), t);
        assert_eq!(owner_of("a84b4c76e66710@pc33.example.org"), None);
    }
}
