//! Reading back what the files sink wrote: the identity of every record
//! in the Avro container files under a root — for the demo's check and
//! for `adpipe reconcile`, which count each event in the files the way an
//! analyst's engine would see them.
//!
//! Contract: only files in place are read (`<root>/<topic>/date=…/hour=…/
//! *.avro`); the `_adpipe` directory (markers, staged batches not yet put
//! in place) is skipped, as pyarrow and Spark skip it. A file that does not
//! read is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::record::{Identity, IdentityFields};

/// Per topic directory, the identity of every record in its Avro files
/// (one entry per record: an event written twice appears twice).
pub fn avro_identities(root: &Path) -> Result<BTreeMap<String, Vec<Identity>>, String> {
    let mut found: BTreeMap<String, Vec<Identity>> = BTreeMap::new();
    let topics = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(format!("{}: {error}", root.display())),
    };
    for topic in topics {
        let topic = topic.map_err(|error| format!("{}: {error}", root.display()))?;
        let name = topic.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') || !topic.path().is_dir() {
            continue;
        }
        let mut files = Vec::new();
        avro_files(&topic.path(), &mut files)?;
        let identities = found.entry(name).or_default();
        for file in files {
            read_file(&file, identities)?;
        }
    }
    Ok(found)
}

fn avro_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))? {
        let path = entry
            .map_err(|error| format!("{}: {error}", dir.display()))?
            .path();
        if path.is_dir() {
            avro_files(&path, files)?;
        } else if path
            .extension()
            .is_some_and(|extension| extension == "avro")
        {
            files.push(path);
        }
    }
    Ok(())
}

fn read_file(path: &Path, identities: &mut Vec<Identity>) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut reader = serde_avro_fast::object_container_file_encoding::Reader::from_slice(&bytes)
        .map_err(|error| format!("{}: not an Avro container file: {error}", path.display()))?;
    for fields in reader.deserialize::<IdentityFields>() {
        let fields = fields.map_err(|error| format!("{}: {error}", path.display()))?;
        let identity = Identity::from_fields(fields, None)
            .map_err(|error| format!("{}: {}", path.display(), error.message))?;
        identities.push(identity);
    }
    Ok(())
}
