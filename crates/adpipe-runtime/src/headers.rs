//! Record headers as one shared, immutable buffer.
//!
//! Contract: [`Headers`] is a list of (name, optional value) pairs, in
//! order, encoded into a single [`Bytes`] — so a consumed record's headers
//! live in its batch's buffer, and copying them onto an output is a
//! reference-count increment, not an allocation per header (the hot path of
//! every pass-through-like step). Adding a header builds a new buffer.
//! It implements rdkafka's [`rdkafka::message::Headers`], so code written
//! for librdkafka's headers reads it unchanged.
//!
//! Encoding, per header: name length (u16 LE), name (UTF-8), value length
//! (u32 LE, `u32::MAX` for a null value), value.

use bytes::{BufMut, Bytes, BytesMut};
use rdkafka::message::Header;

const NULL_VALUE: u32 = u32::MAX;

/// The first header named `name` of a record as read from Kafka, its
/// value `None` when null: what [`header_bytes`] and [`header_text`] read.
fn first_header<'m, M: rdkafka::message::Message>(
    message: &'m M,
    name: &str,
) -> Option<Header<'m, &'m [u8]>>
where
    M::Headers: 'm,
{
    use rdkafka::message::Headers as _;
    message.headers()?.iter().find(|header| header.key == name)
}

/// The value of header `name` of a record as read from Kafka, as a step
/// sees it (`InputRecord::header`: the first of that name, a null value
/// empty); `None` when absent. For readers that must decide as a step
/// would (the reconciler routing as the dispatcher does).
pub fn header_bytes<'m, M: rdkafka::message::Message>(
    message: &'m M,
    name: &str,
) -> Option<&'m [u8]>
where
    M::Headers: 'm,
{
    first_header(message, name).map(|header| header.value.unwrap_or_default())
}

/// The value of header `name` of a record as read from Kafka, as text
/// (lossy UTF-8); `None` when absent or null. For readers outside a step
/// (checkers, the reconciler); a step has `InputRecord::header`.
pub fn header_text<M: rdkafka::message::Message>(message: &M, name: &str) -> Option<String> {
    first_header(message, name)
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// An ordered, cheaply cloned list of record headers.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    encoded: Bytes,
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers {
            encoded: Bytes::new(),
        }
    }

    /// Headers from (name, value) pairs.
    pub fn from_pairs<'a, V: AsRef<[u8]> + 'a>(
        pairs: impl IntoIterator<Item = (&'a str, V)>,
    ) -> Self {
        let mut buffer = BytesMut::new();
        for (name, value) in pairs {
            encode(&mut buffer, name, Some(value.as_ref()));
        }
        Headers {
            encoded: buffer.freeze(),
        }
    }

    /// Wraps bytes already in this encoding (checked: malformed input gives
    /// `None`).
    pub(crate) fn from_encoded(encoded: Bytes) -> Option<Self> {
        let mut rest: &[u8] = &encoded;
        while !rest.is_empty() {
            rest = next_entry(rest)?.2;
        }
        Some(Headers { encoded })
    }

    /// Appends librdkafka's headers to `buffer` in this encoding (how the
    /// consumer copies a record's headers into its batch).
    pub(crate) fn encode_into<H: rdkafka::message::Headers>(buffer: &mut Vec<u8>, headers: &H) {
        for header in headers.iter() {
            encode(buffer, header.key, header.value);
        }
    }

    /// A copy of librdkafka's headers.
    pub(crate) fn copied_from<H: rdkafka::message::Headers>(headers: &H) -> Self {
        let mut buffer = Vec::new();
        Headers::encode_into(&mut buffer, headers);
        Headers {
            encoded: Bytes::from(buffer),
        }
    }

    /// These headers with `(name, value)` appended.
    #[must_use]
    pub fn with(&self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let mut buffer = BytesMut::with_capacity(self.encoded.len() + name.len() + 16);
        buffer.extend_from_slice(&self.encoded);
        encode(&mut buffer, name, Some(value.as_ref()));
        Headers {
            encoded: buffer.freeze(),
        }
    }

    /// These headers with `name` set to `value`: any earlier header of that
    /// name is dropped (a stage's own header replaces its upstream's).
    #[must_use]
    pub fn replaced(&self, name: &str, value: impl AsRef<[u8]>) -> Self {
        if self.value_of(name).is_none() {
            return self.with(name, value);
        }
        let mut buffer = BytesMut::with_capacity(self.encoded.len() + 16);
        for (key, old) in self.entries() {
            if key != name {
                encode(&mut buffer, key, old);
            }
        }
        encode(&mut buffer, name, Some(value.as_ref()));
        Headers {
            encoded: buffer.freeze(),
        }
    }

    /// These headers with every pair of `more` appended.
    #[must_use]
    pub fn extended<'a, V: AsRef<[u8]> + 'a>(
        &self,
        more: impl IntoIterator<Item = (&'a str, V)>,
    ) -> Self {
        let mut buffer = BytesMut::from(&self.encoded[..]);
        for (name, value) in more {
            encode(&mut buffer, name, Some(value.as_ref()));
        }
        Headers {
            encoded: buffer.freeze(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// The headers in order; a null value reads as `None`.
    pub fn entries(&self) -> HeaderEntries<'_> {
        HeaderEntries {
            rest: &self.encoded,
        }
    }

    /// The value of the first header called `name` (a null value reads as
    /// empty).
    pub fn value_of(&self, name: &str) -> Option<&[u8]> {
        self.entries()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.unwrap_or_default())
    }

    /// The headers as owned pairs (null values become empty).
    pub fn to_pairs(&self) -> Vec<(String, Vec<u8>)> {
        self.entries()
            .map(|(name, value)| (name.to_owned(), value.unwrap_or_default().to_vec()))
            .collect()
    }

    /// librdkafka's copy, for a record to produce.
    pub(crate) fn to_rdkafka(&self) -> rdkafka::message::OwnedHeaders {
        let mut owned = rdkafka::message::OwnedHeaders::new_with_capacity(self.entries().count());
        for (key, value) in self.entries() {
            owned = owned.insert(Header { key, value });
        }
        owned
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.entries()
                    .map(|(name, value)| (name, value.map(String::from_utf8_lossy))),
            )
            .finish()
    }
}

impl rdkafka::message::Headers for Headers {
    fn count(&self) -> usize {
        self.entries().count()
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        self.entries()
            .nth(idx)
            .map(|(key, value)| Header { key, value })
    }
}

/// Iterator over [`Headers::entries`].
pub struct HeaderEntries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for HeaderEntries<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        // Well-formed by construction (`from_encoded` checks foreign bytes).
        let (name, value, rest) = next_entry(self.rest)?;
        self.rest = rest;
        Some((name, value))
    }
}

fn encode(buffer: &mut impl BufMut, name: &str, value: Option<&[u8]>) {
    // Kafka header names are short; a longer one is cut rather than
    // corrupting the encoding.
    let name = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
    buffer.put_u16_le(name.len() as u16);
    buffer.put_slice(name);
    match value {
        Some(value) => {
            buffer.put_u32_le(u32::try_from(value.len()).unwrap_or(NULL_VALUE - 1));
            buffer.put_slice(&value[..value.len().min((NULL_VALUE - 1) as usize)]);
        }
        None => buffer.put_u32_le(NULL_VALUE),
    }
}

type Entry<'a> = (&'a str, Option<&'a [u8]>, &'a [u8]);

fn next_entry(bytes: &[u8]) -> Option<Entry<'_>> {
    let (length, rest) = bytes.split_first_chunk::<2>()?;
    let (name, rest) = rest.split_at_checked(usize::from(u16::from_le_bytes(*length)))?;
    let name = std::str::from_utf8(name).ok()?;
    let (length, rest) = rest.split_first_chunk::<4>()?;
    match u32::from_le_bytes(*length) {
        NULL_VALUE => Some((name, None, rest)),
        length => {
            let (value, rest) = rest.split_at_checked(length as usize)?;
            Some((name, Some(value), rest))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers as _;

    #[test]
    fn pairs_round_trip_in_order_with_null_values() {
        let headers = Headers::from_pairs([("a", b"1".as_slice()), ("b", b"")]);
        let mut buffer = headers.encoded.to_vec();
        encode(&mut buffer, "c", None);
        let headers = Headers::from_encoded(Bytes::from(buffer)).expect("well-formed");
        let entries: Vec<_> = headers.entries().collect();
        assert_eq!(
            entries,
            vec![
                ("a", Some(b"1".as_slice())),
                ("b", Some(b"".as_slice())),
                ("c", None)
            ]
        );
        assert_eq!(headers.count(), 3);
        assert_eq!(headers.try_get(2).map(|header| header.value), Some(None));
        assert_eq!(headers.value_of("a"), Some(b"1".as_slice()));
        assert_eq!(headers.value_of("c"), Some(b"".as_slice()));
        assert_eq!(headers.value_of("d"), None);
    }

    #[test]
    fn with_appends_and_leaves_the_original_alone() {
        let original = Headers::from_pairs([("a", "1")]);
        let more = original.with("b", "2").extended([("c", "3")]);
        assert_eq!(original.to_pairs(), vec![("a".to_owned(), b"1".to_vec())]);
        assert_eq!(
            more.to_pairs(),
            vec![
                ("a".to_owned(), b"1".to_vec()),
                ("b".to_owned(), b"2".to_vec()),
                ("c".to_owned(), b"3".to_vec())
            ]
        );
    }

    #[test]
    fn malformed_bytes_are_refused() {
        assert!(Headers::from_encoded(Bytes::from_static(&[5, 0, b'a'])).is_none());
        assert!(Headers::from_encoded(Bytes::from_static(&[1, 0, b'a', 9, 0, 0, 0])).is_none());
        assert!(Headers::from_encoded(Bytes::new()).is_some());
    }

    #[test]
    fn librdkafka_headers_encode_the_same() {
        let owned = rdkafka::message::OwnedHeaders::new()
            .insert(Header {
                key: "x",
                value: Some("1"),
            })
            .insert(Header::<&[u8]> {
                key: "y",
                value: None,
            });
        let mut buffer = Vec::new();
        Headers::encode_into(&mut buffer, &owned);
        let headers = Headers::from_encoded(Bytes::from(buffer)).expect("well-formed");
        assert_eq!(
            headers.entries().collect::<Vec<_>>(),
            vec![("x", Some(b"1".as_slice())), ("y", None)]
        );
        let back = headers.to_rdkafka();
        assert_eq!(back.count(), 2);
        assert_eq!(back.get(0).key, "x");
    }
}
