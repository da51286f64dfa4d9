//! The delta engine, pure (no I/O): what to send a peer given what it holds (wire name ->
//! version) and the current set, and how to cut the result into responses that each stay under
//! a byte budget whatever the number and sizes of resources. A single resource larger than the
//! budget cannot be sent; it is reported back instead of being put on the wire.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::pb::{DeltaDiscoveryResponse, EnvoyResource};

/// The default byte budget of one response: gRPC's customary 4 MiB message limit.
pub const DEFAULT_MESSAGE_BUDGET: usize = 4 * 1024 * 1024;
/// Nonces are fixed-width so that a response's size is known before its nonce is assigned.
pub const NONCE_WIDTH: usize = 16;

/// The changes a peer needs: resources to create or update, and wire names to remove.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub upserts: Vec<Arc<EnvoyResource>>,
    pub removals: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Everything that differs between what the peer holds and `current`; `peer` is updated to what
/// the peer will hold once the delta is applied.
pub fn diff_all(
    peer: &mut HashMap<String, String>,
    current: &BTreeMap<String, Arc<EnvoyResource>>,
) -> Delta {
    let mut delta = Delta::default();
    for (name, resource) in current {
        if peer.get(name) != Some(&resource.version) {
            peer.insert(name.clone(), resource.version.clone());
            delta.upserts.push(resource.clone());
        }
    }
    let mut gone: Vec<String> = peer
        .keys()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    gone.sort();
    for name in &gone {
        peer.remove(name);
    }
    delta.removals = gone;
    delta
}

/// Like [`diff_all`], restricted to the given names (those a change touched).
pub fn diff_names<'a>(
    peer: &mut HashMap<String, String>,
    current: &BTreeMap<String, Arc<EnvoyResource>>,
    names: impl IntoIterator<Item = &'a String>,
) -> Delta {
    let mut delta = Delta::default();
    for name in names {
        match current.get(name) {
            Some(resource) => {
                if peer.get(name) != Some(&resource.version) {
                    peer.insert(name.clone(), resource.version.clone());
                    delta.upserts.push(resource.clone());
                }
            }
            None => {
                if peer.remove(name).is_some() {
                    delta.removals.push(name.clone());
                }
            }
        }
    }
    delta
}

/// A resource too large to fit in any response under the budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {name:?} takes {size} bytes encoded, over the {budget}-byte message budget")]
pub struct Oversized {
    pub name: String,
    pub size: usize,
    pub budget: usize,
}

/// The responses of a delta (nonces left as [`NONCE_WIDTH`] placeholders to be overwritten) and
/// the resources that could not be sent.
#[derive(Debug, Default)]
pub struct Chunked {
    pub responses: Vec<DeltaDiscoveryResponse>,
    pub oversized: Vec<Oversized>,
}

/// Cuts a delta for `type_url` into responses whose encoded size, nonce included, is at most
/// `budget` bytes. Removals travel first, then upserts in order; an empty delta gives no response.
pub fn chunk(type_url: &str, delta: &Delta, budget: usize) -> Chunked {
    let empty = DeltaDiscoveryResponse {
        type_url: type_url.to_owned(),
        nonce: "0".repeat(NONCE_WIDTH),
        ..DeltaDiscoveryResponse::default()
    };
    let base = prost::Message::encoded_len(&empty);
    let mut out = Chunked::default();
    let mut current = empty.clone();
    let mut size = base;
    let flush = |current: &mut DeltaDiscoveryResponse, size: &mut usize, out: &mut Chunked| {
        if !current.resources.is_empty() || !current.removed_resources.is_empty() {
            out.responses
                .push(std::mem::replace(current, empty.clone()));
        }
        *size = base;
    };
    for name in &delta.removals {
        let len = prost::encoding::string::encoded_len(6, name);
        if base + len > budget {
            out.oversized.push(Oversized {
                name: name.clone(),
                size: base + len,
                budget,
            });
            continue;
        }
        if size + len > budget {
            flush(&mut current, &mut size, &mut out);
        }
        current.removed_resources.push(name.clone());
        size += len;
    }
    for resource in &delta.upserts {
        let len = prost::encoding::message::encoded_len(2, resource.as_ref());
        if base + len > budget {
            out.oversized.push(Oversized {
                name: resource.name.clone(),
                size: base + len,
                budget,
            });
            continue;
        }
        if size + len > budget {
            flush(&mut current, &mut size, &mut out);
        }
        current.resources.push(resource.as_ref().clone());
        size += len;
    }
    flush(&mut current, &mut size, &mut out);
    out
}

/// A fixed-width nonce (see [`NONCE_WIDTH`]).
pub fn nonce(counter: u64) -> String {
    format!("{counter:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn res(name: &str, version: &str, payload: usize) -> Arc<EnvoyResource> {
        Arc::new(EnvoyResource {
            name: name.into(),
            version: version.into(),
            resource: Some(crate::pb::Any {
                type_url: crate::pb::RESOURCE_TYPE_URL.into(),
                value: vec![7; payload],
            }),
            ..EnvoyResource::default()
        })
    }

    fn set(items: &[(&str, &str)]) -> BTreeMap<String, Arc<EnvoyResource>> {
        items
            .iter()
            .map(|(n, v)| (n.to_string(), res(n, v, 10)))
            .collect()
    }

    #[test]
    fn diff_sends_only_differences() {
        let mut peer: HashMap<String, String> = [("a", "1"), ("b", "1"), ("gone", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let current = set(&[("a", "1"), ("b", "2"), ("c", "1")]);
        let d = diff_all(&mut peer, &current);
        let names: Vec<_> = d.upserts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["b", "c"]);
        assert_eq!(d.removals, vec!["gone".to_string()]);
        assert_eq!(peer.len(), 3);
        assert!(diff_all(&mut peer, &current).is_empty());
    }

    #[test]
    fn diff_names_only_touches_named() {
        let mut peer: HashMap<String, String> = HashMap::new();
        let current = set(&[("a", "1"), ("b", "1")]);
        let d = diff_names(&mut peer, &current, &["a".to_string(), "x".to_string()]);
        assert_eq!(d.upserts.len(), 1);
        assert!(d.removals.is_empty());
        let d = diff_names(&mut peer, &BTreeMap::new(), &["a".to_string()]);
        assert_eq!(d.removals, vec!["a".to_string()]);
    }

    #[test]
    fn chunks_stay_under_budget_whatever_the_sizes() {
        let budget = 4096;
        let mut delta = Delta::default();
        for i in 0..500 {
            delta
                .upserts
                .push(res(&format!("r{i}"), "v", (i * 37) % 3000));
        }
        for i in 0..300 {
            delta.removals.push(format!("old-{i}"));
        }
        delta.upserts.push(res("huge", "v", budget * 2));
        let chunked = chunk("t", &delta, budget);
        assert_eq!(chunked.oversized.len(), 1);
        assert_eq!(chunked.oversized[0].name, "huge");
        let mut sent = 0;
        let mut removed = 0;
        for (i, mut r) in chunked.responses.into_iter().enumerate() {
            r.nonce = nonce(i as u64 + 1_000_000);
            assert!(r.encoded_len() <= budget, "{} > {budget}", r.encoded_len());
            sent += r.resources.len();
            removed += r.removed_resources.len();
        }
        assert_eq!(sent, 500);
        assert_eq!(removed, 300);
        assert!(chunk("t", &Delta::default(), budget).responses.is_empty());
    }

    #[test]
    fn a_resource_exactly_at_budget_fits() {
        let r = res("x", "v", 100);
        let delta = Delta {
            upserts: vec![r],
            removals: vec![],
        };
        let one = chunk("t", &delta, usize::MAX).responses.remove(0);
        let exact = one.encoded_len();
        let c = chunk("t", &delta, exact);
        assert_eq!(c.responses.len(), 1);
        assert!(c.oversized.is_empty());
        let c = chunk("t", &delta, exact - 1);
        assert_eq!(c.oversized.len(), 1);
    }
}
