//! The documents an Elasticsearch sink has yet to see acknowledged.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// A pending document: its index, its id and its two NDJSON lines in `Pending::bytes`.
pub(super) struct Doc {
    pub(super) index: Arc<str>,
    pub(super) id: Box<str>,
    pub(super) start: usize,
    /// Where the source line starts.
    pub(super) source: usize,
    pub(super) end: usize,
}

/// Documents waiting to be acknowledged, in the order they were written.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) bytes: Vec<u8>,
    pub(super) docs: Vec<Doc>,
    pub(super) since: Option<Instant>,
}

impl Pending {
    pub(super) fn len(&self) -> usize {
        self.docs.len()
    }

    /// Keeps only the documents at `keep` (sorted indices).
    pub(super) fn retain(&mut self, keep: &[usize]) {
        let mut bytes = Vec::new();
        let mut docs = Vec::with_capacity(keep.len());
        for &i in keep {
            let d = &self.docs[i];
            let start = bytes.len();
            bytes.extend_from_slice(&self.bytes[d.start..d.end]);
            docs.push(Doc {
                index: d.index.clone(),
                id: d.id.clone(),
                start,
                source: start + (d.source - d.start),
                end: bytes.len(),
            });
        }
        self.bytes = bytes;
        self.docs = docs;
        if self.docs.is_empty() {
            self.since = None;
        }
    }

    /// Drops every document a later one of the same index and id replaces (a view's key
    /// changed again, or deleted, before the older action was acknowledged). Sent together,
    /// the two actions would race in concurrent bulk requests, and an older one retried
    /// after a 429 would win over the newer one: a stale document, or a live key deleted.
    pub(super) fn keep_newest(&mut self) {
        let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(self.docs.len());
        let mut keep: Vec<usize> = Vec::with_capacity(self.docs.len());
        for (i, d) in self.docs.iter().enumerate().rev() {
            if seen.insert((&d.index, &d.id)) {
                keep.push(i);
            }
        }
        if keep.len() < self.docs.len() {
            keep.reverse();
            self.retain(&keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(p: &mut Pending, index: &str, id: &str, body: &str) {
        let start = p.bytes.len();
        p.bytes
            .extend_from_slice(format!("{{\"index\":\"{id}\"}}\n").as_bytes());
        let source = p.bytes.len();
        p.bytes.extend_from_slice(format!("{body}\n").as_bytes());
        p.docs.push(Doc {
            index: index.into(),
            id: id.into(),
            start,
            source,
            end: p.bytes.len(),
        });
    }

    #[test]
    fn only_the_newest_action_of_a_document_stays() {
        let mut p = Pending::default();
        push(&mut p, "a", "k1", "1");
        push(&mut p, "a", "k2", "2");
        push(&mut p, "b", "k1", "3");
        push(&mut p, "a", "k1", "4");
        p.keep_newest();
        let bodies: Vec<&[u8]> = p
            .docs
            .iter()
            .map(|d| &p.bytes[d.source..d.end - 1])
            .collect();
        assert_eq!(bodies, [&b"2"[..], b"3", b"4"]);
        assert_eq!(&*p.docs[2].id, "k1");
    }
}
