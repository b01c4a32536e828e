//! Small helpers for the state files every backend writes: a reader of
//! length-prefixed fields that fails on truncation, and an atomic write
//! (a crash leaves the old file or the new one, never half of one).

use std::io::Write;
use std::path::Path;

/// Reads fields in order, failing on truncation.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    /// The next `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        let slice = self
            .bytes
            .get(self.at..self.at.saturating_add(len))
            .ok_or("truncated")?;
        self.at += len;
        Ok(slice)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        self.take(N)?.try_into().map_err(|_| "truncated")
    }

    /// A u32 little-endian length, then that many bytes.
    pub fn blob(&mut self) -> Result<&'a [u8], &'static str> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        self.take(len)
    }
}

/// Writes `bytes` to `path` atomically: a crash leaves the old file or the
/// new one, never half of one.
pub fn store_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    if let Ok(directory) = std::fs::File::open(dir) {
        let _ = directory.sync_all(); // make the rename durable
    }
    Ok(())
}
