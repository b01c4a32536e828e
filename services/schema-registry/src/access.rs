//! Who may change the registry, and how much a request may carry.
//!
//! Contract:
//! - With a write token set, every request that changes something
//!   (registering, deleting, setting compatibility) must carry it —
//!   `Authorization: Bearer <token>`, or HTTP Basic with the token as the
//!   password (any user name: what Confluent's clients send with
//!   `basic.auth.user.info`). Without it the answer is Confluent's 401; reads,
//!   lookups and compatibility checks stay open.
//! - Without a token every request may change the registry: allowed only
//!   on a loopback address unless the operator says so explicitly
//!   ([`WriteAccess::check_listen`]).
//! - A request body over the limit is answered with a Confluent-shaped 413
//!   (actix-web's own answer is plain text no client can read).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header::AUTHORIZATION;
use actix_web::web::Bytes;
use actix_web::{FromRequest, HttpRequest};
use adpipe_kafka_client::Secret;
use base64::Engine;

use crate::error::ApiError;

/// The registry's write token, if it has one.
#[derive(Debug, Clone, Default)]
pub struct WriteAccess {
    /// Requests that change something must carry it; `None`: anyone may.
    pub token: Option<Secret>,
    /// Accept no token on an address other than loopback.
    pub open_writes: bool,
}

impl WriteAccess {
    /// Refuses to serve writes to everyone who can reach `listen`: without
    /// a token only a loopback address is allowed, unless `open_writes`.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), String> {
        if self.token.is_none() && !self.open_writes && !listen.ip().is_loopback() {
            return Err(format!(
                "the registry would listen on {listen} with no write token: anyone who reaches \
                 it could change or delete schemas. Set ADPIPE_REGISTRY_TOKEN or \
                 ADPIPE_REGISTRY_TOKEN_FILE (its clients set the same), or pass --open-writes \
                 if the network alone guards it"
            ));
        }
        Ok(())
    }

    /// Whether `request` carries the token (always, without one).
    fn allows(&self, request: &HttpRequest) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(header) = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
        else {
            return false;
        };
        let offered = if let Some(bearer) = header.strip_prefix("Bearer ") {
            Some(bearer.trim().to_owned())
        } else if let Some(basic) = header.strip_prefix("Basic ") {
            base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .ok()
                .and_then(|decoded| String::from_utf8(decoded).ok())
                .and_then(|pair| {
                    pair.split_once(':')
                        .map(|(_, password)| password.to_owned())
                })
        } else {
            None
        };
        offered.is_some_and(|offered| same(offered.as_bytes(), token.expose().as_bytes()))
    }
}

/// Compares without stopping at the first difference, so the answer's
/// timing does not tell how much of a guess was right.
fn same(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

/// Proof that a request may change the registry: a handler that changes
/// something takes it, and a request without the token never reaches it.
pub struct MayWrite;

impl FromRequest for MayWrite {
    type Error = ApiError;
    type Future = std::future::Ready<Result<MayWrite, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let allowed = request
            .app_data::<WriteAccess>()
            .is_none_or(|access| access.allows(request));
        if !allowed {
            tracing::warn!(
                method = %request.method(),
                path = request.path(),
                peer = ?request.peer_addr(),
                "refused a change without the write token"
            );
        }
        std::future::ready(if allowed {
            Ok(MayWrite)
        } else {
            Err(ApiError::unauthorized())
        })
    }
}

/// Longest request body taken, bytes.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Default [`BodyLimit`]: actix-web's own, far above any Avro schema of
/// events and below a Kafka record's default limit (the store writes one).
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// A request body within the [`BodyLimit`].
pub struct Body(pub Bytes);

impl FromRequest for Body {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Body, ApiError>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = request
            .app_data::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |limit| limit.0);
        let bytes = Bytes::from_request(request, payload);
        Box::pin(async move {
            bytes
                .await
                .map(Body)
                .map_err(|error| match error.as_error::<PayloadError>() {
                    Some(PayloadError::Overflow) => ApiError::too_large(limit),
                    _ => ApiError::unreadable_body(error),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn access(token: Option<&str>) -> WriteAccess {
        WriteAccess {
            token: token.map(Secret::new),
            open_writes: false,
        }
    }

    #[test]
    fn a_write_needs_the_token_as_bearer_or_as_basic_password() {
        let guarded = access(Some("s3cret"));
        let with = |value: &str| {
            TestRequest::default()
                .insert_header((AUTHORIZATION, value))
                .to_http_request()
        };
        assert!(guarded.allows(&with("Bearer s3cret")));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret");
        assert!(guarded.allows(&with(&format!("Basic {basic}"))));
        assert!(!guarded.allows(&with("Bearer s3cre")));
        assert!(!guarded.allows(&with("Bearer s3cret2")));
        let wrong = base64::engine::general_purpose::STANDARD.encode("s3cret:nope");
        assert!(!guarded.allows(&with(&format!("Basic {wrong}"))));
        assert!(!guarded.allows(&with("s3cret")));
        assert!(!guarded.allows(&TestRequest::default().to_http_request()));
        // No token: anyone may.
        assert!(access(None).allows(&TestRequest::default().to_http_request()));
    }

    #[test]
    fn no_token_is_refused_beyond_loopback_unless_said_explicitly() {
        let anywhere: SocketAddr = "0.0.0.0:8081".parse().expect("address");
        let loopback: SocketAddr = "127.0.0.1:8081".parse().expect("address");
        let error = access(None).check_listen(anywhere).expect_err("refused");
        assert!(error.contains("ADPIPE_REGISTRY_TOKEN"), "{error}");
        assert!(access(None).check_listen(loopback).is_ok());
        assert!(access(Some("t")).check_listen(anywhere).is_ok());
        let open = WriteAccess {
            token: None,
            open_writes: true,
        };
        assert!(open.check_listen(anywhere).is_ok());
    }
}
