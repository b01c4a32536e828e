//! The registry's `/metrics`: its requests — reads and writes, by status —
//! and how long they took, beside the process's own metrics (the runtime's
//! telemetry, as every service serves them). Paths are not labels: a
//! subject's name would make one series per subject.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use adpipe_runtime::telemetry::{Described, MetricKind};

/// Requests answered.
const REQUESTS: &str = "adpipe_registry_requests_total";
/// Their time (a summary: quantiles per instance).
const REQUEST_SECONDS: &str = "adpipe_registry_request_seconds";

/// Declared at the start, so /metrics names them before the first request.
pub const METRICS: [Described; 2] = [
    Described {
        name: REQUESTS,
        kind: MetricKind::Counter,
        help: "Requests answered, by access (read, write) and status.",
    },
    Described {
        name: REQUEST_SECONDS,
        kind: MetricKind::Summary,
        help: "Time to answer a request, seconds, by access.",
    },
];

/// Counts and times every request but the scrapes themselves.
pub async fn count(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let scrape = request.path() == "/metrics";
    let access = match *request.method() {
        Method::GET | Method::HEAD => "read",
        _ => "write",
    };
    let started = Instant::now();
    let response = next.call(request).await?;
    if !scrape {
        let status = response.status().as_u16().to_string();
        metrics::counter!(REQUESTS, "access" => access, "status" => status).increment(1);
        metrics::histogram!(REQUEST_SECONDS, "access" => access)
            .record(started.elapsed().as_secs_f64());
    }
    Ok(response)
}
