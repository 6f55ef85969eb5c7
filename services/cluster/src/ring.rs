//! The consistent-hash ring of live nodes: each node holds `POINTS` points, a key belongs to
//! the first point at or after its hash. A node joining or leaving moves only the keys of
//! its own points, so a death moves a dead node's calls and nobody else's.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Points per node: enough that nodes share the keys within a few percent.
const POINTS: u32 = 128;

fn hash(data: &[u8]) -> u64 {
    let d = Sha256::digest(data);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The ring of a set of nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    points: BTreeMap<u64, String>,
}

impl Ring {
    pub fn new<'a>(nodes: impl IntoIterator<Item = &'a str>) -> Ring {
        let mut points = BTreeMap::new();
        for id in nodes {
            for i in 0..POINTS {
                points.insert(hash(format!("{id}#{i}").as_bytes()), id.to_string());
            }
        }
        Ring { points }
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Up to `n` distinct nodes for `key`, in ring order from its owner, skipping `skip`
    /// (a call's buddies: the nodes after its owner).
    pub fn nodes_for(&self, key: &str, n: usize, skip: Option<&str>) -> Vec<&str> {
        let h = hash(key.as_bytes());
        let mut out: Vec<&str> = Vec::with_capacity(n);
        for id in self
            .points
            .range(h..)
            .chain(self.points.range(..h))
            .map(|(_, id)| id.as_str())
        {
            if out.len() == n {
                break;
            }
            if Some(id) != skip && !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// The node `key` belongs to.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.nodes_for(key, 1, None).first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn keys() -> Vec<String> {
        (0..20_000).map(|i| format!("call-{i}")).collect()
    }

    #[test]
    fn keys_spread_evenly() {
        let ring = Ring::new(["n1", "n2", "n3"]);
        let mut count: HashMap<&str, usize> = HashMap::new();
        for k in keys() {
            *count.entry(ring.owner(&k).unwrap()).or_default() += 1;
        }
        for (node, c) in &count {
            let share = *c as f64 / 20_000.0;
            assert!((0.25..0.42).contains(&share), "{node} owns {share:.3}");
        }
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_keys() {
        let before = Ring::new(["n1", "n2", "n3"]);
        let after = Ring::new(["n1", "n3"]);
        for k in keys() {
            let was = before.owner(&k).unwrap();
            let now = after.owner(&k).unwrap();
            if was != "n2" {
                assert_eq!(was, now, "{k} moved although its owner stayed");
            } else {
                assert_ne!(now, "n2");
            }
        }
    }

    #[test]
    fn buddies_are_distinct_and_never_the_owner() {
        let ring = Ring::new(["n1", "n2", "n3"]);
        for k in keys().iter().take(500) {
            let owner = ring.owner(k).unwrap();
            let buddies = ring.nodes_for(k, 2, Some(owner));
            assert_eq!(buddies.len(), 2);
            assert!(!buddies.contains(&owner));
            assert_ne!(buddies[0], buddies[1]);
        }
        assert!(Ring::new([]).owner("x").is_none());
        assert_eq!(
            Ring::new(["n1"]).nodes_for("x", 2, Some("n1")),
            Vec::<&str>::new()
        );
    }
}
