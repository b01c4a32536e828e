//! The ground truth on disk (JSON), so `adpipe check` can compare an output
//! with a simulation run by another process, hours later.

use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use crate::GroundTruth;

/// Why a truth file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TruthFileError {
    /// The file could not be opened, written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a ground truth.
    #[error("{path}: not a ground-truth file ({source})")]
    Format {
        /// The file.
        path: String,
        /// The error.
        source: serde_json::Error,
    },
}

impl GroundTruth {
    /// Writes the truth to `path` as JSON.
    pub fn save(&self, path: &Path) -> Result<(), TruthFileError> {
        let io = |source| TruthFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = BufWriter::new(std::fs::File::create(path).map_err(io)?);
        serde_json::to_writer(&mut file, self).map_err(|source| TruthFileError::Format {
            path: path.display().to_string(),
            source,
        })?;
        file.flush().map_err(io)
    }

    /// Reads a truth written by [`GroundTruth::save`].
    pub fn load(path: &Path) -> Result<GroundTruth, TruthFileError> {
        let file = std::fs::File::open(path).map_err(|source| TruthFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_reader(BufReader::new(file)).map_err(|source| TruthFileError::Format {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{GroundTruth, Simulation};

    #[test]
    fn a_saved_truth_loads_back_equal_and_a_foreign_file_is_refused() {
        let (_, truth) = Simulation {
            impressions: 2_000,
            ..Simulation::default()
        }
        .generate();
        let dir = std::env::temp_dir().join(format!("adpipe-truth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("truth.json");
        truth.save(&path).expect("saved");
        let loaded = GroundTruth::load(&path).expect("loaded");
        assert_eq!(loaded.impressions, truth.impressions);
        assert_eq!(loaded.clicks, truth.clicks);
        assert_eq!(loaded.conversions, truth.conversions);
        assert_eq!(
            (loaded.published, loaded.duplicates),
            (truth.published, truth.duplicates)
        );

        std::fs::write(&path, "{\"something\": 1}").expect("written");
        let error = GroundTruth::load(&path).expect_err("not a truth");
        assert!(
            error.to_string().contains("not a ground-truth file"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
