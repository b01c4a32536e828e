//! The registry against real Kafka (`infra/kafka.sh start`): Confluent's API
//! semantics, restarts, several instances, and schema_registry_converter in
//! both directions through a real topic.

use std::time::Duration;

use adpipe_codec::{Codec, DecodeError, RegistryClient, RegistryError, value_subject};
use adpipe_events::{EventKind, Impression, samples};
use adpipe_schema_registry::{RegistrySettings, RunningRegistry};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const V1: &str =
    r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"a","type":"string"}]}"#;
const V2_WITH_DEFAULT: &str = r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"a","type":"string"},{"name":"b","type":"long","default":7}]}"#;
const V3_NO_DEFAULT: &str = r#"{"type":"record","name":"Thing","namespace":"t","fields":[{"name":"a","type":"string"},{"name":"b","type":"long","default":7},{"name":"c","type":"long"}]}"#;

async fn start(topic: &str) -> RunningRegistry {
    let bootstrap = adpipe_testkit::kafka("central");
    adpipe_schema_registry::start(RegistrySettings::local(&bootstrap, topic))
        .await
        .expect("registry starts")
}

struct Http {
    base: String,
    client: reqwest::Client,
    /// An `Authorization` header sent with every request.
    authorization: Option<String>,
}

impl Http {
    fn new(registry: &RunningRegistry) -> Self {
        Http {
            base: registry.url(),
            client: reqwest::Client::new(),
            authorization: None,
        }
    }

    fn authorized(registry: &RunningRegistry, authorization: &str) -> Self {
        Http {
            authorization: Some(authorization.to_owned()),
            ..Http::new(registry)
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json");
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let response = request.send().await.expect("registry answers");
        let status = response.status().as_u16();
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok()),
            Some("application/vnd.schemaregistry.v1+json"),
            "{path}"
        );
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_confluents_api_with_its_error_codes() {
    let registry = start(&adpipe_testkit::unique("_schemas")).await;
    let http = Http::new(&registry);
    let subject = "things-value";

    let (status, body) = http
        .post(
            &format!("/subjects/{subject}/versions"),
            json!({"schema": V1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id1 = body["id"].as_u64().expect("id");
    // Same schema, other whitespace: same id, no new version.
    let spaced = V1.replace(',', ", ");
    let (_, again) = http
        .post(
            &format!("/subjects/{subject}/versions"),
            json!({"schema": spaced}),
        )
        .await;
    assert_eq!(again["id"].as_u64(), Some(id1));
    let (_, versions) = http.get(&format!("/subjects/{subject}/versions")).await;
    assert_eq!(versions, json!([1]));

    // BACKWARD (the default): adding a field with a default is fine ...
    let (status, body) = http
        .post(
            &format!("/subjects/{subject}/versions"),
            json!({"schema": V2_WITH_DEFAULT}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id2 = body["id"].as_u64().expect("id");
    assert_ne!(id1, id2);
    // ... one without a default is refused with Confluent's 409.
    let (status, body) = http
        .post(
            &format!("/subjects/{subject}/versions"),
            json!({"schema": V3_NO_DEFAULT}),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_u64()),
        (409, Some(409)),
        "{body}"
    );
    let (_, check) = http
        .post(
            &format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"),
            json!({"schema": V3_NO_DEFAULT}),
        )
        .await;
    assert_eq!(check["is_compatible"], json!(false));
    assert!(!check["messages"].as_array().expect("messages").is_empty());
    let (_, check) = http
        .post(
            &format!("/compatibility/subjects/{subject}/versions/1"),
            json!({"schema": V2_WITH_DEFAULT}),
        )
        .await;
    assert_eq!(check, json!({"is_compatible": true}));

    // Per-subject level NONE lets it through; the global level is untouched.
    let (status, _) = http
        .put(
            &format!("/config/{subject}"),
            json!({"compatibility": "NONE"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, global) = http.get("/config").await;
    assert_eq!(global, json!({"compatibilityLevel": "BACKWARD"}));
    let (status, body) = http
        .post(
            &format!("/subjects/{subject}/versions"),
            json!({"schema": V3_NO_DEFAULT}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http
        .put("/config", json!({"compatibility": "SIDEWAYS"}))
        .await;
    assert_eq!((status, body["error_code"].as_u64()), (422, Some(42203)));

    // Lookups.
    let (_, by_id) = http.get(&format!("/schemas/ids/{id1}")).await;
    let text = by_id["schema"].as_str().expect("schema text");
    assert_eq!(
        serde_json::from_str::<Value>(text).expect("json"),
        serde_json::from_str::<Value>(V1).expect("json")
    );
    let (_, found) = http
        .post(
            &format!("/subjects/{subject}"),
            json!({"schema": V2_WITH_DEFAULT}),
        )
        .await;
    assert_eq!(
        (found["version"].as_i64(), found["id"].as_u64()),
        (Some(2), Some(id2))
    );
    let (_, latest) = http
        .get(&format!("/subjects/{subject}/versions/latest"))
        .await;
    assert_eq!(latest["version"], json!(3));
    let (_, subjects) = http.get("/subjects").await;
    assert_eq!(subjects, json!([subject]));
    let (status, body) = http.get("/schemas/ids/999999").await;
    assert_eq!((status, body["error_code"].as_u64()), (404, Some(40403)));
    let (status, body) = http.get("/subjects/nope/versions").await;
    assert_eq!((status, body["error_code"].as_u64()), (404, Some(40401)));
    let (status, body) = http.get(&format!("/subjects/{subject}/versions/9")).await;
    assert_eq!((status, body["error_code"].as_u64()), (404, Some(40402)));
    let (status, body) = http
        .get(&format!("/subjects/{subject}/versions/zero"))
        .await;
    assert_eq!((status, body["error_code"].as_u64()), (422, Some(42202)));
    let (status, body) = http
        .post(
            "/subjects/bad-value/versions",
            json!({"schema": "{\"type\":\"recrod\"}"}),
        )
        .await;
    assert_eq!((status, body["error_code"].as_u64()), (422, Some(42201)));

    // Soft delete, then hard delete (which requires the soft one first).
    let (status, body) = http
        .delete(&format!("/subjects/{subject}/versions/3?permanent=true"))
        .await;
    assert_eq!((status, body["error_code"].as_u64()), (404, Some(40406)));
    let (status, body) = http
        .delete(&format!("/subjects/{subject}/versions/3"))
        .await;
    assert_eq!((status, body), (200, json!(3)));
    let (_, versions) = http.get(&format!("/subjects/{subject}/versions")).await;
    assert_eq!(versions, json!([1, 2]));
    let (_, versions) = http
        .get(&format!("/subjects/{subject}/versions?deleted=true"))
        .await;
    assert_eq!(versions, json!([1, 2, 3]));
    let (status, _) = http
        .delete(&format!("/subjects/{subject}/versions/3?permanent=true"))
        .await;
    assert_eq!(status, 200);
    let (status, body) = http
        .delete(&format!("/subjects/{subject}?permanent=true"))
        .await;
    assert_eq!((status, body["error_code"].as_u64()), (404, Some(40405)));
    let (_, deleted) = http.delete(&format!("/subjects/{subject}")).await;
    assert_eq!(deleted, json!([1, 2]));
    let (_, subjects) = http.get("/subjects").await;
    assert_eq!(subjects, json!([]));
    let (_, subjects) = http.get("/subjects?deleted=true").await;
    assert_eq!(subjects, json!([subject]));

    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_every_change_needs_it_and_reads_stay_open() {
    let topic = adpipe_testkit::unique("_schemas-token");
    let mut settings = RegistrySettings::local(&adpipe_testkit::kafka("central"), &topic);
    settings.access = adpipe_schema_registry::WriteAccess {
        token: Some(adpipe_kafka_client::Secret::new("t0ken-of-the-test")),
        open_writes: false,
    };
    let registry = adpipe_schema_registry::start(settings)
        .await
        .expect("registry starts");
    let anyone = Http::new(&registry);
    let wrong = Http::authorized(&registry, "Bearer t0ken-of-the-tesT");
    let bearer = Http::authorized(&registry, "Bearer t0ken-of-the-test");
    // Basic with the token as password, as Confluent's clients send it.
    let basic = Http::authorized(&registry, "Basic YW55b25lOnQwa2VuLW9mLXRoZS10ZXN0");
    let unauthorized = |(status, body): (u16, Value)| {
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error_code"], 401, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("write token")),
            "{body}"
        );
    };
    let schema = json!({"schema": V1});
    // Every change without the token, or with a wrong one: 401, nothing done.
    for http in [&anyone, &wrong] {
        unauthorized(
            http.post("/subjects/s-value/versions", schema.clone())
                .await,
        );
        unauthorized(http.put("/config", json!({"compatibility": "NONE"})).await);
        unauthorized(
            http.put("/config/s-value", json!({"compatibility": "NONE"}))
                .await,
        );
        unauthorized(http.delete("/config").await);
        unauthorized(http.delete("/config/s-value").await);
    }
    assert_eq!(anyone.get("/subjects").await, (200, json!([])));
    // With it: done.
    let (status, body) = bearer
        .post("/subjects/s-value/versions", schema.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = basic
        .put("/config/s-value", json!({"compatibility": "NONE"}))
        .await;
    assert_eq!((status, body), (200, json!({"compatibility": "NONE"})));
    // Reads, lookups and compatibility checks need no token.
    assert_eq!(anyone.get("/subjects").await, (200, json!(["s-value"])));
    assert_eq!(
        anyone.post("/subjects/s-value", schema.clone()).await.0,
        200
    );
    assert_eq!(
        anyone
            .post(
                "/compatibility/subjects/s-value/versions/latest",
                json!({"schema": V2_WITH_DEFAULT})
            )
            .await,
        (200, json!({"is_compatible": true}))
    );
    // Deleting needs it too.
    for http in [&anyone, &wrong] {
        unauthorized(http.delete("/subjects/s-value/versions/1").await);
        unauthorized(http.delete("/subjects/s-value").await);
    }
    assert_eq!(anyone.get("/subjects").await, (200, json!(["s-value"])));
    assert_eq!(bearer.delete("/subjects/s-value").await, (200, json!([1])));
    // adpipe's own client sends it when given, and is refused without.
    let without = RegistryClient::new(&registry.url()).expect("client");
    let refused = without
        .register("other-value", V1)
        .await
        .expect_err("refused");
    assert_eq!(refused.error_code(), Some(401), "{refused}");
    let with = RegistryClient::new(&registry.url())
        .and_then(|client| client.with_token(Some("t0ken-of-the-test")))
        .expect("client");
    assert!(
        !format!("{with:?}").contains("t0ken"),
        "the token in {with:?}"
    );
    with.register("other-value", V1)
        .await
        .expect("registered with the token");
    registry.stop().await;
}

/// The value of the sample `series` (name and labels as rendered) in
/// Prometheus' text, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn its_metrics_count_reads_and_writes_by_status() {
    let registry = start(&adpipe_testkit::unique("_schemas-metrics")).await;
    let http = Http::new(&registry);
    let scrape = || async {
        reqwest::get(format!("{}/metrics", registry.url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("a body")
    };
    // Declared before any request of this test: named, HELP and TYPE.
    let before = scrape().await;
    assert!(
        before.contains("# TYPE adpipe_registry_requests_total counter"),
        "{before}"
    );
    assert!(
        before
            .lines()
            .any(|line| line.starts_with("process_resident_memory_bytes ")),
        "{before}"
    );
    let (status, _) = http
        .post("/subjects/m-value/versions", json!({"schema": V1}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = http.get("/subjects/no-such-subject/versions").await;
    assert_eq!(status, 404);
    let after = scrape().await;
    // Other tests of this binary share the process's recorder: at least ours.
    for series in [
        r#"adpipe_registry_requests_total{access="write",status="200"}"#,
        r#"adpipe_registry_requests_total{access="read",status="404"}"#,
    ] {
        assert!(
            sample(&after, series) >= sample(&before, series) + 1.0,
            "{series}: {after}"
        );
    }
    assert!(
        !after.contains(r#"status="200",path"#) && !after.contains("no-such-subject"),
        "no path labels"
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_request_is_refused_in_confluents_shape() {
    let topic = adpipe_testkit::unique("_schemas-limit");
    let mut settings = RegistrySettings::local(&adpipe_testkit::kafka("central"), &topic);
    settings.max_request_bytes = 4096;
    let registry = adpipe_schema_registry::start(settings)
        .await
        .expect("registry starts");
    let http = Http::new(&registry);
    // A record with enough documented fields to pass the limit.
    let fields: Vec<Value> = (0..100)
        .map(|i| json!({"name": format!("field_{i}"), "type": "string", "doc": "x".repeat(40)}))
        .collect();
    let large = json!({"type": "record", "name": "Large", "fields": fields}).to_string();
    assert!(large.len() > 4096);
    for path in ["/subjects/l-value/versions", "/subjects/l-value"] {
        let (status, body) = http.post(path, json!({"schema": large})).await;
        assert_eq!(status, 413, "{path}: {body}");
        assert_eq!(body["error_code"], 413, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("4096 bytes")),
            "{body}"
        );
    }
    // Under the limit: served, and the registry goes on.
    let (status, body) = http
        .post("/subjects/l-value/versions", json!({"schema": V1}))
        .await;
    assert_eq!(status, 200, "{body}");
    registry.stop().await;
}

#[test]
fn the_binary_refuses_to_serve_open_writes_beyond_loopback() {
    let registry = env!("CARGO_BIN_EXE_adpipe-schema-registry");
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let output = std::process::Command::new(registry)
            .args(args)
            .env_remove("ADPIPE_REGISTRY_TOKEN")
            .env_remove("ADPIPE_REGISTRY_TOKEN_FILE")
            .envs(envs.iter().copied())
            // Nowhere to connect: the refusal must come before any client.
            .env("ADPIPE_REGISTRY_BOOTSTRAP_SERVERS", "127.0.0.1:1")
            .output()
            .expect("the registry binary runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no write token"), "{stderr}");
    let (code, stderr) = run(
        &["--listen", "0.0.0.0:0"],
        &[
            ("ADPIPE_REGISTRY_TOKEN", "a"),
            ("ADPIPE_REGISTRY_TOKEN_FILE", "/nonexistent"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("are both set"), "{stderr}");
    assert!(!stderr.contains("=a"), "{stderr}");
    let (code, stderr) = run(
        &[
            "--listen",
            "0.0.0.0:0",
            "--token-file",
            "/nonexistent/token",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/token"), "{stderr}");
    // A port in use: exit 2 naming it, before any Kafka client (there is
    // none to reach at 127.0.0.1:1: a client first would wait, then fail
    // with exit 1).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = taken.local_addr().expect("its address").to_string();
    let (code, stderr) = run(&["--listen", &address], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--listen {address}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

/// A consumer may look an id up through another instance than the one its
/// producer registered it with, a moment later: that instance must not
/// answer "not found" while its tailer is still behind the log (an event
/// would be dead-lettered as of an unknown schema). Fails without
/// `Registry::read`'s catch-up on a miss: the reads race the tailer.
#[tokio::test(flavor = "multi_thread")]
async fn what_one_instance_acknowledged_another_finds_at_once() {
    let topic = adpipe_testkit::unique("_schemas");
    let (writer, reader) = (start(&topic).await, start(&topic).await);
    let through_writer = RegistryClient::new(&writer.url()).expect("client");
    let through_reader = RegistryClient::new(&reader.url()).expect("client");
    for n in 0..40 {
        let subject = format!("at-once-{n}-value");
        let schema =
            format!(r#"{{"type":"record","name":"A{n}","fields":[{{"name":"f","type":"long"}}]}}"#);
        let id = through_writer
            .register(&subject, &schema)
            .await
            .expect("registers");
        let text = through_reader.schema_by_id(id).await;
        assert!(
            text.is_ok(),
            "schema {n} (id {id}) through the other instance: {text:?}"
        );
        let found = through_reader.lookup(&subject, &schema).await;
        assert_eq!(
            found.map(|found| found.id).ok(),
            Some(id),
            "subject {subject}"
        );
    }
    writer.stop().await;
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_every_id_and_instances_agree() {
    let topic = adpipe_testkit::unique("_schemas");
    let first = start(&topic).await;
    let client = RegistryClient::new(&first.url()).expect("client");
    let mut ids = Vec::new();
    for kind in EventKind::ALL {
        ids.push(
            client
                .register(&format!("{kind}-value"), kind.schema())
                .await
                .expect("registers"),
        );
    }
    first.stop().await;

    // A new instance rebuilds the same state from the topic alone ...
    let second = start(&topic).await;
    let third = start(&topic).await;
    for registry in [&second, &third] {
        let client = RegistryClient::new(&registry.url()).expect("client");
        for (kind, id) in EventKind::ALL.into_iter().zip(&ids) {
            let found = client
                .lookup(&format!("{kind}-value"), kind.schema())
                .await
                .expect("found");
            assert_eq!(found.id, *id, "{kind}");
        }
    }
    // ... and two live instances registering at once never hand out one id twice.
    let left = RegistryClient::new(&second.url()).expect("client");
    let right = RegistryClient::new(&third.url()).expect("client");
    let schemas: Vec<String> = (0..10)
        .map(|n| {
            format!(r#"{{"type":"record","name":"R{n}","fields":[{{"name":"f","type":"int"}}]}}"#)
        })
        .collect();
    let mut tasks = Vec::new();
    for (n, schema) in schemas.iter().enumerate() {
        let client = if n % 2 == 0 {
            left.clone()
        } else {
            right.clone()
        };
        let schema = schema.clone();
        tasks.push(tokio::spawn(async move {
            client.register(&format!("race-{n}-value"), &schema).await
        }));
    }
    let mut raced = Vec::new();
    for task in tasks {
        raced.push(task.await.expect("joins").expect("registers"));
    }
    let mut distinct = raced.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        raced.len(),
        "ids {raced:?} must be distinct"
    );
    assert!(raced.iter().all(|id| !ids.contains(id)));
    for (n, id) in raced.iter().enumerate() {
        for client in [&left, &right] {
            let found = client
                .lookup(&format!("race-{n}-value"), &schemas[n])
                .await
                .expect("found");
            assert_eq!(found.id, *id);
        }
    }
    second.stop().await;
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codec_reports_unknown_ids_and_unreachable_registries() {
    let registry = start(&adpipe_testkit::unique("_schemas")).await;
    let codec = Codec::new(RegistryClient::new(&registry.url()).expect("client"));
    let unknown = [0, 0, 0, 0x30, 0x39, 2, 0];
    let error = codec
        .decode::<Impression>(&unknown)
        .await
        .expect_err("unknown id");
    assert!(
        matches!(error, DecodeError::UnknownSchemaId(12345)),
        "{error}"
    );
    registry.stop().await;

    let closed = Codec::new(RegistryClient::new("http://127.0.0.1:9").expect("client"));
    let error = closed
        .decode::<Impression>(&unknown)
        .await
        .expect_err("no registry");
    assert!(
        matches!(
            error,
            DecodeError::Registry(RegistryError::Unreachable { .. })
        ),
        "{error}"
    );
    assert_eq!(error.disposition(), adpipe_codec::Disposition::Transient);
}

/// Sends one framed value through a fresh topic on the central cluster and
/// returns the bytes a consumer reads back.
async fn through_kafka(value: &[u8]) -> Vec<u8> {
    let bootstrap = adpipe_testkit::kafka("central");
    let topic = adpipe_testkit::unique("interop");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    // Auto-creation is off on the local clusters: create the topic first.
    let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    admin
        .create_topics(
            [&rdkafka::admin::NewTopic::new(
                &topic,
                1,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .expect("create topic");
    producer
        .send(
            FutureRecord::to(&topic).key("user-1").payload(value),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", adpipe_testkit::unique("interop"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    for _ in 0..300 {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            return message.payload().expect("payload").to_vec();
        }
    }
    panic!("nothing came back from {topic}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_registry_converter_and_adpipe_read_each_other() {
    use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
    use schema_registry_converter::async_impl::schema_registry::SrSettings;
    use schema_registry_converter::schema_registry_common::{
        SchemaType, SubjectNameStrategy, SuppliedSchema,
    };

    let registry = start(&adpipe_testkit::unique("_schemas")).await;
    let settings = SrSettings::new(registry.url());
    let codec = Codec::new(RegistryClient::new(&registry.url()).expect("client"));
    let impression = samples::impression(42);

    // schema_registry_converter registers and encodes; adpipe decodes.
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        "src-impressions".to_owned(),
        false,
        SuppliedSchema::new(
            Some(EventKind::Impression.full_name().to_owned()),
            SchemaType::Avro,
            EventKind::Impression.schema().to_owned(),
        ),
    );
    let theirs = AvroEncoder::new(settings.clone())
        .encode_struct(&impression, &strategy)
        .await
        .expect("encodes");
    let received = through_kafka(&theirs).await;
    let decoded: Impression = codec.decode(&received).await.expect("adpipe decodes");
    assert_eq!(decoded, impression);

    // adpipe registers and encodes; schema_registry_converter decodes.
    let encoder = codec
        .encoder::<Impression>(
            &value_subject("adpipe-impressions"),
            EventKind::Impression.schema(),
        )
        .await
        .expect("registers");
    let ours = encoder.encode(&impression).expect("encodes");
    let received = through_kafka(&ours).await;
    let decoded = AvroDecoder::new(settings)
        .decode(Some(&received))
        .await
        .expect("src decodes");
    let value: Impression = apache_avro::from_value(&decoded.value).expect("fits Impression");
    assert_eq!(value, impression);
    // Both registered the same schema text: one id for both subjects.
    assert_eq!(theirs[1..5], ours[1..5]);

    registry.stop().await;
}
