//! Starting and stopping a worker: the consumer thread, the producer, the
//! actors and the HTTP endpoints, wired together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use adpipe_codec::Codec;
use rdkafka::consumer::Consumer;
use tracing::info;

use crate::config::WorkerSettings;
use crate::consumer::{WorkerContext, create_consumer, poll_loop};
use crate::producer::{OutputProducer, ProducerSetup, run_followups};
use crate::step::StepFactory;
use crate::task::{Stopper, TaskEnv};
use crate::telemetry::{AdminRoutes, Health, serve};

/// Why a worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Kafka client setup failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The cluster refused this client: its TLS or SASL settings
    /// (`[kafka.security]`) are wrong. Never retried: waiting cannot help.
    #[error("{hint}: {0}", hint = adpipe_kafka_client::REFUSED_HINT)]
    Refused(rdkafka::error::KafkaError),
    /// The HTTP endpoints could not bind (exit 2: a setting that cannot work).
    #[error("http.listen {0}: {1}")]
    Http(SocketAddr, std::io::Error),
    /// The registry client could not be built.
    #[error("schema registry: {0}")]
    Registry(#[from] adpipe_codec::RegistryError),
    /// A fatal error stopped the worker (the reason says which record).
    #[error("stopped: {0}")]
    Fatal(String),
    /// A service could not set itself up (its state, its clients).
    #[error("setup: {0}")]
    Setup(String),
    /// Topics it needs are missing or not co-partitioned; nothing started.
    #[error("refusing to start, the topics do not fit:\n  - {}", .0.join("\n  - "))]
    Topics(Vec<String>),
}

/// A running worker.
pub struct WorkerHandle {
    stop: Arc<AtomicBool>,
    stopper: Arc<Stopper>,
    consumer_thread: Option<std::thread::JoinHandle<()>>,
    producer: Arc<OutputProducer>,
    http: actix_web::dev::ServerHandle,
    /// Where /metrics, /livez and /readyz are served.
    pub http_address: SocketAddr,
    /// Liveness and readiness.
    pub health: Arc<Health>,
    revoke_deadline: Duration,
}

/// Starts a worker for `settings`, building a step per assigned partition
/// with `factory`. Must be called inside a multi-threaded tokio runtime.
pub fn start<F: StepFactory>(
    settings: WorkerSettings,
    factory: F,
) -> Result<WorkerHandle, WorkerError> {
    start_with_routes(settings, factory, None)
}

/// [`start`], with the service's own `routes` on the admin server.
pub fn start_with_routes<F: StepFactory>(
    settings: WorkerSettings,
    factory: F,
    routes: Option<AdminRoutes>,
) -> Result<WorkerHandle, WorkerError> {
    // The admin port first: in use, nothing else is started (no client, no
    // producer), and the error names the address.
    let health = Arc::new(Health::default());
    let (http_address, http) = serve(settings.http_listen, Arc::clone(&health), routes)
        .map_err(|error| WorkerError::Http(settings.http_listen, error))?;
    start_serving(settings, factory, health, http_address, http.clone()).inspect_err(|_| {
        tokio::spawn(http.stop(false));
    })
}

/// The rest of [`start_with_routes`], its admin server already up.
fn start_serving<F: StepFactory>(
    settings: WorkerSettings,
    factory: F,
    health: Arc<Health>,
    http_address: SocketAddr,
    http: actix_web::dev::ServerHandle,
) -> Result<WorkerHandle, WorkerError> {
    let problems = crate::topics::check(&settings).map_err(|error| {
        if adpipe_kafka_client::refused(&error) {
            WorkerError::Refused(error)
        } else {
            WorkerError::Kafka(error)
        }
    })?;
    if !problems.is_empty() {
        return Err(WorkerError::Topics(problems));
    }
    let (producer, followups) = OutputProducer::new(&ProducerSetup {
        service: &settings.service,
        bootstrap_servers: &settings.kafka.bootstrap_servers,
        security: &settings.kafka.security,
        dead_letter_topic: &settings.dead_letter_topic,
        overrides: &settings.kafka.producer,
    })?;
    let producer = Arc::new(producer);
    tokio::spawn(run_followups(Arc::clone(&producer), followups));
    let codec = match settings.registry_client() {
        Some(client) => Some(Arc::new(Codec::new(client?))),
        None => None,
    };
    let stopper = Arc::new(Stopper::default());
    let revoke_deadline = settings.revoke_deadline;
    let topics = settings.input_topics();
    let env = Arc::new(TaskEnv {
        settings,
        producer: Arc::clone(&producer),
        codec,
    });
    let context = WorkerContext::new(
        env,
        Arc::new(factory),
        tokio::runtime::Handle::current(),
        Arc::clone(&stopper),
        Arc::clone(&health),
    );
    let consumer = create_consumer(context)?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    let stop = Arc::new(AtomicBool::new(false));
    let consumer_thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("adpipe-consumer".to_owned())
            .spawn(move || poll_loop(consumer, stop))
            .map_err(|error| {
                WorkerError::Fatal(format!("cannot start the consumer thread: {error}"))
            })?
    };
    info!(%http_address, ?topics, "worker started");
    Ok(WorkerHandle {
        stop,
        stopper,
        consumer_thread: Some(consumer_thread),
        producer,
        http,
        http_address,
        health,
        revoke_deadline,
    })
}

impl WorkerHandle {
    /// Waits until the worker stops by itself (a fatal error) and returns it.
    pub async fn stopped(&self) -> String {
        loop {
            if self.stopper.is_stopped() {
                return self.stopper.reason().unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How long a graceful stop may take: the tasks' drain (revoke
    /// deadline and the reply grace), the final commit and the producer's
    /// flush — within an orchestrator's usual 30 s at the default 15 s
    /// deadline.
    pub fn stop_limit(&self) -> Duration {
        self.revoke_deadline + Duration::from_secs(10)
    }

    /// Graceful stop (SIGTERM): drain partitions, commit what is done, flush.
    pub async fn stop(mut self) -> Result<(), WorkerError> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.consumer_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let producer = Arc::clone(&self.producer);
        let deadline = self.revoke_deadline;
        let _ = tokio::task::spawn_blocking(move || producer.flush(deadline)).await;
        self.http.stop(true).await;
        match self.stopper.reason() {
            Some(reason) => Err(WorkerError::Fatal(reason)),
            None => Ok(()),
        }
    }
}

/// SIGTERM or Ctrl-C, listened for from before the worker starts. One that
/// comes while the service is still setting up (a loader waiting for its
/// store, a worker waiting for Kafka) ends the process at once with status
/// 0: nothing taken from Kafka has been acknowledged to anyone, so nothing
/// is lost and the next instance starts from the last commit. Without it
/// the signal's default action killed the process — not a clean exit, as
/// an orchestrator or the chaos harness sees it.
pub struct StopRequest {
    requested: tokio::sync::watch::Receiver<bool>,
    worker_started: Arc<AtomicBool>,
}

impl StopRequest {
    /// Starts listening (call it first thing, inside the tokio runtime).
    pub fn listen() -> StopRequest {
        let (tell, requested) = tokio::sync::watch::channel(false);
        let worker_started = Arc::new(AtomicBool::new(false));
        let started = Arc::clone(&worker_started);
        tokio::spawn(async move {
            shutdown_signal().await;
            if !started.load(Ordering::Acquire) {
                info!("stop requested while setting up: exiting (nothing to commit)");
                std::process::exit(0);
            }
            let _ = tell.send(true);
        });
        StopRequest {
            requested,
            worker_started,
        }
    }

    /// From now on a stop request stops the worker gracefully.
    fn worker_started(&self) {
        self.worker_started.store(true, Ordering::Release);
    }

    async fn requested(mut self) {
        let _ = self.requested.wait_for(|requested| *requested).await;
    }
}

/// What a service binary does once its worker started: run until SIGTERM
/// (graceful stop: exit 0) or until a fatal error stops the worker (exit 1,
/// so the supervisor restarts it from the last commit).
pub async fn run_until_stopped(worker: WorkerHandle, stop: StopRequest) -> std::process::ExitCode {
    stop.worker_started();
    let stopped_by_itself = tokio::select! {
        () = stop.requested() => None,
        reason = worker.stopped() => Some(reason),
    };
    if let Some(reason) = &stopped_by_itself {
        tracing::error!(%reason, "stopping after a fatal error");
    }
    let limit = worker.stop_limit();
    match tokio::time::timeout(limit, worker.stop()).await {
        Ok(Ok(())) if stopped_by_itself.is_none() => std::process::ExitCode::SUCCESS,
        Ok(Ok(())) => std::process::ExitCode::FAILURE,
        Ok(Err(error)) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            // A commit or group leave blocked on a lost coordinator: end
            // now, before the orchestrator's SIGKILL, saying so. What was
            // not committed is read again by the next owner (at least once).
            tracing::error!(
                ?limit,
                "the graceful stop did not finish in time; exiting, what was not committed is read again"
            );
            std::process::exit(1)
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
