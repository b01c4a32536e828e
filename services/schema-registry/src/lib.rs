//! A Confluent-compatible schema registry whose only storage is a compacted,
//! single-partition Kafka topic (like Confluent's `_schemas`).
//!
//! Contract:
//! - Ids and versions are decided by the order of records in the topic, so
//!   any number of instances on the same topic agree on them (model.rs), and
//!   a restarted instance rebuilds exactly the state it had (store.rs).
//! - The REST API is Confluent's: same paths, bodies, error codes and
//!   content type, so Confluent's own clients (and schema_registry_converter)
//!   work against it unchanged (http.rs).
//! - Only AVRO schemas, without references: that is all adpipe uses.
//! - With a write token, changes need it; without one, only loopback
//!   (access.rs). Bodies over the limit get a Confluent-shaped 413.
//! - `/metrics` as every service's: its requests by access and status,
//!   their time, the process's memory and CPU (metered.rs).
#![warn(missing_docs)]

pub mod access;
pub mod compat;
pub mod error;
mod http;
mod metered;
pub mod model;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{App, HttpServer, web};

pub use access::WriteAccess;
pub use compat::Compatibility;
pub use error::ApiError;
pub use service::Registry;
pub use store::{LogStore, StoreSettings};

/// Everything needed to run one registry instance.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// HTTP worker threads.
    pub workers: usize,
    /// Where schemas are stored.
    pub store: StoreSettings,
    /// Who may change it.
    pub access: WriteAccess,
    /// Longest request body taken, bytes.
    pub max_request_bytes: usize,
}

impl RegistrySettings {
    /// Settings for a registry on loopback (free port) over `bootstrap_servers`.
    pub fn local(bootstrap_servers: &str, topic: &str) -> Self {
        RegistrySettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            store: StoreSettings {
                bootstrap_servers: bootstrap_servers.to_owned(),
                topic: topic.to_owned(),
                replication: 1,
                startup_timeout: Duration::from_secs(30),
            },
            access: WriteAccess::default(),
            max_request_bytes: access::DEFAULT_BODY_LIMIT,
        }
    }
}

/// A started registry.
pub struct RunningRegistry {
    /// Where it listens.
    pub address: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningRegistry {
    /// Base URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops accepting requests, finishes the ones in flight and returns.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }

    /// Runs until the server stops (for the binary).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Binds `settings.listen`, loads the state from Kafka and starts serving.
/// Must run inside a tokio runtime.
pub async fn start(settings: RegistrySettings) -> Result<RunningRegistry, ApiError> {
    let listener = std::net::TcpListener::bind(settings.listen).map_err(|error| {
        ApiError::store(format!("cannot listen on {}: {error}", settings.listen))
    })?;
    start_on(listener, settings).await
}

/// [`start`] on a `listener` already bound (the binary binds first, so a
/// port in use stops it before it reads anything).
pub async fn start_on(
    listener: std::net::TcpListener,
    settings: RegistrySettings,
) -> Result<RunningRegistry, ApiError> {
    let store = LogStore::open(&settings.store).await?;
    let registry = web::Data::new(Registry::new(store));
    let access = settings.access.clone();
    let limit = settings.max_request_bytes;
    // Installed now: a request before the first scrape counts too.
    adpipe_runtime::telemetry::install_recorder();
    adpipe_runtime::telemetry::describe(&metered::METRICS);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(metered::count))
            .route(
                "/metrics",
                web::get().to(adpipe_runtime::telemetry::metrics_endpoint),
            )
            .app_data(registry.clone())
            .app_data(access.clone())
            .app_data(access::BodyLimit(limit))
            .app_data(web::PayloadConfig::new(limit))
            .configure(http::routes)
    })
    .workers(settings.workers.max(1))
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)
    .map_err(|error| ApiError::store(format!("cannot listen on {}: {error}", settings.listen)))?;
    let address = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| ApiError::store("server bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::info!(%address, "schema registry listening");
    Ok(RunningRegistry {
        address,
        handle,
        task,
    })
}
