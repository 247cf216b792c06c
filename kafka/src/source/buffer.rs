//! Kafka messages gathered into one chunk's buffer (the buffer is the engine's, shared with
//! the NATS source: [`weir_engine::buffer::MessageBuffer`]).

use super::*;

/// Appends an rdkafka message to a chunk's buffer.
pub(crate) trait PushMessage {
    /// Appends a message, recorded at `offset`.
    fn push<M: Message>(&mut self, m: &M, with_headers: bool, offset: u64);
}

impl PushMessage for MessageBuffer {
    fn push<M: Message>(&mut self, m: &M, with_headers: bool, offset: u64) {
        let headers = m
            .headers()
            .into_iter()
            .flat_map(|h| h.iter().map(|h| (h.key, h.value)));
        self.push_parts(
            (m.payload().unwrap_or_default(), m.key()),
            m.timestamp().to_millis(),
            headers,
            with_headers,
            offset,
        );
    }
}
