//! How every Kafka client of adpipe connects: the bootstrap servers, then
//! TLS and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) as configured — the
//! same settings for consumers, producers, admin clients, the state
//! restore and output scans, the registry's own client and the CLI.
//!
//! Services read them from their `[kafka.security]` section (a file, or
//! `ADPIPE__KAFKA__SECURITY__…` variables); the CLI and the schema registry
//! from those variables alone ([`KafkaSecurity::from_env`]).
//!
//! Contract: secrets (the SASL password, the TLS key's password) come from
//! the environment or from files (`…-file`), are read once by
//! [`KafkaSecurity::resolve`], and never appear in `Debug` output (which
//! `--check-config` prints) nor in any error. A configuration that cannot
//! work (SASL without a mechanism, user or password; a file that cannot be
//! read) is refused with every problem named, before any client exists.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use serde::Deserialize;

/// A secret given inline (`value`, usually from the environment) or in a
/// file, not both: the file's text without its final line break. `field`
/// names the setting in the problem (`<field>-file` for the file).
pub fn secret_from(
    field: &str,
    value: Option<Secret>,
    file: Option<&std::path::Path>,
) -> Result<Option<Secret>, String> {
    let Some(path) = file else {
        return Ok(value);
    };
    if value.is_some() {
        return Err(format!("{field} and {field}-file are both set"));
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(Secret::new(text.trim_end_matches(['\n', '\r'])))),
        Err(error) => Err(format!("{field}-file {}: {error}", path.display())),
    }
}

/// A secret: its `Debug` shows only that it is set.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that hands it to librdkafka.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Any scalar: an environment value like `123456` arrives as a number.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret (a string)")
            }
            fn visit_str<E>(self, value: &str) -> Result<Secret, E> {
                Ok(Secret::new(value))
            }
            fn visit_i64<E>(self, value: i64) -> Result<Secret, E> {
                Ok(Secret::new(value.to_string()))
            }
            fn visit_u64<E>(self, value: u64) -> Result<Secret, E> {
                Ok(Secret::new(value.to_string()))
            }
            fn visit_f64<E>(self, value: f64) -> Result<Secret, E> {
                Ok(Secret::new(value.to_string()))
            }
            fn visit_bool<E>(self, value: bool) -> Result<Secret, E> {
                Ok(Secret::new(value.to_string()))
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

/// How clients talk to the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// No TLS, no authentication (local clusters).
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS (the password crosses the network: PLAIN only on
    /// a trusted network).
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }
    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

/// The SASL mechanism (librdkafka's `sasl.mechanisms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Mechanism {
    /// User and password in the clear (inside TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The security variables, as a command's `--help` lists them (the CLI's
/// and the registry's only way to set them; a service's file may too).
pub const ENV_HELP: &str = "\
Kafka security, from the environment (an empty variable is unset):
  ADPIPE__KAFKA__SECURITY__PROTOCOL               plaintext (default), ssl, sasl_plaintext, sasl_ssl
  ADPIPE__KAFKA__SECURITY__SASL_MECHANISM         PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
  ADPIPE__KAFKA__SECURITY__SASL_USERNAME          the SASL user
  ADPIPE__KAFKA__SECURITY__SASL_PASSWORD          its password (or:)
  ADPIPE__KAFKA__SECURITY__SASL_PASSWORD_FILE     a file holding it
  ADPIPE__KAFKA__SECURITY__SSL_CA_LOCATION        CA certificates (PEM); the system's when unset
  ADPIPE__KAFKA__SECURITY__SSL_CERTIFICATE_LOCATION  a client certificate (PEM)
  ADPIPE__KAFKA__SECURITY__SSL_KEY_LOCATION       its private key (PEM)
  ADPIPE__KAFKA__SECURITY__SSL_KEY_PASSWORD       the key's password (or:)
  ADPIPE__KAFKA__SECURITY__SSL_KEY_PASSWORD_FILE  a file holding it
  ADPIPE__KAFKA__SECURITY__SSL_VERIFY_HOSTNAME    true (default); false only for certificates without the broker's name";

/// `[kafka.security]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct KafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: Protocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (SASL protocols).
    pub sasl_mechanism: Option<Mechanism>,
    /// The SASL user.
    pub sasl_username: Option<String>,
    /// The SASL password: from `ADPIPE__KAFKA__SECURITY__SASL_PASSWORD`,
    /// or read from `sasl-password-file`.
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password (a mounted secret).
    pub sasl_password_file: Option<PathBuf>,
    /// The CA certificates (PEM) that sign the brokers' certificates;
    /// the system's when not given.
    pub ssl_ca_location: Option<PathBuf>,
    /// The client's certificate (PEM), for brokers that ask for one.
    pub ssl_certificate_location: Option<PathBuf>,
    /// The client's private key (PEM).
    pub ssl_key_location: Option<PathBuf>,
    /// The key's password, if it is encrypted.
    pub ssl_key_password: Option<Secret>,
    /// A file holding the key's password.
    pub ssl_key_password_file: Option<PathBuf>,
    /// Check that the broker's certificate names the host connected to
    /// (default true; turn off only for certificates without the name).
    pub ssl_verify_hostname: Option<bool>,
}

impl KafkaSecurity {
    /// Reads the password files and checks that the settings can work;
    /// every problem is named (`kafka.security.…`), no secret in any.
    pub fn resolve(mut self) -> Result<KafkaSecurity, Vec<String>> {
        let mut problems = Vec::new();
        for (field, secret, file) in [
            (
                "kafka.security.sasl-password",
                &mut self.sasl_password,
                &self.sasl_password_file,
            ),
            (
                "kafka.security.ssl-key-password",
                &mut self.ssl_key_password,
                &self.ssl_key_password_file,
            ),
        ] {
            match secret_from(field, secret.take(), file.as_deref()) {
                Ok(found) => *secret = found,
                Err(problem) => problems.push(problem),
            }
        }
        let protocol = self.protocol.name();
        if self.protocol.sasl() {
            if self.sasl_mechanism.is_none() {
                problems.push(format!(
                    "kafka.security.protocol = {protocol} needs sasl-mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
                ));
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                problems.push(format!(
                    "kafka.security.protocol = {protocol} needs sasl-username"
                ));
            }
            if self.sasl_password.as_ref().is_none_or(|p| p.0.is_empty()) {
                problems.push(format!(
                    "kafka.security.protocol = {protocol} needs a password: ADPIPE__KAFKA__SECURITY__SASL_PASSWORD or sasl-password-file"
                ));
            }
        } else if self.sasl_mechanism.is_some() || self.sasl_username.is_some() {
            problems.push(format!(
                "kafka.security: SASL settings given, but protocol = {protocol} does not use SASL (sasl_ssl?)"
            ));
        }
        if !self.protocol.tls()
            && (self.ssl_ca_location.is_some() || self.ssl_certificate_location.is_some())
        {
            problems.push(format!(
                "kafka.security: TLS settings given, but protocol = {protocol} does not use TLS (ssl or sasl_ssl?)"
            ));
        }
        for (field, path) in [
            ("ssl-ca-location", &self.ssl_ca_location),
            ("ssl-certificate-location", &self.ssl_certificate_location),
            ("ssl-key-location", &self.ssl_key_location),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                problems.push(format!(
                    "kafka.security.{field} {}: no such file",
                    path.display()
                ));
            }
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(problems)
        }
    }

    /// Whether the variable `ADPIPE__<path>` = `value` counts as unset: an
    /// empty `KAFKA__SECURITY__<KEY>`. So a compose file can pass every
    /// security variable as `${VAR:-}` and a deployment set only those it
    /// needs (SASL settings beside a plaintext protocol are refused).
    pub fn unset_when_empty(path: &str, value: &str) -> bool {
        value.is_empty() && path.starts_with("KAFKA__SECURITY__")
    }

    /// The settings in `ADPIPE__KAFKA__SECURITY__<KEY>` variables of
    /// `env` (the CLI's and the registry's way; `_` in a key stands for
    /// `-`; a value is read as TOML when it parses, else as a string — the
    /// services' rule; an empty one is unset), resolved.
    pub fn from_vars(
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<KafkaSecurity, Vec<String>> {
        let mut table = toml::Table::new();
        for (name, value) in env {
            if let Some(key) = name.strip_prefix("ADPIPE__KAFKA__SECURITY__") {
                if value.is_empty() {
                    continue;
                }
                let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                    .ok()
                    .and_then(|mut table| table.remove("v"))
                    .unwrap_or(toml::Value::String(value));
                table.insert(key.to_ascii_lowercase().replace('_', "-"), parsed);
            }
        }
        let security: KafkaSecurity =
            toml::Value::Table(table)
                .try_into()
                .map_err(|error: toml::de::Error| {
                    vec![format!("kafka.security: {}", error.message())]
                })?;
        security.resolve()
    }

    /// [`KafkaSecurity::from_vars`] of this process's environment.
    pub fn from_env() -> Result<KafkaSecurity, Vec<String>> {
        KafkaSecurity::from_vars(std::env::vars())
    }

    /// The librdkafka properties these settings mean (secrets included:
    /// hand them only to a `ClientConfig`).
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut properties = vec![("security.protocol", self.protocol.name().to_owned())];
        if let Some(mechanism) = self.sasl_mechanism {
            properties.push(("sasl.mechanisms", mechanism.name().to_owned()));
        }
        if let Some(user) = &self.sasl_username {
            properties.push(("sasl.username", user.clone()));
        }
        if let Some(password) = &self.sasl_password {
            properties.push(("sasl.password", password.expose().to_owned()));
        }
        let path = |path: &PathBuf| path.display().to_string();
        if let Some(ca) = &self.ssl_ca_location {
            properties.push(("ssl.ca.location", path(ca)));
        }
        if let Some(certificate) = &self.ssl_certificate_location {
            properties.push(("ssl.certificate.location", path(certificate)));
        }
        if let Some(key) = &self.ssl_key_location {
            properties.push(("ssl.key.location", path(key)));
        }
        if let Some(password) = &self.ssl_key_password {
            properties.push(("ssl.key.password", password.expose().to_owned()));
        }
        if self.ssl_verify_hostname == Some(false) {
            properties.push(("ssl.endpoint.identification.algorithm", "none".to_owned()));
        }
        properties
    }
}

/// A client context that remembers the cluster refusing the client:
/// librdkafka reports a failed SASL authentication or TLS handshake only to
/// the error callback — requests merely time out — so a client that must
/// fail fast on wrong credentials (a worker at start) creates itself with
/// this context, polls it after a request failed (error events are served
/// by `poll`) and asks [`RefusalWatch::refusal`].
#[derive(Default)]
pub struct RefusalWatch {
    refusal: std::sync::Mutex<Option<rdkafka::error::KafkaError>>,
}

impl RefusalWatch {
    /// The refusal seen, if any.
    pub fn refusal(&self) -> Option<rdkafka::error::KafkaError> {
        self.refusal.lock().ok().and_then(|refusal| refusal.clone())
    }
}

/// What a service says when the cluster refused it (before the refusal
/// itself): the settings to look at.
pub const REFUSED_HINT: &str = "Kafka refused the connection, check [kafka.security] (protocol, mechanism, user, password, CA)";

/// Whether `error` is the cluster refusing this client (authentication,
/// TLS, authorization): a wrong setting that no retry mends.
pub fn refused(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::Authentication
                | Code::SaslAuthenticationFailed
                | Code::SSL
                | Code::ClusterAuthorizationFailed
                | Code::TopicAuthorizationFailed
                | Code::GroupAuthorizationFailed
                | Code::UnsupportedSASLMechanism
                | Code::IllegalSASLState
        )
    )
}

impl rdkafka::ClientContext for RefusalWatch {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if refused(&error) {
            // librdkafka's reason names what was refused (e.g. "invalid
            // credentials with SASL mechanism SCRAM-SHA-512"); no secret.
            tracing::error!(%error, reason, "Kafka refused this client");
            if let Ok(mut refusal) = self.refusal.lock() {
                *refusal = Some(error);
            }
        } else {
            rdkafka::ClientContext::error(&rdkafka::client::DefaultClientContext, error, reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RefusalWatch {}

/// The context of a reader that sets `enable.partition.eof`: rdkafka
/// hands every end of a partition to the context's error callback as well
/// as returning it from `poll`, and the default callback logs it as an
/// error ("Global error: PartitionEOF") — at every catch-up of every
/// restore. This one drops those and passes every other error on.
#[derive(Debug, Default, Clone, Copy)]
pub struct EofReader;

impl rdkafka::ClientContext for EofReader {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            rdkafka::ClientContext::error(&rdkafka::client::DefaultClientContext, error, reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofReader {}

/// After a request of `client` failed: the cluster's refusal of it, if
/// that is why. Serves the client's pending error events to its watch
/// first (a refusal arrives only as one; `poll` delivers them).
pub fn refusal_after(
    client: &rdkafka::consumer::BaseConsumer<RefusalWatch>,
) -> Option<rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    let _ = client.poll(std::time::Duration::from_millis(200));
    client.context().refusal()
}

/// Extra librdkafka properties and the security settings together, for a
/// service that makes several kinds of clients itself (the reconciler).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientSettings {
    /// Extra librdkafka properties (no secrets here: they are printed).
    pub properties: BTreeMap<String, String>,
    /// TLS and SASL.
    pub security: KafkaSecurity,
}

impl ClientSettings {
    /// A client configuration for the cluster at `bootstrap`: secured,
    /// then the extra properties.
    pub fn client_config(&self, bootstrap: &str) -> ClientConfig {
        let mut config = client_config(bootstrap, &self.security);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// A client configuration for the cluster at `bootstrap`, secured as
/// `security` says; the caller adds its own properties (group, acks, …).
pub fn client_config(bootstrap: &str, security: &KafkaSecurity) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in security.properties() {
        config.set(key, value);
    }
    config
}

/// [`client_config`] with the settings of this process's environment
/// (the CLI, the registry). Settings that do not resolve count as none
/// here: the binaries check [`KafkaSecurity::from_env`] at start and
/// refuse to run with them.
pub fn env_client_config(bootstrap: &str) -> ClientConfig {
    client_config(bootstrap, &KafkaSecurity::from_env().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_help_names_every_setting_and_only_settings() {
        let named: Vec<&str> = ENV_HELP
            .split_whitespace()
            .filter(|word| word.starts_with("ADPIPE__KAFKA__SECURITY__"))
            .collect();
        assert_eq!(named.len(), 11, "every field of KafkaSecurity");
        for variable in named {
            // An unknown key would be refused (deny_unknown_fields), a known
            // one only for its value ("x" is no protocol, no path, ...).
            let problems = KafkaSecurity::from_vars(vars(&[(variable, "x")]))
                .err()
                .unwrap_or_default();
            assert!(
                !problems
                    .iter()
                    .any(|problem| problem.contains("unknown field")),
                "{variable}: {problems:?}"
            );
        }
        let problems =
            KafkaSecurity::from_vars(vars(&[("ADPIPE__KAFKA__SECURITY__SASL_USER", "x")]))
                .expect_err("a misspelt key");
        assert!(
            problems
                .iter()
                .any(|problem| problem.contains("unknown field")),
            "{problems:?}"
        );
    }

    #[test]
    fn empty_variables_are_unset_so_a_compose_file_may_pass_them_all() {
        // As compose.central.yml passes them when the deployment is plaintext.
        let empty = KafkaSecurity::from_vars(vars(&[
            ("ADPIPE__KAFKA__SECURITY__PROTOCOL", "plaintext"),
            ("ADPIPE__KAFKA__SECURITY__SASL_MECHANISM", ""),
            ("ADPIPE__KAFKA__SECURITY__SASL_USERNAME", ""),
            ("ADPIPE__KAFKA__SECURITY__SASL_PASSWORD_FILE", ""),
            ("ADPIPE__KAFKA__SECURITY__SSL_CA_LOCATION", ""),
        ]))
        .expect("empty means unset: plaintext with nothing else");
        assert_eq!(empty, KafkaSecurity::default());
        assert!(KafkaSecurity::unset_when_empty(
            "KAFKA__SECURITY__SASL_USERNAME",
            ""
        ));
        assert!(!KafkaSecurity::unset_when_empty(
            "KAFKA__SECURITY__SASL_USERNAME",
            "adpipe"
        ));
        assert!(
            !KafkaSecurity::unset_when_empty("STATS__TOPIC", ""),
            "other settings keep their empty value"
        );
        // A value set beside a plaintext protocol is still refused.
        let problems = KafkaSecurity::from_vars(vars(&[
            ("ADPIPE__KAFKA__SECURITY__PROTOCOL", "plaintext"),
            ("ADPIPE__KAFKA__SECURITY__SASL_USERNAME", "adpipe"),
        ]))
        .expect_err("SASL settings with plaintext");
        assert!(
            problems.iter().any(|problem| problem.contains("sasl")),
            "{problems:?}"
        );
    }

    #[test]
    fn sasl_over_tls_becomes_librdkafka_properties_and_its_password_never_shows() {
        let dir = std::env::temp_dir().join(format!("adpipe-kafka-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a dir");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("a file");
        let security = KafkaSecurity::from_vars(vars(&[
            ("ADPIPE__KAFKA__SECURITY__PROTOCOL", "sasl_ssl"),
            ("ADPIPE__KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-512"),
            ("ADPIPE__KAFKA__SECURITY__SASL_USERNAME", "adpipe"),
            ("ADPIPE__KAFKA__SECURITY__SASL_PASSWORD", "s3cret-value"),
            (
                "ADPIPE__KAFKA__SECURITY__SSL_CA_LOCATION",
                ca.to_str().expect("utf-8"),
            ),
            ("ADPIPE__OTHER", "ignored"),
        ]))
        .expect("valid settings");
        let properties = security.properties();
        for expected in [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "adpipe"),
            ("sasl.password", "s3cret-value"),
        ] {
            assert!(
                properties.contains(&(expected.0, expected.1.to_owned())),
                "{expected:?} missing"
            );
        }
        let shown = format!("{security:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_password_file_is_read_and_a_numeric_password_is_a_string() {
        let file = std::env::temp_dir().join(format!("adpipe-pw-{}", std::process::id()));
        std::fs::write(&file, "from-a-file\n").expect("a file");
        let security = KafkaSecurity {
            protocol: Protocol::SaslPlaintext,
            sasl_mechanism: Some(Mechanism::Plain),
            sasl_username: Some("u".to_owned()),
            sasl_password_file: Some(file.clone()),
            ..KafkaSecurity::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(security.sasl_password, Some(Secret::new("from-a-file")));
        let _ = std::fs::remove_file(file);
        let numeric: KafkaSecurity = toml::from_str(
            "protocol = \"sasl_ssl\"\nsasl-mechanism = \"PLAIN\"\nsasl-username = \"u\"\nsasl-password = 123456\n",
        )
        .expect("a number as a password");
        assert_eq!(numeric.sasl_password, Some(Secret::new("123456")));
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_every_problem_named() {
        let problems = KafkaSecurity::from_vars(vars(&[
            ("ADPIPE__KAFKA__SECURITY__PROTOCOL", "sasl_ssl"),
            (
                "ADPIPE__KAFKA__SECURITY__SSL_CA_LOCATION",
                "/no/such/ca.pem",
            ),
        ]))
        .expect_err("incomplete");
        let text = problems.join("\n");
        assert!(text.contains("needs sasl-mechanism"), "{text}");
        assert!(text.contains("needs sasl-username"), "{text}");
        assert!(text.contains("needs a password"), "{text}");
        assert!(text.contains("/no/such/ca.pem: no such file"), "{text}");
        let problems =
            KafkaSecurity::from_vars(vars(&[("ADPIPE__KAFKA__SECURITY__PROTOCOL", "sasl_tls")]))
                .expect_err("unknown protocol");
        assert!(problems[0].contains("sasl_tls"), "{problems:?}");
        let problems =
            KafkaSecurity::from_vars(vars(&[("ADPIPE__KAFKA__SECURITY__SASL_USERNAME", "u")]))
                .expect_err("SASL settings on plaintext");
        assert!(problems[0].contains("does not use SASL"), "{problems:?}");
    }
}
