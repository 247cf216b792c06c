//! Messages of a partition gathered into one chunk's buffer, shared by the log sources (Kafka
//! and NATS): each source appends its messages by their parts and takes them as [`Messages`].

use std::time::Instant;

use crate::{Messages, SharedBytes};

/// A chunk is handed over once its messages reach this size...
pub const CHUNK_BYTES: usize = 1 << 20;
/// ...or this many messages (or when its oldest message waited long enough: each source
/// says how long).
pub const CHUNK_MESSAGES: usize = 16 * 1024;

/// Messages of one partition being gathered into a chunk.
#[derive(Default)]
pub struct MessageBuffer {
    bytes: Vec<u8>,
    messages: Messages,
    since: Option<Instant>,
    /// Where the chunk's key header name (see [`Self::push_key_as_header`]) is in `bytes`.
    key_header_name: (u32, u32),
    /// Bytes and messages of the last chunk taken: the next one reserves as much up front
    /// rather than growing (and copying) its buffers from empty.
    last_size: (usize, usize),
}

impl MessageBuffer {
    /// Appends a message given by its parts (a repartition topic's messages are unwrapped
    /// first), recorded at `offset`. Headers are kept when `with_headers`, else only trace
    /// ids (dead letters).
    pub fn push_parts<'h>(
        &mut self,
        (payload, key): (&[u8], Option<&[u8]>),
        timestamp: Option<i64>,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
        with_headers: bool,
        offset: u64,
    ) {
        let pos = |b: &Vec<u8>| b.len() as u32;
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.reserve();
        }
        let start = pos(&self.bytes);
        self.bytes.extend_from_slice(payload);
        self.messages.payloads.push((start, pos(&self.bytes)));
        self.messages.offsets.push(offset);
        self.messages.keys.push(key.map(|k| {
            let s = pos(&self.bytes);
            self.bytes.extend_from_slice(k);
            (s, pos(&self.bytes))
        }));
        self.messages.timestamps.push(timestamp);
        let first = self.messages.header_fields.len() as u32;
        for (name, value) in headers {
            if with_headers || crate::trace::is_trace_header(name) {
                let ks = pos(&self.bytes);
                self.bytes.extend_from_slice(name.as_bytes());
                let name = (ks, pos(&self.bytes));
                let value = value.map(|v| {
                    let vs = pos(&self.bytes);
                    self.bytes.extend_from_slice(v);
                    (vs, pos(&self.bytes))
                });
                self.messages.header_fields.push((name, value));
            }
        }
        let last = self.messages.header_fields.len() as u32;
        self.messages.headers.push((first, last));
    }

    /// Appends a message whose key is also its header `key_header` (a NATS message's
    /// subject, which dead letters name under `Nats-Subject`): the key's bytes are stored
    /// once and the header points at them; the header's name is stored once per chunk, so
    /// every message of a chunk gives the same `key_header`.
    pub fn push_key_as_header<'h>(
        &mut self,
        key_header: &'static str,
        (payload, key): (&[u8], &[u8]),
        timestamp: i64,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
        with_headers: bool,
        seq: u64,
    ) {
        if self.messages.offsets.is_empty() {
            let s = self.bytes.len() as u32;
            self.bytes.extend_from_slice(key_header.as_bytes());
            self.key_header_name = (s, self.bytes.len() as u32);
        }
        self.push_parts(
            (payload, Some(key)),
            Some(timestamp),
            headers,
            with_headers,
            seq,
        );
        let key = self.messages.keys.last().copied().flatten();
        self.messages
            .header_fields
            .push((self.key_header_name, key));
        if let Some(h) = self.messages.headers.last_mut() {
            h.1 += 1;
        }
    }

    /// When the first message of the chunk being gathered was appended.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// The bytes gathered so far (payloads, keys and headers).
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no message is gathered.
    pub fn is_empty(&self) -> bool {
        self.messages.offsets.is_empty()
    }

    /// Whether the chunk reached [`CHUNK_BYTES`] or [`CHUNK_MESSAGES`].
    pub fn is_full(&self) -> bool {
        self.bytes.len() >= CHUNK_BYTES || self.messages.offsets.len() >= CHUNK_MESSAGES
    }

    /// Reserves room for a chunk the size of the last one (at most a full chunk and 1/8).
    fn reserve(&mut self) {
        let (bytes, messages) = self.last_size;
        let bytes = bytes.min(CHUNK_BYTES);
        self.bytes.reserve(bytes + bytes / 8);
        let n = messages.min(CHUNK_MESSAGES) + 1;
        let m = &mut self.messages;
        m.payloads.reserve(n);
        m.offsets.reserve(n);
        m.keys.reserve(n);
        m.timestamps.reserve(n);
        m.headers.reserve(n);
    }

    /// The messages gathered, as one chunk's; the buffer starts over.
    pub fn take(&mut self) -> Messages {
        self.since = None;
        self.last_size = (self.bytes.len(), self.messages.offsets.len());
        let mut m = std::mem::take(&mut self.messages);
        m.bytes = SharedBytes::from(std::mem::take(&mut self.bytes));
        m
    }
}
