//! The files sink: Avro container files or Parquet files (`files.format`)
//! partitioned `<dir>/<topic>/date=YYYY-MM-DD/hour=HH/` by event time
//! (UTC), one file per batch and hour, named
//! `<topic>-p<partition>-<first>-<last>.avro|.parquet` from the batch's
//! partition and offset range (from its first record written). A record that does not decode with its
//! writer schema (Parquet needs its fields) goes to the dead-letter topic;
//! a writer schema Parquet cannot lay out (arrays, maps) stops the worker
//! with the field named.
//!
//! Contract — each record once in the files, whatever crashes:
//! - a batch's files are written into a staging directory and fsynced;
//!   then the partition's marker (`<dir>/_adpipe/<topic>/p<partition>.json`,
//!   replaced atomically) records them as *pending* with the batch's next
//!   offset; then they are renamed into place and the marker records
//!   just the next offset. Readers never see half a file (a rename is
//!   atomic), and pyarrow/Spark skip the `_adpipe` directory;
//! - the marker is what the partition's files hold (`STORES_OFFSETS`): a
//!   restart — after kill -9 anywhere in the sequence — first finishes a
//!   pending batch (renames what is still staged), then starts at the
//!   marker's offset, so no record is written twice even when the Kafka
//!   commit was behind, and none skipped. When the commit is behind the
//!   marker, it starts at the commit instead: a bad record there was
//!   dead-lettered while the batch after it was written, and a kill -9
//!   may have cut its dead letter off; read again, it is dead-lettered
//!   again, while the records below the marker are not written again
//!   (`Sink::holds`). A batch's files are named from its first record
//!   written;
//! - a full disk stops the worker with the file named (nothing committed
//!   past the batch); other IO errors are retried.
//!
//! - one writer per partition at a time, whatever the rebalances: the
//!   recovery and every batch's write hold an exclusive lock on
//!   `_adpipe/<topic>/p<partition>.lock` (flock), and a write first reads
//!   the marker again under it, skipping what another task already wrote.
//!   So a task still finishing a write after its partition moved on (a
//!   revoke that outlived its deadline, in this process or another on the
//!   same host) neither has its staged files swept by the new owner's
//!   recovery nor writes a record twice.
//!
//! All instances of the loader must share `<dir>` (one volume), as
//! partitions move between them. To write a range again (`adpipe replay`),
//! delete its files and the partition's marker first.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adpipe_codec::WriterSchema;
use adpipe_runtime::batching::Span;
use adpipe_runtime::{AssignedPartition, Bytes, InputRecord, StepError};
use serde::{Deserialize, Serialize};

use crate::avro_file::ContainerFile;
use crate::config::{FileCodec, FileFormat, FilesSettings};
use crate::parquet_file::{ParquetFile, ParquetLayout};
use crate::record::{Identity, civil};
use crate::sink::{Pending, Refusal, Sink, SinkFactory, Turns, take_turn};

/// A partition's marker: where it resumes, and the batch being put in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The next offset to write.
    pub next: Option<i64>,
    /// A batch whose files are written and fsynced in staging, being
    /// renamed into place; `next` moves to its end once they all are.
    pub pending: Option<PendingBatch>,
}

/// The files of a batch being put in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBatch {
    /// The offset after the batch.
    pub next: i64,
    /// Each file: staged path, final path.
    pub files: Vec<(PathBuf, PathBuf)>,
}

/// Where one partition's files, marker and staging live.
#[derive(Debug, Clone)]
pub struct PartitionPaths {
    root: PathBuf,
    topic: String,
    partition: i32,
}

fn io_error(what: &str, path: &Path, error: &std::io::Error) -> StepError {
    // ENOSPC / EDQUOT: no retry will help until an operator acts.
    let message = format!("{what} {}: {error}", path.display());
    match error.raw_os_error() {
        Some(28 | 122) => StepError::fatal("disk_full", message),
        _ => StepError::transient("file_io", message),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    let mut file = fs::File::create(path).map_err(|error| io_error("creating", path, &error))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| io_error("writing", path, &error))
}

fn sync_dir(dir: &Path) -> Result<(), StepError> {
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_error("syncing", dir, &error))
}

fn create_dir(dir: &Path) -> Result<(), StepError> {
    fs::create_dir_all(dir).map_err(|error| io_error("creating", dir, &error))
}

impl PartitionPaths {
    /// The paths of partition `partition` of `topic` under `root`.
    pub fn new(root: &Path, topic: &str, partition: i32) -> Self {
        PartitionPaths {
            root: root.to_owned(),
            topic: topic.to_owned(),
            partition,
        }
    }

    fn marker(&self) -> PathBuf {
        self.root
            .join("_adpipe")
            .join(&self.topic)
            .join(format!("p{}.json", self.partition))
    }

    /// Holds the partition's lock until the returned file is dropped
    /// (blocking while another writer or recovery holds it).
    pub fn lock(&self) -> Result<fs::File, StepError> {
        let path = self
            .root
            .join("_adpipe")
            .join(&self.topic)
            .join(format!("p{}.lock", self.partition));
        create_dir(path.parent().unwrap_or(&self.root))?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| io_error("opening", &path, &error))?;
        file.lock()
            .map_err(|error| io_error("locking", &path, &error))?;
        Ok(file)
    }

    fn staging(&self) -> PathBuf {
        self.root
            .join("_adpipe")
            .join("staging")
            .join(&self.topic)
            .join(format!("p{}", self.partition))
    }

    /// The final path of the file of hour `hour_ms` of a batch spanning
    /// `first..=last` (`suffix` tells files of one hour apart when the
    /// batch holds several writer schemas; `extension` the format).
    pub fn file(
        &self,
        hour_ms: i64,
        first: i64,
        last: i64,
        suffix: &str,
        extension: &str,
    ) -> PathBuf {
        let (year, month, day, hour) = civil(hour_ms);
        self.root
            .join(&self.topic)
            .join(format!("date={year:04}-{month:02}-{day:02}"))
            .join(format!("hour={hour:02}"))
            .join(format!(
                "{}-p{:04}-{first:020}-{last:020}{suffix}.{extension}",
                self.topic, self.partition
            ))
    }

    /// The marker as stored (default: nothing written yet).
    pub fn read_marker(&self) -> Result<Marker, StepError> {
        let path = self.marker();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                StepError::fatal(
                    "marker_corrupt",
                    format!("{}: {error} (fix or delete it)", path.display()),
                )
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Marker::default()),
            Err(error) => Err(io_error("reading", &path, &error)),
        }
    }

    fn write_marker(&self, marker: &Marker) -> Result<(), StepError> {
        let path = self.marker();
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        create_dir(&dir)?;
        let staged = dir.join(format!(".p{}.json.tmp", self.partition));
        let bytes = serde_json::to_vec(marker)
            .map_err(|error| StepError::fatal("marker", error.to_string()))?;
        write_synced(&staged, &bytes)?;
        fs::rename(&staged, &path).map_err(|error| io_error("renaming", &path, &error))?;
        sync_dir(&dir)
    }

    /// Finishes a pending batch (renames the files still staged, then
    /// moves the marker on) and returns where the partition resumes.
    pub fn recover(&self) -> Result<Option<i64>, StepError> {
        let _lock = self.lock()?;
        self.recover_locked()
    }

    /// [`recover`](Self::recover), the lock held by the caller.
    fn recover_locked(&self) -> Result<Option<i64>, StepError> {
        let marker = self.read_marker()?;
        let next = match marker.pending {
            Some(pending) => {
                self.put_in_place(&pending)?;
                Some(pending.next)
            }
            None => marker.next,
        };
        // What is still staged belongs to no batch (a crash or a full disk
        // before its marker said pending): written again from Kafka.
        let staging = self.staging();
        for entry in fs::read_dir(&staging).into_iter().flatten().flatten() {
            let path = entry.path();
            fs::remove_file(&path).map_err(|error| io_error("removing", &path, &error))?;
        }
        Ok(next)
    }

    /// Renames a pending batch's staged files into place and records its
    /// end. A file already renamed (a crash in the middle) is skipped.
    fn put_in_place(&self, pending: &PendingBatch) -> Result<(), StepError> {
        let mut dirs = Vec::new();
        for (staged, target) in &pending.files {
            let dir = target.parent().unwrap_or(&self.root).to_owned();
            if staged.exists() {
                create_dir(&dir)?;
                fs::rename(staged, target).map_err(|error| io_error("renaming", target, &error))?;
            } else if !target.exists() {
                return Err(StepError::fatal(
                    "file_lost",
                    format!(
                        "{} is neither staged nor in place: the batch before offset {} is incomplete (restore it or delete the marker {})",
                        target.display(),
                        pending.next,
                        self.marker().display()
                    ),
                ));
            }
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in &dirs {
            sync_dir(dir)?;
        }
        self.write_marker(&Marker {
            next: Some(pending.next),
            pending: None,
        })
    }
}

/// Sets the files sink up and makes each task's.
pub struct FilesFactory {
    settings: FilesSettings,
}

impl FilesFactory {
    /// A factory writing under `settings.dir` (created now: a directory
    /// that cannot be created fails the start, naming it).
    pub fn new(settings: &FilesSettings) -> Result<Self, String> {
        fs::create_dir_all(&settings.dir)
            .map_err(|error| format!("files.dir {}: {error}", settings.dir.display()))?;
        Ok(FilesFactory {
            settings: settings.clone(),
        })
    }
}

impl SinkFactory for FilesFactory {
    type Sink = FilesSink;
    const NAME: &'static str = "files";
    const STORES_OFFSETS: bool = true;

    fn sink(&self, topic: &str, partition: i32) -> Result<FilesSink, StepError> {
        let paths = PartitionPaths::new(&self.settings.dir, topic, partition);
        let next = paths.recover()?;
        Ok(FilesSink {
            paths,
            format: self.settings.format,
            codec: self.settings.codec,
            layouts: std::collections::HashMap::new(),
            next,
        })
    }

    fn stored_offsets(
        &self,
        partitions: &[AssignedPartition],
    ) -> Result<Vec<(String, i32, i64)>, StepError> {
        let mut starts = Vec::new();
        for assigned in partitions {
            let paths =
                PartitionPaths::new(&self.settings.dir, &assigned.topic, assigned.partition);
            if let Some(next) = paths.recover()? {
                // Behind the marker, the commit marks records whose dead
                // letters may be missing: start there (`Sink::holds`
                // keeps the others out of the files).
                let start = assigned
                    .committed
                    .filter(|committed| *committed < next)
                    .unwrap_or(next);
                starts.push((assigned.topic.clone(), assigned.partition, start));
            }
        }
        Ok(starts)
    }
}

/// One record for a file: its writer schema and its bare datum.
#[derive(Debug)]
pub struct Datum {
    schema: Arc<WriterSchema>,
    /// Parquet: the schema's column layout.
    layout: Option<Arc<ParquetLayout>>,
    datum: Bytes,
}

/// A file being built, in the configured format.
enum FileBuilder {
    Avro(ContainerFile),
    Parquet(ParquetFile),
}

impl FileBuilder {
    /// A Parquet file when the datums come with a column layout (`prepare`
    /// gives one to every datum when the format is Parquet), else Avro.
    fn new(first: &Datum, codec: FileCodec) -> FileBuilder {
        match &first.layout {
            Some(layout) => FileBuilder::Parquet(ParquetFile::new(Arc::clone(layout), codec)),
            None => FileBuilder::Avro(ContainerFile::new(&first.schema.text, codec)),
        }
    }

    fn extension(format: FileFormat) -> &'static str {
        match format {
            FileFormat::Avro => "avro",
            FileFormat::Parquet => "parquet",
        }
    }

    fn push(&mut self, datum: &Datum) -> std::io::Result<()> {
        match self {
            FileBuilder::Avro(file) => file.push(&datum.datum),
            FileBuilder::Parquet(file) => file.push(&datum.datum),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            FileBuilder::Avro(file) => file.finish(),
            FileBuilder::Parquet(file) => file.finish(),
        }
    }
}

/// One task's files sink.
pub struct FilesSink {
    paths: PartitionPaths,
    format: FileFormat,
    codec: FileCodec,
    /// Parquet layouts by writer schema id.
    layouts: std::collections::HashMap<u32, Arc<ParquetLayout>>,
    /// The marker's next offset: records before it are in files already.
    next: Option<i64>,
}

impl FilesSink {
    /// Writes the batch's files, staged then in place (see the module).
    fn write_blocking(&mut self, batch: &[Pending<Datum>], span: &Span) -> Result<(), StepError> {
        let _lock = self.paths.lock()?;
        // Another task may have written this partition since this one
        // recovered (it outlived a revoke): resume after what it wrote.
        let stored = self.paths.recover_locked()?;
        self.next = self.next.max(stored);
        // (hour, schema id) → indices, in offset order within each file.
        let mut files: BTreeMap<(i64, u32), Vec<usize>> = BTreeMap::new();
        for (index, pending) in batch.iter().enumerate() {
            if self.next.is_some_and(|next| pending.source.offset < next) {
                continue; // In a file already (a group reset behind the marker).
            }
            let hour = pending.identity.time_ms.div_euclid(3_600_000) * 3_600_000;
            files
                .entry((hour, pending.item.schema.id))
                .or_default()
                .push(index);
        }
        if files.is_empty() {
            // All of it is in files already: the marker stays where it is
            // (it may be past this batch).
            return Ok(());
        }
        // Named from the first record written: the ones before it are in
        // earlier files.
        let first = files
            .values()
            .filter_map(|indices| indices.first())
            .map(|&index| batch[index].source.offset)
            .min()
            .unwrap_or(span.first);
        let staging = self.paths.staging();
        create_dir(&staging)?;
        let mut placed = Vec::new();
        for (&(hour, schema_id), indices) in &files {
            let several_schemas = files.range((hour, 0)..=(hour, u32::MAX)).count() > 1;
            let suffix = if several_schemas {
                format!("-s{schema_id}")
            } else {
                String::new()
            };
            let extension = FileBuilder::extension(self.format);
            let target = self.paths.file(hour, first, span.last, &suffix, extension);
            // A batch across an hour's end has a file of the same name in
            // each hour's directory: staged apart, or the second would
            // overwrite the first (found by the chaos run: one hour's
            // records lost, the other's file missing).
            let staged = staging.join(format!(
                "{hour}-{}",
                target.file_name().unwrap_or_default().to_string_lossy()
            ));
            let mut file = FileBuilder::new(&batch[indices[0]].item, self.codec);
            // The datums were checked in `prepare`: an error here is not
            // the record's fault, and stops the worker.
            let encoding = |error: std::io::Error| {
                StepError::fatal("file_encoding", format!("{}: {error}", staged.display()))
            };
            for &index in indices {
                file.push(&batch[index].item).map_err(encoding)?;
            }
            let bytes = file.finish().map_err(encoding)?;
            write_synced(&staged, &bytes)?;
            metrics::counter!("adpipe_loader_file_bytes_total").increment(bytes.len() as u64);
            placed.push((staged, target));
        }
        sync_dir(&staging)?;
        let pending = PendingBatch {
            next: (span.last + 1).max(self.next.unwrap_or(0)),
            files: placed,
        };
        self.paths.write_marker(&Marker {
            next: self.next,
            pending: Some(pending.clone()),
        })?;
        self.paths.put_in_place(&pending)?;
        self.next = Some(pending.next);
        Ok(())
    }
}

impl Sink for FilesSink {
    type Item = Datum;

    fn prepare(
        &mut self,
        record: &InputRecord<'_>,
        _identity: &Identity,
    ) -> Result<Datum, StepError> {
        let schema = record.writer.clone().ok_or_else(|| {
            StepError::fatal("no_writer_schema", "the worker does not decode values")
        })?;
        let value = record.value.unwrap_or_default();
        let (_, datum) = adpipe_codec::split_header(value)?;
        let datum = record.share(Some(datum)).unwrap_or_default();
        let layout = match self.format {
            FileFormat::Avro => None,
            FileFormat::Parquet => {
                let layout = match self.layouts.get(&schema.id) {
                    Some(layout) => Arc::clone(layout),
                    None => {
                        let layout =
                            ParquetLayout::of(&schema.text)
                                .map(Arc::new)
                                .map_err(|reason| {
                                    StepError::fatal(
                                        "parquet_layout",
                                        format!("writer schema {}: {reason}", schema.id),
                                    )
                                })?;
                        self.layouts.insert(schema.id, Arc::clone(&layout));
                        layout
                    }
                };
                layout.check(&datum).map_err(|reason| {
                    StepError::poison(
                        "undecodable",
                        format!("does not decode with writer schema {}: {reason}", schema.id),
                    )
                })?;
                Some(layout)
            }
        };
        Ok(Datum {
            schema,
            layout,
            datum,
        })
    }

    fn holds(&self, offset: i64) -> bool {
        self.next.is_some_and(|next| offset < next)
    }

    async fn write(
        &mut self,
        batch: &[Pending<Datum>],
        spans: &[Span],
        turns: &Turns,
    ) -> Result<Vec<Refusal>, StepError> {
        let _turn = take_turn(turns).await?;
        // One input partition per task: one span.
        let Some(span) = spans.first() else {
            return Ok(Vec::new());
        };
        // Local file IO, bounded; not cut off half-way by the write timeout
        // (a crash half-way is what the marker recovers from).
        tokio::task::block_in_place(|| self.write_blocking(batch, span))?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro_file::{put_bytes, put_long};

    const SCHEMA: &str = r#"{"type":"record","name":"Row","fields":[{"name":"event_id","type":"string"},{"name":"event_time","type":"long"}]}"#;

    fn settings(dir: &Path) -> FilesSettings {
        FilesSettings {
            dir: dir.to_owned(),
            format: FileFormat::Avro,
            codec: FileCodec::Null,
        }
    }

    /// Records `first..=last` of partition 0 of `topic`.
    fn batch(topic: &str, first: i64, last: i64) -> (Vec<Pending<Datum>>, Span) {
        let schema = Arc::new(WriterSchema {
            id: 1,
            text: SCHEMA.to_owned(),
            parsed: SCHEMA.parse().expect("a schema"),
        });
        let time = 1_764_000_000_000;
        let records = (first..=last)
            .map(|offset| {
                let mut datum = Vec::new();
                put_bytes(&mut datum, format!("e{offset}").as_bytes());
                put_long(&mut datum, time);
                Pending::for_test(
                    topic,
                    0,
                    offset,
                    (format!("e{offset}"), time),
                    Datum {
                        schema: Arc::clone(&schema),
                        layout: None,
                        datum: Bytes::from(datum),
                    },
                )
            })
            .collect();
        let span = Span {
            topic: topic.to_owned(),
            partition: 0,
            first,
            last,
        };
        (records, span)
    }

    fn ids_in_files(dir: &Path, topic: &str) -> Vec<String> {
        let mut ids: Vec<String> = crate::read_back::avro_identities(dir)
            .expect("files read")
            .remove(topic)
            .unwrap_or_default()
            .into_iter()
            .map(|identity| identity.id)
            .collect();
        ids.sort();
        ids
    }

    /// A task still writing after its partition moved on (a zombie): the
    /// new owner recovered before the zombie's write, then both write. Each
    /// record is in the files once, and a stale batch moves no marker back.
    #[test]
    fn two_tasks_of_one_partition_write_each_record_once() {
        let dir = std::env::temp_dir().join(format!("adpipe-files-fence-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let factory = FilesFactory::new(&settings(&dir)).expect("a factory");
        let mut zombie = factory.sink("t", 0).expect("a sink");
        let mut owner = factory.sink("t", 0).expect("a sink");
        let (records, span) = batch("t", 0, 9);
        zombie.write_blocking(&records, &span).expect("written");
        let (records, span) = batch("t", 0, 19);
        owner.write_blocking(&records, &span).expect("written");
        let want: Vec<String> = {
            let mut ids: Vec<String> = (0..20).map(|n| format!("e{n}")).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids_in_files(&dir, "t"), want, "each record once");
        let (records, span) = batch("t", 0, 9);
        zombie
            .write_blocking(&records, &span)
            .expect("a stale batch is skipped");
        let paths = PartitionPaths::new(&dir, "t", 0);
        assert_eq!(paths.read_marker().expect("a marker").next, Some(20));
        assert_eq!(ids_in_files(&dir, "t"), want);
        let _ = fs::remove_dir_all(&dir);
    }

    /// A batch across an hour's end: a file in each hour's directory, both
    /// named from the batch's offsets, each with its own records (staged
    /// under one name, the second overwrote the first: the first hour's
    /// records lost, its file put in place with the second's, and the
    /// second's "neither staged nor in place" stopped the loader).
    #[test]
    fn a_batch_across_an_hours_end_writes_each_hours_file() {
        let dir = std::env::temp_dir().join(format!("adpipe-files-hours-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let factory = FilesFactory::new(&settings(&dir)).expect("a factory");
        let mut sink = factory.sink("t", 0).expect("a sink");
        let (mut records, span) = batch("t", 0, 9);
        for record in &mut records[5..] {
            record.identity.time_ms += 3_600_000;
        }
        sink.write_blocking(&records, &span).expect("written");
        let want: Vec<String> = {
            let mut ids: Vec<String> = (0..10).map(|n| format!("e{n}")).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids_in_files(&dir, "t"), want, "each record once");
        let paths = PartitionPaths::new(&dir, "t", 0);
        assert_eq!(paths.read_marker().expect("a marker").next, Some(10));
        let _ = fs::remove_dir_all(&dir);
    }

    /// A recovery waits for a write in progress (it would sweep its staged
    /// files).
    #[test]
    fn a_recovery_waits_for_the_partitions_lock() {
        let dir = std::env::temp_dir().join(format!("adpipe-files-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let paths = PartitionPaths::new(&dir, "t", 3);
        let held = paths.lock().expect("locked");
        let recovering = {
            let paths = paths.clone();
            std::thread::spawn(move || paths.recover())
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            !recovering.is_finished(),
            "recovery blocked while the lock is held"
        );
        drop(held);
        assert_eq!(recovering.join().expect("joined").expect("recovered"), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
