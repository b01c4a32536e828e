//! The joiner's state of one partition, on two stores (`adpipe_state`):
//!
//! - **impressions** by impression id (TTL = the click window): the
//!   impression itself;
//! - **clicks** (TTL = the attribution window): by click id (`c\0<id>`), the
//!   joined click (click + impression) or, for a click whose impression
//!   never came, the bare click marked orphan; and per user and advertiser
//!   (`u\0<user>\0<advertiser>`) the recent clicks, for last-click
//!   attribution.
//!
//! Values are stored in an internal encoding: the Avro datum of the
//! compiled-in schema behind a 5-byte header whose id is [`INTERNAL_V1`]
//! (not a registry id: stored state never needs the registry to be read).
//! Every write returns the changelog record (key, value) the step emits
//! after the output it belongs to.

use adpipe_codec::{Encoder, HEADER_LEN, WriterSchema, split_header, write_header};
use adpipe_events::{Click, EventKind, Impression, JoinedClick};
use adpipe_state::{Entry, Put, StateError, StateStore, changelog};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::rules::ClickRef;

/// The internal encoding's version, written where a registry id would be.
pub const INTERNAL_V1: u32 = 1;
/// How many recent clicks per user and advertiser are kept for last-click
/// attribution (a user clicking more within the window is a bot or a test).
pub const CLICKS_PER_USER_ADVERTISER: usize = 16;

/// A changelog record: key and changelog value.
pub type ChangelogEntry = (Vec<u8>, Vec<u8>);

/// Encodes and decodes one type in the internal encoding.
struct Internal<T> {
    encoder: Encoder<T>,
    decoder: WriterSchema,
}

impl<T: Serialize + DeserializeOwned> Internal<T> {
    fn new(kind: EventKind) -> Self {
        let text = kind.schema();
        #[allow(clippy::expect_used)] // compiled-in schemas, checked by tests
        let parsed = text.parse().expect("a compiled-in schema parses");
        #[allow(clippy::expect_used)]
        let decoder =
            WriterSchema::parse(INTERNAL_V1, text.to_owned()).expect("a compiled-in schema parses");
        Internal {
            encoder: Encoder::new(INTERNAL_V1, parsed),
            decoder,
        }
    }

    fn encode(&self, value: &T) -> Result<Vec<u8>, StateError> {
        self.encoder
            .encode(value)
            .map_err(|error| StateError::Changelog(format!("cannot encode state: {error}")))
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, StateError> {
        let (version, datum) = split_header(bytes)
            .map_err(|error| StateError::Changelog(format!("stored state: {error}")))?;
        if version != INTERNAL_V1 {
            return Err(StateError::Changelog(format!(
                "stored state has internal version {version}, this build reads {INTERNAL_V1}"
            )));
        }
        self.decoder
            .decode_datum(datum)
            .map_err(|error| StateError::Changelog(format!("stored state: {error}")))
    }
}

/// What the clicks store holds under a click id.
#[allow(clippy::large_enum_variant)] // short-lived, never in a collection
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredClick {
    /// The click joined its impression.
    Joined(JoinedClick),
    /// The click's impression never came: it went out as an orphan.
    Orphan(Click),
}

const JOINED: u8 = 1;
const ORPHAN: u8 = 2;

/// One partition's join state.
pub struct JoinState {
    impressions: Box<dyn StateStore>,
    clicks: Box<dyn StateStore>,
    impression_codec: Internal<Impression>,
    click_codec: Internal<Click>,
    joined_codec: Internal<JoinedClick>,
}

fn click_key(click_id: &str) -> Vec<u8> {
    [b"c\0", click_id.as_bytes()].concat()
}

fn user_key(user_id: &str, advertiser_id: i64) -> Vec<u8> {
    [
        b"u\0",
        user_id.as_bytes(),
        b"\0",
        advertiser_id.to_string().as_bytes(),
    ]
    .concat()
}

impl JoinState {
    /// State over the two stores (restored by the caller).
    pub fn new(impressions: Box<dyn StateStore>, clicks: Box<dyn StateStore>) -> Self {
        JoinState {
            impressions,
            clicks,
            impression_codec: Internal::new(EventKind::Impression),
            click_codec: Internal::new(EventKind::Click),
            joined_codec: Internal::new(EventKind::JoinedClick),
        }
    }

    /// The impressions store.
    pub fn impressions_mut(&mut self) -> &mut dyn StateStore {
        self.impressions.as_mut()
    }

    /// The clicks store.
    pub fn clicks_mut(&mut self) -> &mut dyn StateStore {
        self.clicks.as_mut()
    }

    /// Both stores, for sizes.
    pub fn stores(&self) -> [&dyn StateStore; 2] {
        [self.impressions.as_ref(), self.clicks.as_ref()]
    }

    /// The stored impression with this id.
    pub fn impression(&self, impression_id: &str) -> Result<Option<Impression>, StateError> {
        self.impressions
            .get(impression_id.as_bytes())?
            .map(|entry| self.impression_codec.decode(&entry.value))
            .transpose()
    }

    /// Whether a record written with `writer` is, byte for byte, an
    /// impression in the internal encoding (same canonical schema): then
    /// its datum is stored as it came instead of being encoded again.
    pub fn is_internal_impression_schema(&self, writer: &WriterSchema) -> bool {
        writer.parsed.rabin_fingerprint()
            == self.impression_codec.decoder.parsed.rabin_fingerprint()
    }

    /// Whether the impression stored under its id is this one: the stored
    /// bytes are compared with `datum` (the incoming datum, when it is in the
    /// internal encoding) before any decoding.
    pub fn same_impression(
        &self,
        stored: &Entry,
        impression: &Impression,
        datum: Option<&[u8]>,
    ) -> Result<bool, StateError> {
        if let (Some(datum), Ok((INTERNAL_V1, stored_datum))) = (datum, split_header(&stored.value))
            && stored_datum == datum
        {
            return Ok(true);
        }
        Ok(self.impression_codec.decode(&stored.value)? == *impression)
    }

    /// What is stored under an impression id, undecoded.
    pub fn impression_entry(&self, impression_id: &str) -> Result<Option<Entry>, StateError> {
        self.impressions.get(impression_id.as_bytes())
    }

    /// Stores an impression; its changelog record, or `None` when its time
    /// is already outside the click window (nothing stored). `datum` is the
    /// impression as it came when that is already the internal encoding
    /// ([`Self::is_internal_impression_schema`]): stored without encoding.
    pub fn put_impression(
        &mut self,
        impression: &Impression,
        datum: Option<&[u8]>,
    ) -> Result<Option<ChangelogEntry>, StateError> {
        let value = match datum {
            Some(datum) => {
                let mut value = Vec::with_capacity(HEADER_LEN + datum.len());
                write_header(INTERNAL_V1, &mut value);
                value.extend_from_slice(datum);
                value
            }
            None => self.impression_codec.encode(impression)?,
        };
        let key = impression.event_id.as_bytes();
        Ok(
            match self.impressions.put(key, impression.event_time, &value)? {
                Put::Stored => Some((
                    key.to_vec(),
                    changelog::encode_value(impression.event_time, &value),
                )),
                Put::Expired => None,
            },
        )
    }

    /// What is stored under a click id.
    pub fn click(&self, click_id: &str) -> Result<Option<StoredClick>, StateError> {
        let Some(entry) = self.clicks.get(&click_key(click_id))? else {
            return Ok(None);
        };
        match entry.value.split_first() {
            Some((&JOINED, rest)) => Ok(Some(StoredClick::Joined(self.joined_codec.decode(rest)?))),
            Some((&ORPHAN, rest)) => Ok(Some(StoredClick::Orphan(self.click_codec.decode(rest)?))),
            _ => Err(StateError::Changelog(format!(
                "stored click {click_id} has an unknown tag"
            ))),
        }
    }

    /// Stores a click (joined or orphan) under its id, and a joined click
    /// in its user's last clicks on its advertiser; the changelog records.
    pub fn put_click(&mut self, stored: &StoredClick) -> Result<Vec<ChangelogEntry>, StateError> {
        let (click, mut value) = match stored {
            StoredClick::Joined(joined) => (&joined.click, vec![JOINED]),
            StoredClick::Orphan(click) => (click, vec![ORPHAN]),
        };
        match stored {
            StoredClick::Joined(joined) => value.extend(self.joined_codec.encode(joined)?),
            StoredClick::Orphan(click) => value.extend(self.click_codec.encode(click)?),
        }
        let mut changelog = Vec::with_capacity(2);
        let key = click_key(&click.event_id);
        if self.clicks.put(&key, click.event_time, &value)? == Put::Expired {
            return Ok(changelog);
        }
        changelog.push((key, changelog::encode_value(click.event_time, &value)));
        if let StoredClick::Joined(joined) = stored {
            let key = user_key(&click.user_id, joined.impression.advertiser_id);
            let mut recent = self.user_clicks(&click.user_id, joined.impression.advertiser_id)?;
            if !recent.iter().any(|known| known.click_id == click.event_id) {
                recent.push(ClickRef {
                    event_time: click.event_time,
                    click_id: click.event_id.clone(),
                });
            }
            // Newest first by the attribution order; keep the most recent.
            recent.sort_by(|a, b| (b.event_time, &b.click_id).cmp(&(a.event_time, &a.click_id)));
            recent.truncate(CLICKS_PER_USER_ADVERTISER);
            let newest = recent.first().map_or(click.event_time, |c| c.event_time);
            let value = encode_refs(&recent);
            if self.clicks.put(&key, newest, &value)? == Put::Stored {
                changelog.push((key, changelog::encode_value(newest, &value)));
            }
        }
        Ok(changelog)
    }

    /// A user's recent clicks on an advertiser.
    pub fn user_clicks(
        &self,
        user_id: &str,
        advertiser_id: i64,
    ) -> Result<Vec<ClickRef>, StateError> {
        match self.clicks.get(&user_key(user_id, advertiser_id))? {
            Some(entry) => decode_refs(&entry.value),
            None => Ok(Vec::new()),
        }
    }
}

/// Click refs: count u16, then per click event time i64 and id (u16 length
/// + UTF-8), little-endian.
fn encode_refs(refs: &[ClickRef]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(2 + refs.len() * 48);
    bytes.extend_from_slice(&(refs.len() as u16).to_le_bytes());
    for click in refs {
        bytes.extend_from_slice(&click.event_time.to_le_bytes());
        let id = &click.click_id.as_bytes()[..click.click_id.len().min(u16::MAX as usize)];
        bytes.extend_from_slice(&(id.len() as u16).to_le_bytes());
        bytes.extend_from_slice(id);
    }
    bytes
}

fn decode_refs(bytes: &[u8]) -> Result<Vec<ClickRef>, StateError> {
    let bad = || StateError::Changelog("a stored click list is malformed".to_owned());
    let mut at = 0_usize;
    let mut take = |len: usize| -> Result<&[u8], StateError> {
        let slice = bytes.get(at..at + len).ok_or_else(bad)?;
        at += len;
        Ok(slice)
    };
    let count = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad())?);
    let mut refs = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let event_time = i64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
        let len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad())?);
        let click_id = String::from_utf8(take(usize::from(len))?.to_vec()).map_err(|_| bad())?;
        refs.push(ClickRef {
            event_time,
            click_id,
        });
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use adpipe_events::samples;
    use adpipe_state::{Buckets, MemoryStore};

    const DAY: i64 = 86_400_000;

    fn state() -> JoinState {
        JoinState::new(
            Box::new(MemoryStore::new(Buckets::for_ttl(DAY), u64::MAX)),
            Box::new(MemoryStore::new(Buckets::for_ttl(30 * DAY), u64::MAX)),
        )
    }

    /// The incoming datum is stored as is only when its writer schema has
    /// the compiled-in canonical form; then it is exactly what encoding
    /// would have stored, and a copy under the same id is recognised
    /// without decoding.
    #[test]
    fn an_impression_written_with_the_current_schema_is_stored_as_it_came() {
        let mut state = state();
        let impression = samples::impression(2);
        // The registry returns the schema text with its own formatting.
        let current = EventKind::Impression.schema().replace('\n', " ");
        let registered = WriterSchema::parse(42, current).expect("parses");
        assert!(state.is_internal_impression_schema(&registered));
        let older = WriterSchema::parse(
            7,
            std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../schemas/fixtures/impression.v1.avsc"
            ))
            .expect("fixture"),
        )
        .expect("parses");
        assert!(!state.is_internal_impression_schema(&older));

        let encoded = state.impression_codec.encode(&impression).expect("encodes");
        let datum = &encoded[HEADER_LEN..];
        let (_, as_came) = state
            .put_impression(&impression, Some(datum))
            .expect("puts")
            .expect("stored");
        let (_, encoded_again) = state
            .put_impression(&impression, None)
            .expect("puts")
            .expect("stored");
        assert_eq!(as_came, encoded_again);
        let stored = state
            .impression_entry(&impression.event_id)
            .expect("reads")
            .expect("stored");
        assert!(
            state
                .same_impression(&stored, &impression, Some(datum))
                .expect("compares")
        );
        assert!(
            state
                .same_impression(&stored, &impression, None)
                .expect("compares")
        );
        let mut other = impression.clone();
        other.cost_micros += 1;
        let other_datum = state.impression_codec.encode(&other).expect("encodes");
        assert!(
            !state
                .same_impression(&stored, &other, Some(&other_datum[HEADER_LEN..]))
                .expect("compares")
        );
    }

    #[test]
    fn stores_impressions_and_clicks_and_indexes_last_clicks() {
        let mut state = state();
        let impression = samples::impression(1);
        let changelog = state
            .put_impression(&impression, None)
            .expect("puts")
            .expect("stored");
        assert_eq!(changelog.0, impression.event_id.as_bytes());
        assert_eq!(
            state.impression(&impression.event_id).expect("reads"),
            Some(impression.clone())
        );
        assert_eq!(state.impression("nope").expect("reads"), None);

        let mut click = samples::click(1);
        click.user_id = impression.user_id.clone();
        let joined = StoredClick::Joined(JoinedClick {
            click: click.clone(),
            impression: impression.clone(),
        });
        let changelog = state.put_click(&joined).expect("puts");
        assert_eq!(changelog.len(), 2, "by id and in the user's list");
        assert_eq!(state.click(&click.event_id).expect("reads"), Some(joined));
        let mut later = click.clone();
        later.event_id = "later".to_owned();
        later.event_time += 10;
        state
            .put_click(&StoredClick::Joined(JoinedClick {
                click: later.clone(),
                impression: impression.clone(),
            }))
            .expect("puts");
        let refs = state
            .user_clicks(&click.user_id, impression.advertiser_id)
            .expect("reads");
        assert_eq!(
            refs.iter().map(|c| c.click_id.as_str()).collect::<Vec<_>>(),
            ["later", click.event_id.as_str()]
        );

        let orphan = StoredClick::Orphan(samples::click(2));
        assert_eq!(
            state.put_click(&orphan).expect("puts").len(),
            1,
            "not indexed"
        );
        assert_eq!(
            state.click(&samples::click(2).event_id).expect("reads"),
            Some(orphan)
        );
    }

    #[test]
    fn a_changelog_replay_rebuilds_the_same_state() {
        let mut state = state();
        let impression = samples::impression(3);
        let mut records = vec![
            state
                .put_impression(&impression, None)
                .expect("puts")
                .expect("stored"),
        ];
        let mut click = samples::click(3);
        click.user_id = impression.user_id.clone();
        let clicks = state
            .put_click(&StoredClick::Joined(JoinedClick {
                click: click.clone(),
                impression: impression.clone(),
            }))
            .expect("puts");
        let mut rebuilt = self::state();
        let (key, value) = records.remove(0);
        rebuilt
            .impressions_mut()
            .apply(&key, Some(&value))
            .expect("applies");
        for (key, value) in clicks {
            rebuilt
                .clicks_mut()
                .apply(&key, Some(&value))
                .expect("applies");
        }
        assert_eq!(
            rebuilt.impression(&impression.event_id).expect("reads"),
            Some(impression.clone())
        );
        assert_eq!(
            rebuilt.click(&click.event_id).expect("reads"),
            state.click(&click.event_id).expect("reads")
        );
        assert_eq!(
            rebuilt
                .user_clicks(&click.user_id, impression.advertiser_id)
                .expect("reads"),
            state
                .user_clicks(&click.user_id, impression.advertiser_id)
                .expect("reads")
        );
    }
}
