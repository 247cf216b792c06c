//! Attributes of messages available to pipelines as columns: for Kafka `_key`, `_partition`,
//! `_offset`, `_timestamp` and `_headers`; for NATS `_subject`, `_sequence`, `_timestamp` and
//! `_headers` (a NATS reader records the subject where Kafka's key goes, and the stream
//! sequence as the offset).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, MapBuilder, StringBuilder, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, TimeUnit};
use weir_engine::Messages;

/// A message attribute as a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageColumn {
    /// The message key as text (invalid UTF-8 replaced), null when absent.
    Key,
    /// The partition number.
    Partition,
    /// The offset in the partition.
    Offset,
    /// The message timestamp (producer or broker time).
    Timestamp,
    /// The headers, a map of name to text value: `_headers['trace_id']`.
    Headers,
    /// The NATS subject the message was published on.
    Subject,
    /// The NATS stream sequence.
    Sequence,
}

impl MessageColumn {
    /// The message columns of a NATS source.
    pub const NATS: [MessageColumn; 4] = [
        MessageColumn::Subject,
        MessageColumn::Sequence,
        MessageColumn::Timestamp,
        MessageColumn::Headers,
    ];

    /// The message columns of a Kafka source.
    pub const ALL: [MessageColumn; 5] = [
        MessageColumn::Key,
        MessageColumn::Partition,
        MessageColumn::Offset,
        MessageColumn::Timestamp,
        MessageColumn::Headers,
    ];

    /// The column's name.
    pub fn name(self) -> &'static str {
        match self {
            MessageColumn::Key => "_key",
            MessageColumn::Partition => "_partition",
            MessageColumn::Offset => "_offset",
            MessageColumn::Timestamp => "_timestamp",
            MessageColumn::Headers => "_headers",
            MessageColumn::Subject => "_subject",
            MessageColumn::Sequence => "_sequence",
        }
    }

    /// The column named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain(Self::NATS)
            .find(|c| c.name() == name)
    }

    /// The column's Arrow field.
    pub fn field(self) -> Field {
        let t = match self {
            MessageColumn::Key | MessageColumn::Subject => DataType::Utf8,
            MessageColumn::Partition => DataType::Int32,
            MessageColumn::Offset | MessageColumn::Sequence => DataType::Int64,
            MessageColumn::Timestamp => {
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
            }
            MessageColumn::Headers => return headers_field(),
        };
        Field::new(self.name(), t, true)
    }

    /// The column for the messages at `rows` (indexes into `messages`) of `partition`.
    pub fn build(self, messages: &Messages, rows: &[u32], partition: i32) -> ArrayRef {
        // borrowed text (no String per value unless the bytes are not UTF-8)
        let text = |r: (u32, u32)| String::from_utf8_lossy(messages.slice(r));
        match self {
            MessageColumn::Key | MessageColumn::Subject => {
                let bytes = rows
                    .iter()
                    .filter_map(|&i| messages.keys[i as usize].map(|(s, e)| (e - s) as usize))
                    .sum();
                let mut b = StringBuilder::with_capacity(rows.len(), bytes);
                for &i in rows {
                    b.append_option(messages.keys[i as usize].map(text));
                }
                Arc::new(b.finish())
            }
            MessageColumn::Partition => Arc::new(Int32Array::from(vec![partition; rows.len()])),
            MessageColumn::Offset | MessageColumn::Sequence => Arc::new(
                rows.iter()
                    .map(|&i| messages.offsets[i as usize] as i64)
                    .collect::<Int64Array>(),
            ),
            MessageColumn::Timestamp => Arc::new(
                rows.iter()
                    .map(|&i| messages.timestamps[i as usize])
                    .collect::<TimestampMillisecondArray>()
                    .with_timezone("UTC"),
            ),
            MessageColumn::Headers => {
                let mut b = map_builder();
                for &i in rows {
                    let (first, last) = messages.headers[i as usize];
                    for (name, value) in &messages.header_fields[first as usize..last as usize] {
                        b.keys().append_value(text(*name));
                        b.values().append_option(value.map(text));
                    }
                    b.append(true)
                        .expect("keys and values are appended in pairs");
                }
                Arc::new(b.finish())
            }
        }
    }

    /// The column when the records are not messages (all null).
    pub fn nulls(self, rows: usize) -> ArrayRef {
        arrow::array::new_null_array(self.field().data_type(), rows)
    }
}

fn map_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

fn headers_field() -> Field {
    let mut b = map_builder();
    let t = b.finish().data_type().clone();
    Field::new(MessageColumn::Headers.name(), t, true)
}
