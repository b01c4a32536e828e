//! Every schema round-trips; old records are read by the new schema; our bytes
//! agree with apache-avro (an independent implementation) both ways.

use adpipe_codec::{DecodeError, Encoder, WriterSchema};
use adpipe_events::{Click, Conversion, EventKind, Impression, samples};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn schemas_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn writer(kind: EventKind, id: u32) -> WriterSchema {
    WriterSchema::parse(id, kind.schema().to_owned()).expect("schema parses")
}

fn encoder<T: Serialize>(kind: EventKind, id: u32) -> Encoder<T> {
    Encoder::new(id, kind.schema().parse().expect("schema parses"))
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    kind: EventKind,
    value: T,
) {
    let framed = encoder::<T>(kind, 42).encode(&value).expect("encodes");
    let (id, datum) = adpipe_codec::split_header(&framed).expect("framed");
    assert_eq!(id, 42);
    let decoded: T = writer(kind, 42).decode_datum(datum).expect("decodes");
    assert_eq!(decoded, value);

    // apache-avro reads what we wrote and writes what we read.
    let avro_schema = apache_avro::Schema::parse_str(kind.schema()).expect("apache-avro parses");
    let avro_reader = apache_avro::reader::datum::GenericDatumReader::builder(&avro_schema)
        .build()
        .expect("reader");
    let avro_value = avro_reader
        .read_value(&mut &datum[..])
        .expect("apache-avro decodes our datum");
    let from_avro: T = apache_avro::from_value(&avro_value).expect("apache-avro value fits type");
    assert_eq!(from_avro, value);
    let avro_writer = apache_avro::writer::datum::GenericDatumWriter::builder(&avro_schema)
        .build()
        .expect("writer");
    let avro_bytes = avro_writer
        .write_value_to_vec(avro_value)
        .expect("re-encodes");
    assert_eq!(
        avro_bytes, datum,
        "both implementations produce identical bytes"
    );
}

#[test]
fn every_schema_round_trips() {
    for n in [0, 1, 2, 3, 999_999] {
        round_trip(EventKind::Impression, samples::impression(n));
        round_trip(EventKind::Click, samples::click(n));
        round_trip(EventKind::Conversion, samples::conversion(n));
        round_trip(EventKind::JoinedClick, samples::joined_click(n));
        round_trip(EventKind::JoinedConversion, samples::joined_conversion(n));
    }
}

/// Reads a v1 fixture (written by Apache's Python `avro`) with the v1 schema
/// as writer into today's type, and checks every added field took exactly
/// the default the current `.avsc` declares.
fn read_v1_fixture<T: DeserializeOwned + Serialize>(name: &str, kind: EventKind) -> T {
    let dir = schemas_dir().join("fixtures");
    let v1_schema = std::fs::read_to_string(dir.join(format!("{name}.v1.avsc"))).expect("v1");
    let datum = std::fs::read(dir.join(format!("{name}.v1.bin"))).expect("v1 datum");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.v1.json"))).expect("json"))
            .expect("fixture JSON");
    let decoded: T = WriterSchema::parse(1, v1_schema)
        .expect("v1 parses")
        .decode_datum(&datum)
        .expect("v1 record is readable by the current type");

    let decoded_json = serde_json::to_value(&decoded).expect("to json");
    let current: serde_json::Value = serde_json::from_str(kind.schema()).expect("schema JSON");
    for field in current["fields"].as_array().expect("fields") {
        let field_name = field["name"].as_str().expect("name");
        let want = match expected.get(field_name) {
            Some(value) => value.clone(),
            None => field.get("default").cloned().unwrap_or_else(|| {
                panic!("{name}.{field_name} is missing from v1 and has no default")
            }),
        };
        assert_eq!(decoded_json[field_name], want, "{name}.{field_name}");
    }
    decoded
}

#[test]
fn v1_records_are_read_by_the_current_schema() {
    let impression: Impression = read_v1_fixture("impression", EventKind::Impression);
    assert_eq!(impression.country, "ZZ");
    let click: Click = read_v1_fixture("click", EventKind::Click);
    assert_eq!(click.landing_url, "");
    let conversion: Conversion = read_v1_fixture("conversion", EventKind::Conversion);
    assert_eq!(conversion.currency, "USD");
    assert_eq!(conversion.click_id.as_deref(), Some("clk-v1-0001"));
}

#[test]
fn current_schemas_are_backward_compatible_with_v1() {
    for (name, kind) in [
        ("impression", EventKind::Impression),
        ("click", EventKind::Click),
        ("conversion", EventKind::Conversion),
    ] {
        let v1 = std::fs::read_to_string(schemas_dir().join(format!("fixtures/{name}.v1.avsc")))
            .expect("v1");
        let writer = apache_avro::Schema::parse_str(&v1).expect("v1 parses");
        let reader = apache_avro::Schema::parse_str(kind.schema()).expect("current parses");
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&writer, &reader)
            .unwrap_or_else(|error| panic!("{name}: current cannot read v1: {error}"));
    }
}

#[test]
fn joined_schemas_embed_the_standalone_definitions() {
    let standalone = |kind: EventKind| {
        let mut value: serde_json::Value = serde_json::from_str(kind.schema()).expect("json");
        value.as_object_mut().expect("object").remove("doc");
        value
    };
    let embedded = |kind: EventKind, field: &str| {
        let value: serde_json::Value = serde_json::from_str(kind.schema()).expect("json");
        let mut found = value["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .find(|candidate| candidate["name"] == field)
            .expect("field")["type"]
            .clone();
        found.as_object_mut().expect("inline record").remove("doc");
        found
    };
    assert_eq!(
        embedded(EventKind::JoinedClick, "click"),
        standalone(EventKind::Click)
    );
    assert_eq!(
        embedded(EventKind::JoinedClick, "impression"),
        standalone(EventKind::Impression)
    );
    assert_eq!(
        embedded(EventKind::JoinedConversion, "conversion"),
        standalone(EventKind::Conversion)
    );
    assert_eq!(
        embedded(EventKind::JoinedConversion, "click"),
        standalone(EventKind::Click)
    );
    assert_eq!(
        embedded(EventKind::JoinedConversion, "impression"),
        standalone(EventKind::Impression)
    );
}

#[test]
fn every_truncation_of_a_valid_record_is_a_typed_error() {
    let framed = encoder::<Impression>(EventKind::Impression, 7)
        .encode(&samples::impression(5))
        .expect("encodes");
    let schema = writer(EventKind::Impression, 7);
    for cut in 0..framed.len() {
        let prefix = &framed[..cut];
        let result = adpipe_codec::split_header(prefix)
            .and_then(|(_, datum)| schema.decode_datum::<Impression>(datum));
        match result {
            Err(DecodeError::TooShort { .. }) => assert!(cut < 5),
            Err(DecodeError::MalformedDatum { schema_id: 7, .. }) => assert!(cut >= 5),
            other => panic!("prefix of {cut} bytes gave {other:?}"),
        }
    }
}

#[test]
fn a_value_that_does_not_fit_leaves_the_buffer_untouched() {
    // A click encoded with the impression schema must fail cleanly.
    let wrong = encoder::<Click>(EventKind::Impression, 3);
    let mut out = b"previous".to_vec();
    let error = wrong
        .encode_into(&samples::click(1), &mut out)
        .expect_err("mismatch");
    assert!(
        matches!(
            error,
            adpipe_codec::EncodeError::Mismatch { schema_id: 3, .. }
        ),
        "{error}"
    );
    assert_eq!(out, b"previous");
}
