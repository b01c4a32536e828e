//! Avro object container files built from datums as they came off Kafka.
//!
//! Contract: [`ContainerFile::new`] starts a file with the writer schema
//! the datums were encoded with (from the registry); [`ContainerFile::push`]
//! appends one datum *unchanged* — no decode, no re-encode, so a file costs
//! little more than a copy (and the deflate); [`ContainerFile::finish`]
//! returns the bytes of a complete file (Avro 1.12 specification, "Object
//! Container Files": magic, metadata with `avro.schema` and `avro.codec`,
//! a random sync marker, blocks of count + size + data + sync). Files are
//! checked by Apache avro-tools in the tests, not by this code's own reader.

use std::io::Write as _;

use crate::config::FileCodec;

/// Uncompressed bytes per block (readers hold a block in memory).
const BLOCK_BYTES: usize = 64 * 1024;

pub(crate) fn put_long(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_long(out, i64::try_from(bytes.len()).unwrap_or(i64::MAX));
    out.extend_from_slice(bytes);
}

/// A container file being built in memory.
pub struct ContainerFile {
    codec: FileCodec,
    sync: [u8; 16],
    out: Vec<u8>,
    block: Vec<u8>,
    block_count: i64,
    records: usize,
}

impl ContainerFile {
    /// A file of datums written with `schema` (JSON text), compressed with
    /// `codec`.
    pub fn new(schema: &str, codec: FileCodec) -> Self {
        let sync: [u8; 16] = rand::random();
        let mut out = Vec::with_capacity(BLOCK_BYTES);
        out.extend_from_slice(b"Obj\x01");
        let codec_name: &[u8] = match codec {
            // The settings refuse Snappy for Avro; should it come here the
            // file is written uncompressed, and says so.
            FileCodec::Null | FileCodec::Snappy => b"null",
            FileCodec::Deflate => b"deflate",
        };
        put_long(&mut out, 2);
        put_bytes(&mut out, b"avro.schema");
        put_bytes(&mut out, schema.as_bytes());
        put_bytes(&mut out, b"avro.codec");
        put_bytes(&mut out, codec_name);
        put_long(&mut out, 0);
        out.extend_from_slice(&sync);
        ContainerFile {
            codec,
            sync,
            out,
            block: Vec::with_capacity(BLOCK_BYTES),
            block_count: 0,
            records: 0,
        }
    }

    /// Appends one datum (a bare Avro value written with the schema).
    pub fn push(&mut self, datum: &[u8]) -> std::io::Result<()> {
        self.block.extend_from_slice(datum);
        self.block_count += 1;
        self.records += 1;
        if self.block.len() >= BLOCK_BYTES {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Datums pushed so far.
    pub fn records(&self) -> usize {
        self.records
    }

    fn flush_block(&mut self) -> std::io::Result<()> {
        if self.block_count == 0 {
            return Ok(());
        }
        put_long(&mut self.out, self.block_count);
        match self.codec {
            FileCodec::Null | FileCodec::Snappy => put_bytes(&mut self.out, &self.block),
            FileCodec::Deflate => {
                let mut encoder = flate2::write::DeflateEncoder::new(
                    Vec::with_capacity(self.block.len() / 2),
                    flate2::Compression::fast(),
                );
                encoder.write_all(&self.block)?;
                put_bytes(&mut self.out, &encoder.finish()?);
            }
        }
        self.out.extend_from_slice(&self.sync);
        self.block.clear();
        self.block_count = 0;
        Ok(())
    }

    /// The complete file.
    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        self.flush_block()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_are_zigzag_varints() {
        let encoded = |value| {
            let mut out = Vec::new();
            put_long(&mut out, value);
            out
        };
        assert_eq!(encoded(0), [0]);
        assert_eq!(encoded(-1), [1]);
        assert_eq!(encoded(1), [2]);
        assert_eq!(encoded(64), [0x80, 1]);
        assert_eq!(encoded(-65), [0x81, 1]);
    }

    #[test]
    fn a_file_reads_back_with_serde_avro_fast() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Row {
            id: String,
            n: i64,
        }
        let schema = r#"{"type":"record","name":"Row","fields":[{"name":"id","type":"string"},{"name":"n","type":"long"}]}"#;
        for codec in [FileCodec::Null, FileCodec::Deflate] {
            let mut file = ContainerFile::new(schema, codec);
            let mut want = Vec::new();
            for n in 0..5000_i64 {
                let mut datum = Vec::new();
                let id = format!("row-{n}");
                put_bytes(&mut datum, id.as_bytes());
                put_long(&mut datum, n * 1_000_003 - 7);
                file.push(&datum).expect("pushed");
                want.push(Row {
                    id,
                    n: n * 1_000_003 - 7,
                });
            }
            let bytes = file.finish().expect("finished");
            let mut reader =
                serde_avro_fast::object_container_file_encoding::Reader::from_slice(&bytes)
                    .expect("a container file");
            let got: Vec<Row> = reader
                .deserialize::<Row>()
                .collect::<Result<_, _>>()
                .expect("every row");
            assert_eq!(got, want, "{codec:?}");
        }
    }
}
