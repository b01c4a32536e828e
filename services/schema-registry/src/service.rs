//! Registry operations: validation, compatibility, and the log writes that
//! carry them out. The HTTP layer only translates to and from JSON.

use apache_avro::Schema;

use crate::compat::Compatibility;
use crate::error::ApiError;
use crate::model::{ConfigValue, LogRecord, SchemaValue, VersionEntry, canonicalize};
use crate::store::LogStore;

/// How often a registration retries after losing a race to another instance.
const MAX_REGISTER_ATTEMPTS: usize = 8;

/// A version as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionView {
    /// Subject.
    pub subject: String,
    /// Version.
    pub version: i32,
    /// Global id.
    pub id: u32,
    /// Schema text.
    pub schema: String,
}

/// Which version of a subject a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector {
    /// The highest live version.
    Latest,
    /// A specific version number.
    Number(i32),
}

impl VersionSelector {
    /// Parses Confluent's `{version}` path segment.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        if text == "latest" || text == "-1" {
            return Ok(VersionSelector::Latest);
        }
        match text.parse::<i32>() {
            Ok(number) if number >= 1 => Ok(VersionSelector::Number(number)),
            _ => Err(ApiError::invalid_version(text)),
        }
    }
}

/// The registry: a [`LogStore`] plus the rules of the API.
pub struct Registry {
    store: LogStore,
    // Writes from this instance go one at a time, so it never races itself;
    // races with other instances are settled by the log (see model.rs).
    write_lock: tokio::sync::Mutex<()>,
}

impl Registry {
    /// A registry over an opened store.
    pub fn new(store: LogStore) -> Self {
        Registry {
            store,
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs a read; if it finds nothing (404), runs it again once this
    /// instance has read the log to its end. So an instance never answers
    /// "not found" for a schema another instance has already acknowledged
    /// (a producer registering through one instance, a consumer looking the
    /// id up through another a moment later), and a hit costs nothing more.
    pub async fn read<T>(
        &self,
        read: impl Fn(&Self) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match read(self) {
            Err(error) if error.status == 404 => {
                self.store.catch_up().await?;
                read(self)
            }
            answer => answer,
        }
    }

    /// `GET /schemas/ids/{id}`.
    pub fn schema_by_id(&self, id: u32) -> Result<String, ApiError> {
        let state = self.store.state().read();
        state
            .schema(id)
            .map(|text| text.to_string())
            .ok_or_else(ApiError::schema_not_found)
    }

    /// `GET /schemas/ids/{id}/versions`.
    pub fn usages(&self, id: u32) -> Result<Vec<(String, i32)>, ApiError> {
        let state = self.store.state().read();
        if state.schema(id).is_none() {
            return Err(ApiError::schema_not_found());
        }
        Ok(state.usages(id))
    }

    /// `GET /subjects`.
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.store.state().read().subjects(deleted)
    }

    /// `GET /subjects/{subject}/versions`.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<i32>, ApiError> {
        let state = self.store.state().read();
        Ok(state
            .versions(subject, deleted)?
            .into_iter()
            .map(|(version, _)| version)
            .collect())
    }

    /// `GET /subjects/{subject}/versions/{version}`.
    pub fn version(
        &self,
        subject: &str,
        selector: VersionSelector,
        deleted: bool,
    ) -> Result<VersionView, ApiError> {
        let state = self.store.state().read();
        let versions = state.versions(subject, deleted)?;
        let (version, entry) = match selector {
            VersionSelector::Latest => versions.last().copied(),
            VersionSelector::Number(number) => versions
                .iter()
                .copied()
                .find(|(version, _)| *version == number),
        }
        .ok_or_else(|| match selector {
            VersionSelector::Number(number) => ApiError::version_not_found(subject, number),
            VersionSelector::Latest => ApiError::subject_not_found(subject),
        })?;
        let schema = state
            .schema(entry.id)
            .map(|text| text.to_string())
            .unwrap_or_default();
        Ok(VersionView {
            subject: subject.to_owned(),
            version,
            id: entry.id,
            schema,
        })
    }

    /// `POST /subjects/{subject}`: finds a schema already under the subject.
    pub fn lookup(
        &self,
        subject: &str,
        schema: &str,
        deleted: bool,
    ) -> Result<VersionView, ApiError> {
        let canonical = validate(schema)?.0;
        let state = self.store.state().read();
        let versions = state.versions(subject, deleted)?;
        let id = state
            .id_of(&canonical)
            .ok_or_else(ApiError::schema_not_found)?;
        let (version, _) = versions
            .iter()
            .rev()
            .find(|(_, entry)| entry.id == id)
            .ok_or_else(ApiError::schema_not_found)?;
        Ok(VersionView {
            subject: subject.to_owned(),
            version: *version,
            id,
            schema: canonical,
        })
    }

    /// `POST /subjects/{subject}/versions`: registers a schema (or returns the
    /// id it already has under the subject) after the compatibility check.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, ApiError> {
        let (canonical, parsed) = validate(schema)?;
        let _writer = self.write_lock.lock().await;
        for _ in 0..MAX_REGISTER_ATTEMPTS {
            let value = {
                let state = self.store.state().read();
                let live = state.versions(subject, false).unwrap_or_default();
                if let Some(id) = state.id_of(&canonical)
                    && live.iter().any(|(_, entry)| entry.id == id)
                {
                    return Ok(id);
                }
                let level = state.effective_compatibility(Some(subject));
                let history = parse_history(&state, &live)?;
                let violations = level.check(&parsed, &history);
                if !violations.is_empty() {
                    return Err(ApiError::incompatible(&violations));
                }
                let next_version = state
                    .all_versions(subject)
                    .and_then(|versions| versions.keys().next_back().copied())
                    .unwrap_or(0)
                    + 1;
                SchemaValue {
                    subject: subject.to_owned(),
                    version: next_version,
                    id: state.id_of(&canonical).unwrap_or_else(|| state.next_id()),
                    schema: canonical.clone(),
                    deleted: false,
                }
            };
            let record = LogRecord::Schema(subject.to_owned(), value.version, Some(value.clone()));
            self.store.append(&record).await?;
            let winner = self.winner_of(subject, value.version);
            if winner.as_ref().map(|winner| winner.id) == Some(value.id) {
                return Ok(value.id);
            }
            // Another instance won this version or id. Re-append the winner
            // under the contested key, so log compaction (which keeps the last
            // record per key) keeps the winner and not our rejected claim.
            if let Some(winner) = winner {
                let reassert = LogRecord::Schema(subject.to_owned(), value.version, Some(winner));
                self.store.append(&reassert).await?;
            }
        }
        Err(ApiError::store(
            "gave up registering after repeated races with other instances",
        ))
    }

    fn winner_of(&self, subject: &str, version: i32) -> Option<SchemaValue> {
        let state = self.store.state().read();
        let entry = state.all_versions(subject)?.get(&version)?;
        Some(SchemaValue {
            subject: subject.to_owned(),
            version,
            id: entry.id,
            schema: state.schema(entry.id)?.to_string(),
            deleted: entry.deleted,
        })
    }

    /// `POST /compatibility/subjects/{subject}/versions[/{version}]`.
    /// `selector` `None` checks against every version the level covers.
    pub fn check_compatibility(
        &self,
        subject: &str,
        selector: Option<VersionSelector>,
        schema: &str,
    ) -> Result<Vec<String>, ApiError> {
        let (_, parsed) = validate(schema)?;
        let state = self.store.state().read();
        let level = state.effective_compatibility(Some(subject));
        let live = match (selector, state.versions(subject, false)) {
            (Some(_), Err(error)) => return Err(error),
            (None, Err(_)) => Vec::new(),
            (None, Ok(live)) => live,
            (Some(VersionSelector::Latest), Ok(live)) => live.last().copied().into_iter().collect(),
            (Some(VersionSelector::Number(number)), Ok(live)) => {
                let found: Vec<_> = live
                    .into_iter()
                    .filter(|(version, _)| *version == number)
                    .collect();
                if found.is_empty() {
                    return Err(ApiError::version_not_found(subject, number));
                }
                found
            }
        };
        let history = parse_history(&state, &live)?;
        Ok(level.check(&parsed, &history))
    }

    /// `DELETE /subjects/{subject}/versions/{version}`.
    pub async fn delete_version(
        &self,
        subject: &str,
        selector: VersionSelector,
        permanent: bool,
    ) -> Result<i32, ApiError> {
        let _writer = self.write_lock.lock().await;
        let target = {
            let state = self.store.state().read();
            let all = state
                .all_versions(subject)
                .ok_or_else(|| ApiError::subject_not_found(subject))?;
            let found = match selector {
                VersionSelector::Latest => all
                    .iter()
                    .rev()
                    .find(|(_, entry)| !entry.deleted || permanent),
                VersionSelector::Number(number) => all.get_key_value(&number),
            };
            let (version, entry) = found.ok_or_else(|| match selector {
                VersionSelector::Number(number) => ApiError::version_not_found(subject, number),
                VersionSelector::Latest => ApiError::subject_not_found(subject),
            })?;
            match (permanent, entry.deleted) {
                (false, true) => return Err(ApiError::version_soft_deleted(subject, *version)),
                (true, false) => return Err(ApiError::version_not_soft_deleted(subject, *version)),
                _ => {}
            }
            (
                *version,
                entry.clone(),
                state.schema(entry.id).map(|text| text.to_string()),
            )
        };
        let (version, entry, schema) = target;
        self.store
            .append(&deletion(subject, version, &entry, schema, permanent))
            .await?;
        Ok(version)
    }

    /// `DELETE /subjects/{subject}`: soft-deletes every live version, or
    /// hard-deletes a subject whose versions are all soft-deleted.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<i32>, ApiError> {
        let _writer = self.write_lock.lock().await;
        let targets: Vec<(i32, VersionEntry, Option<String>)> = {
            let state = self.store.state().read();
            let all = state
                .all_versions(subject)
                .ok_or_else(|| ApiError::subject_not_found(subject))?;
            let any_live = all.values().any(|entry| !entry.deleted);
            if permanent && any_live {
                return Err(ApiError::subject_not_soft_deleted(subject));
            }
            if !permanent && !any_live {
                return Err(ApiError::subject_soft_deleted(subject));
            }
            all.iter()
                .filter(|(_, entry)| permanent || !entry.deleted)
                .map(|(version, entry)| {
                    (
                        *version,
                        entry.clone(),
                        state.schema(entry.id).map(|text| text.to_string()),
                    )
                })
                .collect()
        };
        let mut deleted = Vec::with_capacity(targets.len());
        for (version, entry, schema) in targets {
            self.store
                .append(&deletion(subject, version, &entry, schema, permanent))
                .await?;
            deleted.push(version);
        }
        Ok(deleted)
    }

    /// `GET /config[/{subject}]`: the level; `None` when a subject has none
    /// of its own and `default_to_global` is false.
    pub fn compatibility(
        &self,
        subject: Option<&str>,
        default_to_global: bool,
    ) -> Result<Compatibility, ApiError> {
        let state = self.store.state().read();
        match subject {
            Some(subject) if !default_to_global => state
                .subject_compatibility(subject)
                .ok_or_else(|| ApiError::subject_compatibility_not_configured(subject)),
            other => Ok(state.effective_compatibility(other)),
        }
    }

    /// `PUT /config[/{subject}]`.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<(), ApiError> {
        let _writer = self.write_lock.lock().await;
        let record = LogRecord::Config(
            subject.map(str::to_owned),
            Some(ConfigValue {
                compatibility_level: level,
            }),
        );
        self.store.append(&record).await
    }

    /// `DELETE /config[/{subject}]`: returns the level that was removed.
    pub async fn delete_compatibility(
        &self,
        subject: Option<&str>,
    ) -> Result<Compatibility, ApiError> {
        let previous = self.compatibility(subject, subject.is_none())?;
        let _writer = self.write_lock.lock().await;
        self.store
            .append(&LogRecord::Config(subject.map(str::to_owned), None))
            .await?;
        Ok(previous)
    }
}

fn deletion(
    subject: &str,
    version: i32,
    entry: &VersionEntry,
    schema: Option<String>,
    permanent: bool,
) -> LogRecord {
    if permanent {
        return LogRecord::Schema(subject.to_owned(), version, None);
    }
    LogRecord::Schema(
        subject.to_owned(),
        version,
        Some(SchemaValue {
            subject: subject.to_owned(),
            version,
            id: entry.id,
            schema: schema.unwrap_or_default(),
            deleted: true,
        }),
    )
}

/// Parses and canonicalizes a submitted schema.
fn validate(schema: &str) -> Result<(String, Schema), ApiError> {
    let canonical = canonicalize(schema)?;
    let parsed = Schema::parse_str(&canonical).map_err(ApiError::invalid_schema)?;
    Ok((canonical, parsed))
}

fn parse_history(
    state: &crate::model::RegistryState,
    versions: &[(i32, &VersionEntry)],
) -> Result<Vec<(i32, Schema)>, ApiError> {
    versions
        .iter()
        .map(|(version, entry)| {
            let text = state
                .schema(entry.id)
                .ok_or_else(ApiError::schema_not_found)?;
            let parsed = Schema::parse_str(text).map_err(ApiError::store)?;
            Ok((*version, parsed))
        })
        .collect()
}
