//! Waiting for a store at start-up: a loader started while its store is
//! down or still starting (a restart during an outage, containers started
//! together) tries its setup again with backoff instead of exiting, and
//! logs each failed attempt so an operator sees why it is not ready.
//!
//! Contract: an error the store may get over (unreachable, a timeout, 5xx,
//! 429) is tried again, up to [`SETUP_PATIENCE`]; any other (a refused
//! template, bad credentials) fails at once, as before.

use std::time::{Duration, Instant};

/// How long a loader waits for its store before it gives up (exit 1).
pub const SETUP_PATIENCE: Duration = Duration::from_secs(300);

/// Why a setup attempt failed.
#[derive(Debug)]
pub struct SetupFailure {
    /// Whether trying again may succeed.
    pub transient: bool,
    /// The store's words.
    pub message: String,
}

impl SetupFailure {
    /// A failure a later attempt may get over.
    pub fn transient(message: String) -> Self {
        SetupFailure {
            transient: true,
            message,
        }
    }
    /// A failure no attempt gets over.
    pub fn permanent(message: String) -> Self {
        SetupFailure {
            transient: false,
            message,
        }
    }
    /// An HTTP status: 5xx and 429 are the store's passing trouble.
    pub fn from_status(status: reqwest::StatusCode, message: String) -> Self {
        SetupFailure {
            transient: status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS,
            message,
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `patience` passed
/// (backoff 0.5 s doubling to 10 s).
pub async fn until_ready<T, F, Fut>(
    store: &str,
    patience: Duration,
    mut attempt: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SetupFailure>>,
{
    let deadline = Instant::now() + patience;
    let mut backoff = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure) if failure.transient && Instant::now() + backoff < deadline => {
                tracing::warn!(
                    store,
                    error = %failure.message,
                    retry_in = ?backoff,
                    "store not ready; setting it up again"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(failure) => return Err(failure.message),
        }
    }
}

/// [`until_ready`] with [`SETUP_PATIENCE`], from the synchronous start-up
/// on a multi-threaded runtime (`block_in_place`): a store's set-up
/// before the worker starts.
pub fn block_until_ready<T, F, Fut>(store: &str, attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SetupFailure>>,
{
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| runtime.block_on(until_ready(store, SETUP_PATIENCE, attempt)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_transient_failure_is_tried_again_and_a_permanent_one_is_not() {
        let attempts = AtomicU32::new(0);
        let ready = until_ready("test", Duration::from_secs(30), || async {
            match attempts.fetch_add(1, Ordering::Relaxed) {
                0 | 1 => Err(SetupFailure::transient("connection refused".into())),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(ready, Ok(7));
        assert_eq!(attempts.load(Ordering::Relaxed), 3);

        let attempts = AtomicU32::new(0);
        let refused: Result<(), String> = until_ready("test", Duration::from_secs(30), || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err(SetupFailure::from_status(
                reqwest::StatusCode::BAD_REQUEST,
                "mapper_parsing_exception".into(),
            ))
        })
        .await;
        assert_eq!(refused, Err("mapper_parsing_exception".to_owned()));
        assert_eq!(
            attempts.load(Ordering::Relaxed),
            1,
            "a refusal is not tried again"
        );
    }

    #[tokio::test]
    async fn it_gives_up_after_its_patience() {
        let started = Instant::now();
        let result: Result<(), String> = until_ready("test", Duration::from_secs(2), || async {
            Err(SetupFailure::transient("connection refused".into()))
        })
        .await;
        assert_eq!(result, Err("connection refused".to_owned()));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
