//! A client of the Confluent Schema Registry REST API (which Confluent's registry, Apicurio's
//! `/apis/ccompat/v7` and Karapace serve): register a schema under a subject, read a subject's
//! latest version, fetch a schema by id. Only what the codec needs.
//!
//! Every call has a deadline ([`RegistryOptions::timeout`]). Its errors are classified: the
//! registry does not know an id ([`Fetched::Unknown`], the record is bad), or the registry cannot
//! answer now or refuses the credentials ([`CodecError::Registry`]: the caller retries, parking
//! nothing; a changed password must not turn good records into letters).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::CodecError;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// How subjects are named (Confluent's `value.subject.name.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value`: Confluent's default, and what registry UIs (AKHQ, kafka-ui, Confluent
    /// Control Center) show beside a topic.
    #[default]
    Topic,
    /// The record's full name (`io.wxstream.v1.ChatMessage`), whatever the topic.
    Record,
}

/// Where the registry is and how to talk to it. Secrets are resolved by the caller.
#[derive(Clone, Default)]
pub struct RegistryOptions {
    /// The registry's base URL (for Apicurio, `.../apis/ccompat/v7`), without credentials.
    pub url: String,
    /// HTTP Basic credentials (Confluent's `basic.auth.user.info`).
    pub basic_auth: Option<(String, String)>,
    /// A PEM CA bundle to trust for an `https` registry, besides the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// How subjects are named.
    pub subject_strategy: SubjectStrategy,
    /// Register this build's schemas at start (Confluent's `auto.register.schemas`); when false,
    /// write with each subject's latest registered version (`use.latest.version`), which must
    /// be able to read this build's records.
    pub auto_register: bool,
    /// The deadline of each call.
    pub timeout: Duration,
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("url", &crate::redact_urls(&self.url))
            .field(
                "basic_auth",
                &self.basic_auth.as_ref().map(|(user, _)| (user, "***")),
            )
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("subject_strategy", &self.subject_strategy)
            .field("auto_register", &self.auto_register)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A schema registry reachable over HTTP.
#[derive(Clone)]
pub struct RegistryClient {
    url: String,
    http: reqwest::Client,
    basic_auth: Option<(String, String)>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .field("user", &self.basic_auth.as_ref().map(|(user, _)| user))
            .finish()
    }
}

/// The registry's error document.
#[derive(Deserialize)]
struct ErrorReply {
    error_code: u32,
}

/// Confluent's `error_code` for a subject that does not exist.
const SUBJECT_NOT_FOUND: u32 = 40401;
/// ... and for a schema id that does not exist.
const SCHEMA_NOT_FOUND: u32 = 40403;

#[derive(Deserialize)]
struct IdReply {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaReply {
    schema: String,
}

#[derive(Deserialize)]
struct VersionReply {
    id: u32,
    schema: String,
}

/// A schema fetched by id.
#[derive(Debug)]
pub enum Fetched {
    /// The schema text, as registered.
    Schema(String),
    /// The registry answers that it has no schema of that id (HTTP 404).
    Unknown,
}

impl RegistryClient {
    /// A client of the registry at `options.url`.
    pub fn new(options: &RegistryOptions) -> Result<RegistryClient, CodecError> {
        let mut url =
            reqwest::Url::parse(options.url.trim()).map_err(|e| CodecError::Registry {
                url: crate::redact_urls(&options.url),
                reason: format!("not a URL: {e}"),
            })?;
        // Credentials only by reference: a password in the URL would sit in the configuration
        // as text (and percent-encoded).
        if !url.username().is_empty() || url.password().is_some() {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            return Err(CodecError::Registry {
                url: url.to_string(),
                reason: "the URL carries credentials: give them as schema_registry.username and \
                         schema_registry.password (a secret reference) instead"
                    .into(),
            });
        }
        let basic_auth = options.basic_auth.clone();
        let url = url.as_str().trim_end_matches('/').to_string();
        let error = |reason: String| CodecError::Registry {
            url: url.clone(),
            reason,
        };
        let timeout = if options.timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            options.timeout
        };
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout);
        if let Some(pem) = &options.ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| error(format!("the CA bundle holds no PEM certificate: {e}")))?;
            at_least_one(&certificates).map_err(error)?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http.build().map_err(|e| error(e.to_string()))?;
        Ok(RegistryClient {
            url,
            http,
            basic_auth,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// An error of this registry: its URL and the reason with any credentials in them redacted
    /// (an HTTP client's errors quote the URL), for they reach logs and letters' causes.
    pub(crate) fn error(&self, reason: impl ToString) -> CodecError {
        CodecError::Registry {
            url: crate::redact_urls(&self.url),
            reason: crate::redact_urls(&reason.to_string()),
        }
    }

    /// Sends a request: `Ok(None)` for a 404 whose body carries the registry's `error_code`
    /// `not_found` (40401 no such subject, 40403 no such schema, as Confluent's registry and
    /// Apicurio's ccompat API answer), the parsed body for a success, an error otherwise: a bare
    /// 404 (a proxy, a wrong path, a registry restarting) is the registry's trouble, not an
    /// answer.
    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        mut request: reqwest::RequestBuilder,
        not_found: u32,
    ) -> Result<Option<T>, CodecError> {
        if let Some((user, password)) = &self.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        let reply = request
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let status = reply.status();
        if !status.is_success() {
            let body = reply.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::NOT_FOUND
                && serde_json::from_str::<ErrorReply>(&body)
                    .is_ok_and(|e| e.error_code == not_found)
            {
                return Ok(None);
            }
            let body: String = body.chars().take(300).collect();
            return Err(self.error(format!("HTTP {status}: {body}")));
        }
        reply.json().await.map(Some).map_err(|e| self.error(e))
    }

    fn subject_url(&self, subject: &str) -> String {
        format!(
            "{}/subjects/{}",
            self.url,
            form_urlencoded::byte_serialize(subject.as_bytes()).collect::<String>()
        )
    }

    /// Registers `schema` (its text as written: docs, defaults and logical types kept) under
    /// `subject` and returns its id; registering the same text again returns the same id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, CodecError> {
        let request = self
            .http
            .post(format!("{}/versions", self.subject_url(subject)))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(json!({ "schemaType": "AVRO", "schema": schema }).to_string());
        let reply: IdReply = self
            .send(request, SUBJECT_NOT_FOUND)
            .await?
            .ok_or_else(|| self.error(format!("registering under {subject}: HTTP 404")))?;
        Ok(reply.id)
    }

    /// The latest version registered under `subject`: its id and schema text.
    pub async fn latest(&self, subject: &str) -> Result<(u32, String), CodecError> {
        let url = format!("{}/versions/latest", self.subject_url(subject));
        let reply: VersionReply = self
            .send(self.http.get(url), SUBJECT_NOT_FOUND)
            .await?
            .ok_or_else(|| {
                self.error(format!(
                    "no schema is registered under {subject} (auto_register is false: register \
                 schemas/ first, or set auto_register: true)"
                ))
            })?;
        Ok((reply.id, reply.schema))
    }

    /// The schema with `id`.
    pub async fn fetch(&self, id: u32) -> Result<Fetched, CodecError> {
        let reply: Option<SchemaReply> = self
            .send(
                self.http.get(format!("{}/schemas/ids/{id}", self.url)),
                SCHEMA_NOT_FOUND,
            )
            .await?;
        Ok(match reply {
            Some(reply) => Fetched::Schema(reply.schema),
            None => Fetched::Unknown,
        })
    }
}

fn at_least_one(certificates: &[reqwest::Certificate]) -> Result<(), String> {
    if certificates.is_empty() {
        Err("the CA bundle holds no PEM certificate".into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> RegistryOptions {
        RegistryOptions {
            url: url.into(),
            timeout: Duration::from_secs(2),
            ..RegistryOptions::default()
        }
    }

    /// Credentials go by reference only: a URL carrying them is refused, and the refusal does
    /// not show them (`../shared/reviews/audit-2026-12.md` X4: they reached logs and letters'
    /// causes); configured ones never show in `Debug`.
    #[tokio::test]
    async fn registry_credentials_never_show() {
        let e = RegistryClient::new(&options("http://wx:s3cret-pw@127.0.0.1:1/"))
            .expect_err("credentials in the URL")
            .to_string();
        assert!(
            !e.contains("s3cret-pw") && e.contains("schema_registry.password"),
            "{e}"
        );
        let options = RegistryOptions {
            basic_auth: Some(("wx".into(), "hunter2".into())),
            ..options("http://127.0.0.1:1")
        };
        assert!(!format!("{options:?}").contains("hunter2"));
        let client = RegistryClient::new(&options).expect("client");
        assert!(!format!("{client:?}").contains("hunter2"));
        let error = client.fetch(7).await.expect_err("refused").to_string();
        assert!(
            !error.contains("hunter2") && error.contains("127.0.0.1:1"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_ca_is_refused() {
        let junk = RegistryOptions {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..options("https://h:8081")
        };
        let e = RegistryClient::new(&junk).expect_err("junk").to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
