//! Codec throughput: adpipe's path (serde_avro_fast, writer schema straight
//! into the Rust type) against apache-avro's `Value` paths, on the same
//! records in the same run. Run: `cargo bench -p adpipe-codec --bench codec`.

use adpipe_codec::{Encoder, WriterSchema};
use adpipe_events::{EventKind, Impression, JoinedConversion, samples};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    bench_decode_kind::<Impression>(&mut group, EventKind::Impression, samples::impression(17));
    bench_decode_kind::<JoinedConversion>(
        &mut group,
        EventKind::JoinedConversion,
        samples::joined_conversion(17),
    );
    group.finish();
}

fn bench_decode_kind<T>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    kind: EventKind,
    value: T,
) where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let encoder = Encoder::<T>::new(1, kind.schema().parse().expect("schema"));
    let framed = encoder.encode(&value).expect("encodes");
    let datum = &framed[adpipe_codec::HEADER_LEN..];
    let writer = WriterSchema::parse(1, kind.schema().to_owned()).expect("schema");
    let avro_schema = apache_avro::Schema::parse_str(kind.schema()).expect("schema");

    group.bench_with_input(
        BenchmarkId::new("adpipe_serde_avro_fast", kind),
        datum,
        |b, datum| b.iter(|| writer.decode_datum::<T>(black_box(datum)).expect("decodes")),
    );
    // apache-avro's fastest decode: serde straight from the writer schema.
    // It cannot resolve against a reader schema (it panics when given one).
    let datum_reader = apache_avro::reader::datum::GenericDatumReader::builder(&avro_schema)
        .build()
        .expect("reader");
    group.bench_with_input(
        BenchmarkId::new("apache_avro_read_deser", kind),
        datum,
        |b, datum| {
            b.iter(|| {
                datum_reader
                    .read_deser::<T>(&mut black_box(datum))
                    .expect("decodes")
            })
        },
    );
    // The Value path with a reader schema: what apache-avro needs for evolution.
    let resolving_reader = apache_avro::reader::datum::GenericDatumReader::builder(&avro_schema)
        .reader_schema(&avro_schema)
        .build()
        .expect("reader");
    group.bench_with_input(
        BenchmarkId::new("apache_avro_value_resolved", kind),
        datum,
        |b, datum| {
            b.iter(|| {
                let value = resolving_reader
                    .read_value(&mut black_box(datum))
                    .expect("decodes");
                apache_avro::from_value::<T>(&value).expect("fits")
            })
        },
    );
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let impression = samples::impression(17);
    let encoder =
        Encoder::<Impression>::new(1, EventKind::Impression.schema().parse().expect("schema"));
    let avro_schema =
        apache_avro::Schema::parse_str(EventKind::Impression.schema()).expect("schema");
    let mut buffer = Vec::with_capacity(512);
    group.bench_function("adpipe_serde_avro_fast/impression", |b| {
        b.iter(|| {
            buffer.clear();
            encoder
                .encode_into(black_box(&impression), &mut buffer)
                .expect("encodes");
        })
    });
    let datum_writer = apache_avro::writer::datum::GenericDatumWriter::builder(&avro_schema)
        .build()
        .expect("writer");
    group.bench_function("apache_avro_write_ser/impression", |b| {
        b.iter(|| {
            buffer.clear();
            datum_writer
                .write_ser(&mut buffer, black_box(&impression))
                .expect("encodes");
        })
    });
    group.bench_function("apache_avro_value/impression", |b| {
        b.iter(|| {
            let value = apache_avro::to_value(black_box(&impression)).expect("to value");
            datum_writer.write_value_to_vec(value).expect("encodes")
        })
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
