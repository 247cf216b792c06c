//! The envelope of a repartition topic's message: the upstream topic, partition, offset (and
//! the partition's generation) it was read at, its headers, then its payload.

/// The first bytes of a repartition topic message written by weir 0.1.0 (no upstream topic).
const MAGIC_V1: &[u8; 5] = b"weir\x01";
/// The first bytes of a repartition topic message whose upstream partition never started
/// over (generation 0): every one, unless its topic was created again.
const MAGIC: &[u8; 5] = b"weir\x02";
/// The first bytes of a message whose upstream partition started over: `MAGIC`'s, with the
/// generation after the offset.
const MAGIC_GENERATION: &[u8; 5] = b"weir\x03";

/// How many low bits of a sequence hold the upstream offset once a partition started over
/// (the generation takes the bits above): offsets up to 2^48 (2.8 × 10^14) per partition.
pub const OFFSET_BITS: u32 = 48;

/// A repartition topic's message value: the upstream topic, partition and offset it was read
/// at, its headers, then its payload. (Kafka headers would be the natural place for the first
/// three, but tansu 0.6, the broker these tests run, stops serving fetches of a topic whose
/// messages carry headers at this volume.)
///
/// `weir\x02`, topic length (u16), topic (UTF-8), partition (u32), offset (u64), header count
/// (u16), per header: name length (u16), name, value length (i32, -1 for none), value; then
/// the payload. Big-endian. With a generation (`weir\x03`), the generation (u16) follows the
/// offset.
/// Envelopes of weir 0.1.0 (`weir\x01`) have no topic and are read too: [`Self::topic`] is
/// then `None`.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The upstream topic (`None` in an envelope of weir 0.1.0).
    pub topic: Option<&'a [u8]>,
    pub partition: usize,
    pub offset: u64,
    /// How many times the upstream partition started over (see [`super`]).
    pub generation: u16,
    /// The encoded headers (see [`Self::headers`]).
    header_bytes: &'a [u8],
    header_count: u16,
    pub payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Appends the envelope of a message of `topic` to `out`, read at `offset` of a partition
    /// in its generation `generation`.
    pub fn write<'h>(
        out: &mut Vec<u8>,
        topic: &str,
        partition: u32,
        (offset, generation): (u64, u16),
        headers: impl Iterator<Item = (&'h [u8], Option<&'h [u8]>)>,
        payload: &[u8],
    ) {
        Self::write_as(
            out,
            Some(topic),
            partition,
            (offset, generation),
            headers,
            payload,
        )
    }

    /// [`Self::write`]; without a topic, an envelope of weir 0.1.0 (for tests).
    pub(crate) fn write_as<'h>(
        out: &mut Vec<u8>,
        topic: Option<&str>,
        partition: u32,
        (offset, generation): (u64, u16),
        headers: impl Iterator<Item = (&'h [u8], Option<&'h [u8]>)>,
        payload: &[u8],
    ) {
        let generation = if topic.is_some() { generation } else { 0 };
        match topic {
            Some(t) => {
                // a Kafka topic name has at most 249 characters
                let t = &t.as_bytes()[..t.len().min(u16::MAX as usize)];
                out.extend_from_slice(if generation == 0 {
                    MAGIC
                } else {
                    MAGIC_GENERATION
                });
                out.extend_from_slice(&(t.len() as u16).to_be_bytes());
                out.extend_from_slice(t);
            }
            None => out.extend_from_slice(MAGIC_V1),
        }
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        if generation != 0 {
            out.extend_from_slice(&generation.to_be_bytes());
        }
        let count_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let mut count = 0u16;
        for (name, value) in headers.take(u16::MAX as usize) {
            count += 1;
            let name = &name[..name.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name);
            match value {
                Some(v) => {
                    let v = &v[..v.len().min(i32::MAX as usize)];
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// Reads an envelope; `None` when the bytes are not one.
    pub fn open(bytes: &'a [u8]) -> Option<Self> {
        let (magic, rest) = bytes.split_at_checked(MAGIC.len())?;
        let generational = magic == MAGIC_GENERATION;
        let (topic, rest) = if magic == MAGIC || generational {
            let (len, rest) = take_array::<2>(rest)?;
            let (topic, rest) = rest.split_at_checked(u16::from_be_bytes(len) as usize)?;
            (Some(topic), rest)
        } else if magic == MAGIC_V1 {
            (None, rest)
        } else {
            return None;
        };
        let (partition, rest) = take_array::<4>(rest)?;
        let (offset, rest) = take_array::<8>(rest)?;
        let (generation, rest) = if generational {
            let (g, rest) = take_array::<2>(rest)?;
            (u16::from_be_bytes(g), rest)
        } else {
            (0, rest)
        };
        let (count, rest) = take_array::<2>(rest)?;
        let header_count = u16::from_be_bytes(count);
        // walk the headers once to find the payload
        let mut at = rest;
        for _ in 0..header_count {
            let (len, r) = take_array::<2>(at)?;
            let r = r.get(u16::from_be_bytes(len) as usize..)?;
            let (len, r) = take_array::<4>(r)?;
            let len = i32::from_be_bytes(len);
            at = if len < 0 { r } else { r.get(len as usize..)? };
        }
        Some(Envelope {
            topic,
            partition: u32::from_be_bytes(partition) as usize,
            offset: u64::from_be_bytes(offset),
            generation,
            header_bytes: &rest[..rest.len() - at.len()],
            header_count,
            payload: at,
        })
    }

    /// Where the message stands in its lane: its upstream offset, with its generation above
    /// (see [`sequence`]).
    pub fn sequence(&self) -> u64 {
        sequence(self.offset, self.generation)
    }

    /// The message's headers: (name, value). A name that is not UTF-8 is skipped.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let mut at = self.header_bytes;
        (0..self.header_count).filter_map(move |_| {
            let (len, r) = take_array::<2>(at)?;
            let (name, r) = r.split_at_checked(u16::from_be_bytes(len) as usize)?;
            let (len, r) = take_array::<4>(r)?;
            let len = i32::from_be_bytes(len);
            let (value, r) = if len < 0 {
                (None, r)
            } else {
                let (v, r) = r.split_at_checked(len as usize)?;
                (Some(v), r)
            };
            at = r;
            Some((std::str::from_utf8(name).ok()?, value))
        })
    }
}

/// The sequence of the message read at `offset` in generation `generation` of its upstream
/// partition: the offset itself in generation 0 (as before generations existed), else the
/// generation in the bits above [`OFFSET_BITS`], so that every message of a later generation
/// comes after every one of an earlier (an offset of 2^48 or more saturates: the stage refuses
/// to send one).
pub fn sequence(offset: u64, generation: u16) -> u64 {
    if generation == 0 {
        offset
    } else {
        (u64::from(generation) << OFFSET_BITS).saturating_add(offset.min((1 << OFFSET_BITS) - 1))
    }
}

/// The generation a lane's sequence belongs to.
pub fn generation_of(sequence: u64) -> u64 {
    sequence >> OFFSET_BITS
}

fn take_array<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let (head, rest) = bytes.split_at_checked(N)?;
    Some((head.try_into().ok()?, rest))
}
