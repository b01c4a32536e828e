//! Errors in Confluent's shape: an HTTP status plus an `error_code`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// Confluent's content type for every response body.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// An error answered to a client, with Confluent's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (error code {error_code})")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Confluent error code.
    pub error_code: u32,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    fn new(status: u16, error_code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error_code,
            message: message.into(),
        }
    }

    /// 40401
    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(404, 40401, format!("Subject '{subject}' not found."))
    }
    /// 40402
    pub fn version_not_found(subject: &str, version: i32) -> Self {
        Self::new(
            404,
            40402,
            format!("Version {version} not found for subject '{subject}'."),
        )
    }
    /// 40403
    pub fn schema_not_found() -> Self {
        Self::new(404, 40403, "Schema not found")
    }
    /// 40404
    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            404,
            40404,
            format!(
                "Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
            ),
        )
    }
    /// 40405
    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            404,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }
    /// 40406
    pub fn version_not_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            404,
            40406,
            format!(
                "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
            ),
        )
    }
    /// 40407
    pub fn version_soft_deleted(subject: &str, version: i32) -> Self {
        Self::new(
            404,
            40407,
            format!(
                "Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"
            ),
        )
    }
    /// 40408
    pub fn subject_compatibility_not_configured(subject: &str) -> Self {
        Self::new(
            404,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }
    /// 409
    pub fn incompatible(messages: &[String]) -> Self {
        Self::new(
            409,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject; details: [{}]",
                messages.join("; ")
            ),
        )
    }
    /// 42201
    pub fn invalid_schema(reason: impl std::fmt::Display) -> Self {
        Self::new(422, 42201, format!("Invalid schema: {reason}"))
    }
    /// 42202
    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            422,
            42202,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }
    /// 42203
    pub fn invalid_compatibility(level: &str) -> Self {
        Self::new(
            422,
            42203,
            format!(
                "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive: {level}"
            ),
        )
    }
    /// 422 for a body that is not the JSON the endpoint takes.
    pub fn unprocessable(reason: impl std::fmt::Display) -> Self {
        Self::new(422, 422, format!("Unprocessable entity: {reason}"))
    }
    /// 401, as Confluent's registry answers a request without valid
    /// credentials: a change asked for without the registry's write token.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            401,
            "Unauthorized: changing the registry needs its write token \
             (Authorization: Bearer <token>, or Basic with the token as password)",
        )
    }
    /// 413 for a body over the registry's limit (actix-web alone would
    /// answer in plain text, which Confluent's clients cannot read).
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            413,
            format!(
                "Request body larger than the registry's limit of {limit} bytes \
                 (--max-request-bytes, ADPIPE_REGISTRY_MAX_REQUEST_BYTES)"
            ),
        )
    }
    /// 400 for a body that could not be read at all.
    pub fn unreadable_body(reason: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            400,
            format!("Could not read the request body: {reason}"),
        )
    }
    /// 50001
    pub fn store(reason: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            50001,
            format!("Error in the backend datastore: {reason}"),
        )
    }
    /// 50002
    pub fn timeout(reason: impl std::fmt::Display) -> Self {
        Self::new(500, 50002, format!("Operation timed out: {reason}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .content_type(CONTENT_TYPE)
            .body(
                serde_json::json!({"error_code": self.error_code, "message": self.message})
                    .to_string(),
            )
    }
}
