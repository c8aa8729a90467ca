//! Which of the local stack's engines a test reaches, and how: the plain ones (the default), or,
//! once a test called [`secure_every_connection`], the secured ones `scripts/stack up --secured`
//! starts (Kafka over SASL_SSL with SCRAM-SHA-512, MariaDB requiring TLS, the search engine
//! behind HTTPS with a password, S3 over HTTPS), each verified against the stack's CA.
//!
//! The choice is the process's: nextest runs every test in a process of its own, so a test that
//! secures its connections secures every helper it calls (the pipeline's topics and readers,
//! the stages it starts, the MySQL, search and S3 it checks) and nothing else.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::stack_setting;

static SECURED: AtomicBool = AtomicBool::new(false);

/// From now on, in this process, every helper reaches the stack's secured engines. Fails when
/// the stack was not started with `--secured` (or `--tests`).
pub fn secure_every_connection() {
    let ca = stack_setting("WXSTACK_SECURED_CA");
    assert!(
        Path::new(&ca).exists(),
        "{ca} is missing: start the stack with `scripts/stack up --secured`"
    );
    SECURED.store(true, Ordering::SeqCst);
}

/// Whether this process reaches the secured engines.
pub fn secured() -> bool {
    SECURED.load(Ordering::SeqCst)
}

fn file_contents(variable: &str) -> String {
    let path = stack_setting(variable);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{variable} ({path}): {e}"))
        .trim()
        .to_string()
}

/// Every secret of the secured engines, read from the files the stack wrote (name, value):
/// the Kafka password, the MySQL password (inside its URL's file), the search engine's
/// password and API key. A test looks for them where they must never appear. The MySQL
/// password is taken from its URL as written there (percent-encoded): the stack makes its
/// passwords of hex digits, which the encoding leaves as they are.
pub fn secured_secrets() -> Vec<(&'static str, String)> {
    let mysql = reqwest::Url::parse(&file_contents("WXSTACK_SECURED_MYSQL_URL_FILE"))
        .expect("the secured MySQL URL");
    vec![
        (
            "kafka-password",
            file_contents("WXSTACK_SECURED_KAFKA_PASSWORD_FILE"),
        ),
        (
            "mysql-password",
            mysql.password().expect("a password").to_string(),
        ),
        (
            "es-password",
            file_contents("WXSTACK_SECURED_ES_PASSWORD_FILE"),
        ),
        (
            "es-api-key",
            file_contents("WXSTACK_SECURED_ES_API_KEY_FILE"),
        ),
    ]
}

/// The stack's CA, which signed every secured engine's certificate.
pub fn ca_file() -> PathBuf {
    PathBuf::from(stack_setting("WXSTACK_SECURED_CA"))
}

/// The bootstrap servers of the engines in use.
pub fn brokers() -> String {
    if secured() {
        stack_setting("WXSTACK_SECURED_BROKERS")
    } else {
        stack_setting("WXSTACK_BROKERS")
    }
}

/// The Kafka client properties the secured listener needs, the password as `password`.
fn sasl_properties(password: String) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "SASL_SSL".into()),
        ("sasl.mechanism", "SCRAM-SHA-512".into()),
        ("sasl.username", stack_setting("WXSTACK_SECURED_KAFKA_USER")),
        ("sasl.password", password),
        ("ssl.ca.location", ca_file().display().to_string()),
    ]
}

/// A client configuration for `brokers`: with the secured listener's SASL_SSL properties when
/// `brokers` is the secured Kafka.
pub fn kafka_config(brokers: &str) -> wx_kafka::KafkaConfig {
    let mut config = wx_kafka::KafkaConfig::new(brokers);
    if secured() && brokers == stack_setting("WXSTACK_SECURED_BROKERS") {
        for (key, value) in sasl_properties(file_contents("WXSTACK_SECURED_KAFKA_PASSWORD_FILE")) {
            config.properties.insert(key.to_string(), value);
        }
    }
    config
}

/// When secured: writes `<dir>/worker.yaml`, the worker configuration a stage process is
/// started with (`--config`), its Kafka password by file reference, and returns its path.
pub fn worker_config(dir: &Path) -> Option<PathBuf> {
    if !secured() {
        return None;
    }
    let password = format!(
        "{{file: {}}}",
        stack_setting("WXSTACK_SECURED_KAFKA_PASSWORD_FILE")
    );
    let properties: String = sasl_properties(password)
        .into_iter()
        .map(|(key, value)| format!("    {key}: {value}\n"))
        .collect();
    let path = dir.join("worker.yaml");
    std::fs::write(
        &path,
        format!(
            "kafka:\n  brokers: {}\n  properties:\n{properties}",
            brokers()
        ),
    )
    .expect("worker.yaml");
    Some(path)
}

/// The MySQL server URL (no database), as a connector's `mysql_url` setting gives it: a
/// reference, never the text.
pub fn mysql_url_setting() -> String {
    if secured() {
        format!(
            "{{file: {}}}",
            stack_setting("WXSTACK_SECURED_MYSQL_URL_FILE")
        )
    } else {
        "{env: WXSTACK_MYSQL_URL}".into()
    }
}

/// The MySQL server URL (no database), read.
pub fn mysql_url() -> String {
    if secured() {
        file_contents("WXSTACK_SECURED_MYSQL_URL_FILE")
    } else {
        stack_setting("WXSTACK_MYSQL_URL")
    }
}

/// The URL of `database` on the server in use (its TLS parameters kept).
pub fn mysql_database_url(database: &str) -> String {
    let url = mysql_url();
    match url.split_once('?') {
        Some((server, query)) => format!("{}/{database}?{query}", server.trim_end_matches('/')),
        None => format!("{}/{database}", url.trim_end_matches('/')),
    }
}

/// The search cluster in use, as the tests' own client reaches it.
pub fn search_endpoint() -> wx_search::Endpoint {
    if secured() {
        wx_search::Endpoint {
            urls: stack_setting("WXSTACK_SECURED_ES_URLS")
                .split(',')
                .map(str::to_string)
                .collect(),
            ca_file: Some(ca_file()),
            auth: Some(wx_search::Auth::Basic {
                username: stack_setting("WXSTACK_SECURED_ES_USER"),
                password: wx_runtime::settings::SecretRef::File(
                    stack_setting("WXSTACK_SECURED_ES_PASSWORD_FILE").into(),
                )
                .resolve()
                .expect("the search password"),
            }),
        }
    } else {
        wx_search::Endpoint::url(&stack_setting("WXSTACK_ES_URL"))
    }
}

/// The sink connector's search settings lines (two-space indented): when secured, every node
/// URL, the CA, and the API key by reference.
pub fn search_settings() -> String {
    if secured() {
        format!(
            "  elasticsearch_url: [{}]\n  elasticsearch_ca_file: {}\n  elasticsearch_api_key: {{file: {}}}\n",
            stack_setting("WXSTACK_SECURED_ES_URLS").replace(',', ", "),
            ca_file().display(),
            stack_setting("WXSTACK_SECURED_ES_API_KEY_FILE")
        )
    } else {
        format!("  elasticsearch_url: {}\n", stack_setting("WXSTACK_ES_URL"))
    }
}

/// The S3 endpoint in use.
pub fn s3_endpoint() -> String {
    if secured() {
        stack_setting("WXSTACK_SECURED_S3_URL")
    } else {
        stack_setting("WX_S3_ENDPOINT")
    }
}

/// The CA an S3 client trusts besides the system's roots (the secured server's).
pub fn s3_ca_file() -> Option<PathBuf> {
    secured().then(ca_file)
}
