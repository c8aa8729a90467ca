//! A minimal client of the Confluent Schema Registry REST API: register a schema under a
//! subject, and fetch a schema by id. Only what the codec needs.

use serde::Deserialize;
use serde_json::json;

use crate::CodecError;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A schema registry reachable over HTTP.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    url: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct IdReply {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaReply {
    schema: String,
}

#[derive(Deserialize)]
struct VersionRef {
    subject: String,
}

impl RegistryClient {
    pub fn new(url: &str) -> RegistryClient {
        RegistryClient {
            url: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
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

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CodecError> {
        let reply = request
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let status = reply.status();
        if !status.is_success() {
            let body = reply.text().await.unwrap_or_default();
            return Err(self.error(format!("HTTP {status}: {body}")));
        }
        reply.json().await.map_err(|e| self.error(e))
    }

    /// Registers `schema` under `subject` (idempotent in the registry) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, CodecError> {
        let request = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(json!({ "schema": schema }).to_string());
        let reply: IdReply = self.send(request).await?;
        Ok(reply.id)
    }

    /// Fetches the schema with `id` and the subject it is registered under.
    pub async fn fetch(&self, id: u32) -> Result<(String, String), CodecError> {
        let schema: SchemaReply = self
            .send(self.http.get(format!("{}/schemas/ids/{id}", self.url)))
            .await?;
        let versions: Vec<VersionRef> = self
            .send(
                self.http
                    .get(format!("{}/schemas/ids/{id}/versions", self.url)),
            )
            .await?;
        let subject = versions
            .into_iter()
            .next()
            .map(|v| v.subject)
            .ok_or_else(|| self.error(format!("schema id {id} has no subject")))?;
        Ok((subject, schema.schema))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry URL carries its credentials (`https://user:pass@registry`): an error of the
    /// client (here a refused connection) names the registry without them
    /// (`../shared/reviews/audit-2026-12.md` X4: they reached logs and letters' causes).
    #[tokio::test]
    async fn registry_errors_never_show_the_urls_credentials() {
        let client = RegistryClient::new("http://wx:s3cret-pw@127.0.0.1:1/");
        let error = client
            .register("wxstream.ChatMessage", "{}")
            .await
            .expect_err("nothing listens on port 1")
            .to_string();
        assert!(!error.contains("s3cret-pw"), "{error}");
        assert!(error.contains("http://***@127.0.0.1:1"), "{error}");
        let error = client.fetch(7).await.expect_err("refused").to_string();
        assert!(!error.contains("s3cret-pw"), "{error}");
    }
}
