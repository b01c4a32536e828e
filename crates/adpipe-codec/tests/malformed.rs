//! Property tests: no input makes the decoder panic; every failure is typed.

use adpipe_codec::{DecodeError, Disposition, WriterSchema, split_header};
use adpipe_events::{EventKind, Impression, JoinedConversion};
use proptest::prelude::*;

fn decode_any(schema: &WriterSchema, record: &[u8]) -> Result<(), DecodeError> {
    let (_, datum) = split_header(record)?;
    match schema.id {
        1 => schema.decode_datum::<Impression>(datum).map(drop),
        2 => schema.decode_datum::<JoinedConversion>(datum).map(drop),
        _ => schema.decode_datum::<serde_json::Value>(datum).map(drop),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        for (id, kind) in [(1, EventKind::Impression), (2, EventKind::JoinedConversion), (3, EventKind::JoinedClick)] {
            let schema = WriterSchema::parse(id, kind.schema().to_owned()).expect("parses");
            if let Err(error) = decode_any(&schema, &bytes) {
                prop_assert_eq!(error.disposition(), Disposition::Poison);
            }
        }
    }

    #[test]
    fn corrupted_valid_records_never_panic(
        n in 0u64..1000,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let schema = WriterSchema::parse(1, EventKind::Impression.schema().to_owned()).expect("parses");
        let encoder = adpipe_codec::Encoder::<Impression>::new(1, EventKind::Impression.schema().parse().expect("parses"));
        let mut record = encoder.encode(&adpipe_events::samples::impression(n)).expect("encodes");
        for (index, byte) in flips {
            let at = index.index(record.len());
            record[at] = byte;
        }
        if let Err(error) = decode_any(&schema, &record) {
            prop_assert_eq!(error.disposition(), Disposition::Poison);
        }
    }
}
