//! The 5-byte Confluent header, read with every length checked.

use crate::error::DecodeError;

/// First byte of every Confluent-framed record.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const HEADER_LEN: usize = 5;

/// A schema id assigned by the registry.
pub type SchemaId = u32;

/// Splits a framed record into its schema id and Avro datum.
pub fn split_header(record: &[u8]) -> Result<(SchemaId, &[u8]), DecodeError> {
    let Some((header, datum)) = record.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::TooShort { len: record.len() });
    };
    let [magic, id @ ..] = *header;
    if magic != MAGIC_BYTE {
        return Err(DecodeError::BadMagicByte(magic));
    }
    Ok((u32::from_be_bytes(id), datum))
}

/// Appends the header for `schema_id` to `out`.
pub fn write_header(schema_id: SchemaId, out: &mut Vec<u8>) {
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut out = Vec::new();
        write_header(0x0102_0304, &mut out);
        out.extend_from_slice(b"datum");
        let (id, datum) = split_header(&out).expect("valid header");
        assert_eq!(id, 0x0102_0304);
        assert_eq!(datum, b"datum");
    }

    #[test]
    fn rejects_short_and_foreign_records() {
        assert!(matches!(
            split_header(&[0, 0, 0]),
            Err(DecodeError::TooShort { len: 3 })
        ));
        assert!(matches!(
            split_header(&[]),
            Err(DecodeError::TooShort { len: 0 })
        ));
        assert!(matches!(
            split_header(&[1, 0, 0, 0, 1]),
            Err(DecodeError::BadMagicByte(1))
        ));
        // A header with an empty datum is well-framed; the datum decoder judges it.
        assert!(matches!(split_header(&[0, 0, 0, 0, 1]), Ok((1, []))));
    }
}
