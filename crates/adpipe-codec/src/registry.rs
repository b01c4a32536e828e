//! A small client for Confluent's schema-registry REST API.
//!
//! Works against adpipe's own registry, Confluent's, Karapace, Apicurio's
//! Confluent-compatible API and Redpanda's: it only uses the core endpoints
//! every one of them serves. It never retries by itself; callers decide from
//! [`RegistryError::disposition`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Disposition;
use crate::wire::SchemaId;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Confluent error code: schema not found.
pub const SCHEMA_NOT_FOUND: i64 = 40403;

/// A failed registry call.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No answer (connection refused, timeout, reset).
    #[error("registry at {url} unreachable: {source}")]
    Unreachable {
        /// Base URL.
        url: String,
        /// Transport error.
        source: reqwest::Error,
    },
    /// The registry answered with a Confluent error body.
    #[error("registry refused ({status}, error code {error_code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Confluent error code, e.g. 40403 or 409.
        error_code: i64,
        /// Registry message.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected registry answer: {0}")]
    Protocol(String),
}

impl RegistryError {
    /// Whether to retry, dead-letter or stop.
    pub fn disposition(&self) -> Disposition {
        match self {
            RegistryError::Unreachable { .. } => Disposition::Transient,
            // 408: the registry (or its HTTP server, when starved of CPU)
            // timed out reading the request; 429: rate-limited; 5xx: its
            // own failure. All pass: retry, never dead-letter a record for
            // them (a merger crash test on a loaded machine dead-lettered
            // five good records on 408s before this).
            RegistryError::Refused { status, .. }
                if *status >= 500 || *status == 429 || *status == 408 =>
            {
                Disposition::Transient
            }
            RegistryError::Refused { .. } => Disposition::Poison,
            RegistryError::Protocol(_) => Disposition::Transient,
        }
    }

    /// The Confluent error code, when the registry gave one.
    pub fn error_code(&self) -> Option<i64> {
        match self {
            RegistryError::Refused { error_code, .. } => Some(*error_code),
            _ => None,
        }
    }
}

/// A schema as a subject holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisteredSchema {
    /// Subject name.
    pub subject: String,
    /// Global schema id.
    pub id: SchemaId,
    /// Version within the subject.
    pub version: i32,
    /// Schema text.
    pub schema: String,
}

#[derive(Serialize)]
struct SchemaBody<'a> {
    schema: &'a str,
}

#[derive(Deserialize)]
struct IdBody {
    id: SchemaId,
}

#[derive(Deserialize)]
struct SchemaText {
    schema: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: i64,
    message: String,
}

/// Client for one registry base URL.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base_url: String,
    http: reqwest::Client,
    /// `Bearer <token>`, marked sensitive (its `Debug` hides it).
    authorization: Option<reqwest::header::HeaderValue>,
}

impl RegistryClient {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base_url: &str) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            // Below the servers' keep-alive (actix-web's 5 s): a pooled
            // connection the server is closing is not reused.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .map_err(|error| RegistryError::Protocol(format!("http client: {error}")))?;
        Ok(RegistryClient {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
            authorization: None,
        })
    }

    /// Sends the registry's write token (`Authorization: Bearer`) with
    /// every request: a registry that has one refuses changes (registering
    /// a schema) without it. `None` leaves the client as it is.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Self, RegistryError> {
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| {
                    RegistryError::Protocol(
                        "the registry token holds characters a header cannot".to_owned(),
                    )
                })?;
            value.set_sensitive(true);
            self.authorization = Some(value);
        }
        Ok(self)
    }

    /// The base URL this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /schemas/ids/{id}`: the schema text for a global id.
    pub async fn schema_by_id(&self, id: SchemaId) -> Result<String, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let body: SchemaText = self.send(self.http.get(url)).await?;
        Ok(body.schema)
    }

    /// `POST /subjects/{subject}/versions`: registers (or finds) a schema and
    /// returns its global id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<SchemaId, RegistryError> {
        let url = format!(
            "{}/subjects/{}/versions",
            self.base_url,
            encode_path(subject)
        );
        let body: IdBody = self
            .send(self.http.post(url).json(&SchemaBody { schema }))
            .await?;
        Ok(body.id)
    }

    /// `POST /subjects/{subject}`: finds an already registered schema.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<RegisteredSchema, RegistryError> {
        let url = format!("{}/subjects/{}", self.base_url, encode_path(subject));
        self.send(self.http.post(url).json(&SchemaBody { schema }))
            .await
    }

    /// `GET /subjects/{subject}/versions/latest`.
    pub async fn latest(&self, subject: &str) -> Result<RegisteredSchema, RegistryError> {
        let url = format!(
            "{}/subjects/{}/versions/latest",
            self.base_url,
            encode_path(subject)
        );
        self.send(self.http.get(url)).await
    }

    /// `GET /subjects`.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        self.send(self.http.get(format!("{}/subjects", self.base_url)))
            .await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, RegistryError> {
        let unreachable = |source| RegistryError::Unreachable {
            url: self.base_url.clone(),
            source,
        };
        let mut request = request.header("Accept", CONTENT_TYPE);
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization.clone());
        }
        // Every call is idempotent (a read, or registering a schema the
        // registry keeps once): one more try when the request never got an
        // answer (a pooled connection closed under it).
        let retry = request.try_clone();
        let response = match request.send().await {
            Err(error) if (error.is_request() || error.is_connect()) && !error.is_timeout() => {
                match retry {
                    Some(retry) => retry.send().await.map_err(unreachable)?,
                    None => return Err(unreachable(error)),
                }
            }
            other => other.map_err(unreachable)?,
        };
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|error| {
                RegistryError::Protocol(format!("{error} in {}", String::from_utf8_lossy(&bytes)))
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(RegistryError::Refused {
                status: status.as_u16(),
                error_code: body.error_code,
                message: body.message,
            }),
            Err(_) => Err(RegistryError::Refused {
                status: status.as_u16(),
                error_code: i64::from(status.as_u16()),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }
}

/// Percent-encodes a subject for use as one path segment.
fn encode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_path_encoded() {
        assert_eq!(
            encode_path("dc1.impressions-value"),
            "dc1.impressions-value"
        );
        assert_eq!(encode_path("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn server_errors_are_transient_and_client_errors_poison() {
        let refused = |status| RegistryError::Refused {
            status,
            error_code: 50001,
            message: String::new(),
        };
        assert_eq!(refused(503).disposition(), Disposition::Transient);
        assert_eq!(refused(408).disposition(), Disposition::Transient);
        assert_eq!(refused(429).disposition(), Disposition::Transient);
        assert_eq!(refused(404).disposition(), Disposition::Poison);
        assert_eq!(refused(422).disposition(), Disposition::Poison);
    }
}
