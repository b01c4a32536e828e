//! Parquet files built from Avro datums as they came off Kafka, for the
//! engines analysts query files with (Spark, DuckDB, BigQuery external
//! tables, pandas/pyarrow).
//!
//! Contract: [`ParquetLayout::of`] maps an Avro writer schema (from the
//! registry) to a Parquet schema — a record to a group, `["null", T]` to an
//! optional `T`, `string` and `enum` to UTF-8 byte arrays, `long` with
//! `timestamp-millis`/`-micros` to TIMESTAMP(UTC), `int` with `date` to
//! DATE, `int`/`long`/`float`/`double`/`boolean`/`bytes`/`fixed` to their
//! physical types — and refuses what a flat column layout cannot hold
//! (arrays, maps, unions of two non-null types), naming the field.
//! [`ParquetLayout::check`] walks one datum without keeping anything: a
//! record that does not match its schema is refused before any file is
//! begun. [`ParquetFile::push`] decodes a datum straight into column
//! buffers (strings are slices of the consumed record, not copies);
//! [`ParquetFile::finish`] writes one row group and returns the whole file.
//! The tests read every file back with pyarrow, a reader nobody here wrote.

use std::collections::HashMap;
use std::sync::Arc;

use adpipe_runtime::Bytes;
use parquet::basic::{Compression, GzipLevel};
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType,
    FloatType, Int32Type, Int64Type,
};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::Value;

use crate::config::FileCodec;

/// The value type of one Parquet column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    /// `bytes`, `string` (checked to be UTF-8).
    Bytes {
        utf8: bool,
    },
    /// An enum: its symbol is stored.
    Enum,
    Fixed(usize),
}

/// The decoding tree of a writer schema.
#[derive(Debug, Clone)]
enum Node {
    Record(Vec<Node>),
    /// A union of null and one other type.
    Nullable {
        null_branch: i64,
        inner: Box<Node>,
    },
    /// Leaf number `column` in schema order; enum symbols when an enum.
    Leaf {
        leaf: Leaf,
        column: usize,
        symbols: Arc<[Bytes]>,
    },
}

/// How datums of one writer schema become Parquet columns.
#[derive(Debug)]
pub struct ParquetLayout {
    root: Node,
    /// The Parquet schema, parsed once.
    schema: parquet::schema::types::TypePtr,
    /// Per column: its type and its maximum definition level.
    columns: Vec<(Leaf, i16)>,
}

struct Builder<'a> {
    names: HashMap<String, &'a Value>,
    columns: Vec<(Leaf, i16)>,
    message: String,
}

fn full_name(schema: &Value, namespace: Option<&str>) -> (String, Option<String>) {
    let name = schema.get("name").and_then(Value::as_str).unwrap_or("");
    if name.contains('.') {
        let space = name.rsplit_once('.').map(|(space, _)| space.to_owned());
        return (name.to_owned(), space);
    }
    let space = schema
        .get("namespace")
        .and_then(Value::as_str)
        .or(namespace)
        .filter(|space| !space.is_empty());
    match space {
        Some(space) => (format!("{space}.{name}"), Some(space.to_owned())),
        None => (name.to_owned(), None),
    }
}

impl<'a> Builder<'a> {
    /// Makes the named type `schema` known to later references by name;
    /// returns its namespace (the default of its fields' names).
    fn register(&mut self, schema: &'a Value, namespace: Option<&str>) -> Option<String> {
        let (full, space) = full_name(schema, namespace);
        self.names.insert(full, schema);
        space
    }

    /// Adds field `name` of type `schema` (optional when `optional`, at
    /// definition level `def` once present) to the message and the tree.
    fn field(
        &mut self,
        path: &str,
        name: &str,
        schema: &'a Value,
        namespace: Option<&str>,
        optional: bool,
        def: i16,
    ) -> Result<Node, String> {
        let repetition = if optional { "optional" } else { "required" };
        let primitive = |kind: &str| -> Option<(Leaf, &'static str, &'static str)> {
            let logical = schema.get("logicalType").and_then(Value::as_str);
            Some(match (kind, logical) {
                ("boolean", _) => (Leaf::Boolean, "boolean", ""),
                ("int", Some("date")) => (Leaf::Int, "int32", " (DATE)"),
                ("int", _) => (Leaf::Int, "int32", ""),
                ("long", Some("timestamp-millis")) => {
                    (Leaf::Long, "int64", " (TIMESTAMP(MILLIS,true))")
                }
                ("long", Some("timestamp-micros")) => {
                    (Leaf::Long, "int64", " (TIMESTAMP(MICROS,true))")
                }
                ("long", _) => (Leaf::Long, "int64", ""),
                ("float", _) => (Leaf::Float, "float", ""),
                ("double", _) => (Leaf::Double, "double", ""),
                ("bytes", _) => (Leaf::Bytes { utf8: false }, "binary", ""),
                ("string", _) => (Leaf::Bytes { utf8: true }, "binary", " (STRING)"),
                _ => return None,
            })
        };
        let leaf = |this: &mut Self, leaf: Leaf, physical: String, annotation: &str| {
            this.message
                .push_str(&format!("{repetition} {physical} {name}{annotation};\n"));
            this.columns.push((leaf, def));
            Node::Leaf {
                leaf,
                column: this.columns.len() - 1,
                symbols: Arc::from(Vec::new()),
            }
        };
        match schema {
            Value::String(kind) => {
                if let Some((kind, physical, annotation)) = primitive(kind) {
                    return Ok(leaf(self, kind, physical.to_owned(), annotation));
                }
                let named = self
                    .names
                    .get(kind.as_str())
                    .or_else(|| {
                        namespace.and_then(|space| self.names.get(&format!("{space}.{kind}")))
                    })
                    .copied()
                    .ok_or_else(|| format!("{path}: unknown type {kind:?}"))?;
                self.field(path, name, named, namespace, optional, def)
            }
            Value::Array(branches) => {
                let null_branch = branches.iter().position(|b| b == "null");
                match (branches.len(), null_branch) {
                    (2, Some(null_branch)) if !optional => {
                        let inner = &branches[1 - null_branch];
                        let inner = self.field(path, name, inner, namespace, true, def + 1)?;
                        Ok(Node::Nullable {
                            null_branch: i64::try_from(null_branch).unwrap_or(0),
                            inner: Box::new(inner),
                        })
                    }
                    _ => Err(format!(
                        "{path}: a union other than [\"null\", T] has no Parquet column layout"
                    )),
                }
            }
            Value::Object(object) => {
                let kind = object.get("type").unwrap_or(&Value::Null);
                match kind.as_str() {
                    Some("record") => {
                        let space = self.register(schema, namespace);
                        let fields = object
                            .get("fields")
                            .and_then(Value::as_array)
                            .ok_or_else(|| format!("{path}: a record without fields"))?;
                        let is_root = path.is_empty();
                        if !is_root {
                            self.message
                                .push_str(&format!("{repetition} group {name} {{\n"));
                        }
                        let mut children = Vec::with_capacity(fields.len());
                        for field in fields {
                            let field_name = field
                                .get("name")
                                .and_then(Value::as_str)
                                .ok_or_else(|| format!("{path}: a field without a name"))?;
                            let field_type = field
                                .get("type")
                                .ok_or_else(|| format!("{path}.{field_name}: no type"))?;
                            let child_path = if is_root {
                                field_name.to_owned()
                            } else {
                                format!("{path}.{field_name}")
                            };
                            children.push(self.field(
                                &child_path,
                                field_name,
                                field_type,
                                space.as_deref(),
                                false,
                                def,
                            )?);
                        }
                        if !is_root {
                            self.message.push_str("}\n");
                        }
                        Ok(Node::Record(children))
                    }
                    Some("enum") => {
                        self.register(schema, namespace);
                        let symbols: Vec<Bytes> = object
                            .get("symbols")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(|symbol| Bytes::copy_from_slice(symbol.as_bytes()))
                            .collect();
                        let Node::Leaf { leaf, column, .. } =
                            leaf(self, Leaf::Enum, "binary".to_owned(), " (ENUM)")
                        else {
                            unreachable!("leaf() makes leaves")
                        };
                        Ok(Node::Leaf {
                            leaf,
                            column,
                            symbols: Arc::from(symbols),
                        })
                    }
                    Some("fixed") => {
                        self.register(schema, namespace);
                        let size = object
                            .get("size")
                            .and_then(Value::as_u64)
                            .and_then(|size| usize::try_from(size).ok())
                            .ok_or_else(|| format!("{path}: a fixed without a size"))?;
                        Ok(leaf(
                            self,
                            Leaf::Fixed(size),
                            format!("fixed_len_byte_array({size})"),
                            "",
                        ))
                    }
                    Some(other @ ("array" | "map")) => Err(format!(
                        "{path}: an {other} has no flat Parquet column layout here"
                    )),
                    Some(primitive_kind) => {
                        let (kind, physical, annotation) = primitive(primitive_kind)
                            .ok_or_else(|| format!("{path}: unknown type {primitive_kind:?}"))?;
                        Ok(leaf(self, kind, physical.to_owned(), annotation))
                    }
                    None => Err(format!("{path}: a type without \"type\"")),
                }
            }
            _ => Err(format!("{path}: not an Avro type: {schema}")),
        }
    }
}

impl ParquetLayout {
    /// The layout of datums written with `schema` (Avro JSON text), or why
    /// it has none.
    pub fn of(schema: &str) -> Result<ParquetLayout, String> {
        let schema: Value =
            serde_json::from_str(schema).map_err(|error| format!("writer schema: {error}"))?;
        if schema.get("type").and_then(Value::as_str) != Some("record") {
            return Err("a Parquet file's rows are records; the writer schema is not".to_owned());
        }
        let mut builder = Builder {
            names: HashMap::new(),
            columns: Vec::new(),
            message: String::new(),
        };
        let root = builder.field("", "", &schema, None, false, 0)?;
        let message = format!("message event {{\n{}}}\n", builder.message);
        let schema = parse_message_type(&message).map_err(|error| format!("{error}: {message}"))?;
        Ok(ParquetLayout {
            root,
            schema: Arc::new(schema),
            columns: builder.columns,
        })
    }

    /// Whether `datum` decodes with this layout's schema to its last byte.
    pub fn check(&self, datum: &Bytes) -> Result<(), String> {
        let mut reader = Reader { datum, at: 0 };
        decode(&self.root, &mut reader, None, 0)?;
        reader.finished()
    }
}

/// A datum being read.
struct Reader<'a> {
    datum: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn long(&mut self) -> Result<i64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .datum
                .get(self.at)
                .ok_or("the datum ends inside a number")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err("a number longer than 10 bytes".to_owned())
    }

    fn take(&mut self, len: usize) -> Result<Bytes, String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.datum.len())
            .ok_or("the datum ends inside a value")?;
        let bytes = self.datum.slice(self.at..end);
        self.at = end;
        Ok(bytes)
    }

    fn length(&mut self) -> Result<usize, String> {
        let len = self.long()?;
        usize::try_from(len).map_err(|_| format!("a negative length {len}"))
    }

    fn finished(&self) -> Result<(), String> {
        if self.at == self.datum.len() {
            Ok(())
        } else {
            Err(format!(
                "{} bytes left after the record",
                self.datum.len() - self.at
            ))
        }
    }
}

/// One column's values and definition levels.
enum Values {
    Boolean(Vec<bool>),
    Int(Vec<i32>),
    Long(Vec<i64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    Bytes(Vec<ByteArray>),
    Fixed(Vec<FixedLenByteArray>),
}

struct Column {
    values: Values,
    defs: Vec<i16>,
    max_def: i16,
}

/// Decodes one value of `node` from `reader` into `columns` (when given;
/// otherwise only checks it); `def` is the definition level reached.
fn decode(
    node: &Node,
    reader: &mut Reader<'_>,
    mut columns: Option<&mut [Column]>,
    def: i16,
) -> Result<(), String> {
    match node {
        Node::Record(children) => {
            for child in children {
                decode(child, reader, columns.as_deref_mut(), def)?;
            }
            Ok(())
        }
        Node::Nullable { null_branch, inner } => {
            let branch = reader.long()?;
            if branch == *null_branch {
                if let Some(columns) = columns {
                    absent(inner, columns, def);
                }
                Ok(())
            } else if branch == 1 - *null_branch {
                decode(inner, reader, columns, def + 1)
            } else {
                Err(format!("union branch {branch} of a two-branch union"))
            }
        }
        Node::Leaf {
            leaf,
            column,
            symbols,
        } => {
            let push_def = |columns: &mut [Column]| {
                let column = &mut columns[*column];
                if column.max_def > 0 {
                    column.defs.push(def);
                }
            };
            match leaf {
                Leaf::Boolean => {
                    let byte = reader.take(1)?[0];
                    if let Some(columns) = columns {
                        push_def(columns);
                        if let Values::Boolean(values) = &mut columns[*column].values {
                            values.push(byte != 0);
                        }
                    }
                }
                Leaf::Int | Leaf::Long => {
                    let value = reader.long()?;
                    if let Some(columns) = columns {
                        push_def(columns);
                        match &mut columns[*column].values {
                            Values::Int(values) => values
                                .push(i32::try_from(value).map_err(|_| format!("int {value}"))?),
                            Values::Long(values) => values.push(value),
                            _ => {}
                        }
                    }
                }
                Leaf::Float => {
                    let bytes = reader.take(4)?;
                    let value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    if let Some(columns) = columns {
                        push_def(columns);
                        if let Values::Float(values) = &mut columns[*column].values {
                            values.push(value);
                        }
                    }
                }
                Leaf::Double => {
                    let bytes = reader.take(8)?;
                    let mut array = [0u8; 8];
                    array.copy_from_slice(&bytes);
                    if let Some(columns) = columns {
                        push_def(columns);
                        if let Values::Double(values) = &mut columns[*column].values {
                            values.push(f64::from_le_bytes(array));
                        }
                    }
                }
                Leaf::Bytes { utf8 } => {
                    let len = reader.length()?;
                    let bytes = reader.take(len)?;
                    if *utf8 {
                        std::str::from_utf8(&bytes)
                            .map_err(|error| format!("a string: {error}"))?;
                    }
                    if let Some(columns) = columns {
                        push_def(columns);
                        if let Values::Bytes(values) = &mut columns[*column].values {
                            values.push(ByteArray::from(bytes));
                        }
                    }
                }
                Leaf::Enum => {
                    let index = reader.long()?;
                    let symbol = usize::try_from(index)
                        .ok()
                        .and_then(|index| symbols.get(index))
                        .ok_or_else(|| format!("enum index {index} of {}", symbols.len()))?;
                    if let Some(columns) = columns {
                        push_def(columns);
                        if let Values::Bytes(values) = &mut columns[*column].values {
                            values.push(ByteArray::from(symbol.clone()));
                        }
                    }
                }
                Leaf::Fixed(size) => {
                    let bytes = reader.take(*size)?;
                    if let Some(columns) = columns {
                        push_def(columns);
                        if let Values::Fixed(values) = &mut columns[*column].values {
                            values.push(FixedLenByteArray::from(ByteArray::from(bytes)));
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

/// Records `node` as absent at level `def` (a null union above it).
fn absent(node: &Node, columns: &mut [Column], def: i16) {
    match node {
        Node::Record(children) => children
            .iter()
            .for_each(|child| absent(child, columns, def)),
        Node::Nullable { inner, .. } => absent(inner, columns, def),
        Node::Leaf { column, .. } => columns[*column].defs.push(def),
    }
}

/// A Parquet file being built in memory: one row group.
pub struct ParquetFile {
    layout: Arc<ParquetLayout>,
    codec: FileCodec,
    columns: Vec<Column>,
}

fn parquet_error(error: &parquet::errors::ParquetError) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

impl ParquetFile {
    /// A file of datums laid out by `layout`, its pages compressed with
    /// `codec`.
    pub fn new(layout: Arc<ParquetLayout>, codec: FileCodec) -> Self {
        let columns = layout
            .columns
            .iter()
            .map(|&(leaf, max_def)| Column {
                values: match leaf {
                    Leaf::Boolean => Values::Boolean(Vec::new()),
                    Leaf::Int => Values::Int(Vec::new()),
                    Leaf::Long => Values::Long(Vec::new()),
                    Leaf::Float => Values::Float(Vec::new()),
                    Leaf::Double => Values::Double(Vec::new()),
                    Leaf::Bytes { .. } | Leaf::Enum => Values::Bytes(Vec::new()),
                    Leaf::Fixed(_) => Values::Fixed(Vec::new()),
                },
                defs: Vec::new(),
                max_def,
            })
            .collect();
        ParquetFile {
            layout,
            codec,
            columns,
        }
    }

    /// Appends one datum (checked beforehand with [`ParquetLayout::check`]).
    pub fn push(&mut self, datum: &Bytes) -> std::io::Result<()> {
        let mut reader = Reader { datum, at: 0 };
        decode(&self.layout.root, &mut reader, Some(&mut self.columns), 0)
            .and_then(|()| reader.finished())
            .map_err(std::io::Error::other)
    }

    /// The complete file.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        let schema = Arc::clone(&self.layout.schema);
        let compression = match self.codec {
            FileCodec::Null => Compression::UNCOMPRESSED,
            FileCodec::Snappy => Compression::SNAPPY,
            FileCodec::Deflate => Compression::GZIP(GzipLevel::default()),
        };
        let properties = Arc::new(
            WriterProperties::builder()
                .set_compression(compression)
                .set_created_by("adpipe-loader".to_owned())
                .build(),
        );
        let mut out = Vec::new();
        let mut writer = SerializedFileWriter::new(&mut out, schema, properties)
            .map_err(|error| parquet_error(&error))?;
        let mut group = writer
            .next_row_group()
            .map_err(|error| parquet_error(&error))?;
        let mut columns = self.columns.into_iter();
        while let Some(mut writer) = group.next_column().map_err(|error| parquet_error(&error))? {
            let column = columns
                .next()
                .ok_or_else(|| std::io::Error::other("more Parquet columns than leaves"))?;
            let defs = (column.max_def > 0).then_some(column.defs.as_slice());
            let written = match &column.values {
                Values::Boolean(values) => {
                    writer.typed::<BoolType>().write_batch(values, defs, None)
                }
                Values::Int(values) => writer.typed::<Int32Type>().write_batch(values, defs, None),
                Values::Long(values) => writer.typed::<Int64Type>().write_batch(values, defs, None),
                Values::Float(values) => {
                    writer.typed::<FloatType>().write_batch(values, defs, None)
                }
                Values::Double(values) => {
                    writer.typed::<DoubleType>().write_batch(values, defs, None)
                }
                Values::Bytes(values) => writer
                    .typed::<ByteArrayType>()
                    .write_batch(values, defs, None),
                Values::Fixed(values) => writer
                    .typed::<FixedLenByteArrayType>()
                    .write_batch(values, defs, None),
            };
            written.map_err(|error| parquet_error(&error))?;
            writer.close().map_err(|error| parquet_error(&error))?;
        }
        group.close().map_err(|error| parquet_error(&error))?;
        writer.close().map_err(|error| parquet_error(&error))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_schema_has_a_layout() {
        for kind in adpipe_events::EventKind::ALL {
            let layout = ParquetLayout::of(kind.schema()).expect("a layout");
            assert!(!layout.columns.is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn nullable_fields_get_definition_levels_and_arrays_are_refused() {
        let schema = r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":"string"},
            {"name":"b","type":["null","long"]},
            {"name":"c","type":["null",{"type":"record","name":"C","fields":[
                {"name":"d","type":["null","string"]}]}]}]}"#;
        let layout = ParquetLayout::of(schema).expect("a layout");
        assert_eq!(
            layout.columns,
            vec![
                (Leaf::Bytes { utf8: true }, 0),
                (Leaf::Long, 1),
                (Leaf::Bytes { utf8: true }, 2)
            ]
        );
        // a = "x", b = null, c = {d = "y"}
        let datum = Bytes::from_static(&[2, b'x', 0, 2, 2, 2, b'y']);
        layout.check(&datum).expect("decodes");
        let mut file = ParquetFile::new(Arc::new(layout), FileCodec::Null);
        file.push(&datum).expect("pushed");
        assert_eq!(file.columns[1].defs, vec![0]);
        assert_eq!(file.columns[2].defs, vec![2]);
        assert!(file.finish().expect("a file").starts_with(b"PAR1"));

        let refused = ParquetLayout::of(
            r#"{"type":"record","name":"R","fields":[{"name":"tags","type":{"type":"array","items":"string"}}]}"#,
        )
        .expect_err("no layout");
        assert!(refused.contains("tags"), "{refused}");
    }

    #[test]
    fn a_datum_that_does_not_match_is_refused() {
        let layout = ParquetLayout::of(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#,
        )
        .expect("a layout");
        assert!(layout.check(&Bytes::from_static(&[10, b'x'])).is_err());
        assert!(layout.check(&Bytes::from_static(&[2, b'x', 7])).is_err());
        assert!(layout.check(&Bytes::from_static(&[2, 0xff])).is_err());
    }
}
