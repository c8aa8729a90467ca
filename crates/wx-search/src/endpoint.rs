//! Where the search cluster is and how it is reached: one or more node URLs (requests go round
//! robin), the CA its HTTPS certificates are verified against, and basic authentication or an
//! API key, each secret resolved from a reference and never shown.

use std::path::{Path, PathBuf};

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::Url;
use elasticsearch::http::transport::{
    MultiNodeConnectionPool, SingleNodeConnectionPool, Transport, TransportBuilder,
};
use wx_runtime::settings::{Secret, redact_urls};

/// How requests authenticate.
#[derive(Clone)]
pub enum Auth {
    /// HTTP basic authentication.
    Basic { username: String, password: Secret },
    /// An API key in its encoded form (`base64(id:api_key)`, what Elasticsearch's create-API-key
    /// call returns as `encoded`), sent as `Authorization: ApiKey <key>`.
    ApiKey(Secret),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .finish_non_exhaustive(),
            Auth::ApiKey(_) => f.write_str("ApiKey(..)"),
        }
    }
}

/// A search cluster's nodes, trust and credentials (`Debug` shows the URLs without
/// credentials).
#[derive(Clone)]
pub struct Endpoint {
    /// Node URLs, `http://` or `https://`; several are used round robin.
    pub urls: Vec<String>,
    /// A PEM file of the CA (or CAs) the nodes' certificates are verified against, host names
    /// included; without it, the system's roots.
    pub ca_file: Option<PathBuf>,
    pub auth: Option<Auth>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("urls", &self.shown())
            .field("ca_file", &self.ca_file)
            .field("auth", &self.auth)
            .finish()
    }
}

impl Endpoint {
    /// One node URL, credentials in it (`http://user:pass@host:9200`) taken as basic
    /// authentication (benches and tests; the sink's settings give them apart, by reference).
    pub fn url(url: &str) -> Endpoint {
        Endpoint {
            urls: vec![url.to_string()],
            ca_file: None,
            auth: None,
        }
    }

    /// The URLs as errors and logs show them (no credentials).
    pub fn shown(&self) -> String {
        redact_urls(&self.urls.join(","))
    }

    /// The client's transport, every request with `timeout` as its deadline. An error names
    /// what is wrong (a URL, the CA file, credentials given twice) without quoting a secret.
    pub(crate) fn transport(&self, timeout: std::time::Duration) -> Result<Transport, String> {
        let mut auth = self.auth.as_ref().map(|auth| match auth {
            Auth::Basic { username, password } => {
                Credentials::Basic(username.clone(), password.expose().to_string())
            }
            Auth::ApiKey(key) => Credentials::EncodedApiKey(key.expose().to_string()),
        });
        let mut urls = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            let mut parsed = Url::parse(url.trim())
                .map_err(|e| format!("`{}` is not a URL: {e}", redact_urls(url)))?;
            // Credentials in a URL become basic authentication (left in the URL, reqwest would
            // send a second Authorization header), as `Transport::single_node` does.
            if !parsed.username().is_empty() {
                if self.auth.is_some() {
                    return Err(format!(
                        "`{}` carries credentials and others are configured: give them once",
                        redact_urls(url)
                    ));
                }
                let password = parsed.password().unwrap_or_default().to_string();
                auth = Some(Credentials::Basic(parsed.username().to_string(), password));
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
            }
            urls.push(parsed);
        }
        let mut builder = match urls.len() {
            0 => return Err("no node URL is configured".into()),
            1 => TransportBuilder::new(SingleNodeConnectionPool::new(urls.remove(0))),
            _ => TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None)),
        }
        .timeout(timeout);
        if let Some(auth) = auth {
            builder = builder.auth(auth);
        }
        if let Some(path) = &self.ca_file {
            builder = builder.cert_validation(CertificateValidation::Full(read_ca(path)?));
        }
        builder.build().map_err(|e| redact_urls(&e.to_string()))
    }
}

fn read_ca(path: &Path) -> Result<Certificate, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("the CA file {} cannot be read: {e}", path.display()))?;
    Certificate::from_pem(&pem).map_err(|e| {
        format!(
            "the CA file {} holds no PEM certificate: {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_problem_and_no_secret() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = |value: &str| {
            let path = dir.path().join("secret");
            std::fs::write(&path, value).expect("write");
            wx_runtime::settings::SecretRef::File(path)
                .resolve()
                .expect("secret")
        };
        let timeout = std::time::Duration::from_secs(1);
        let none = Endpoint {
            urls: vec![],
            ..Endpoint::url("")
        };
        assert_eq!(
            none.transport(timeout).unwrap_err(),
            "no node URL is configured"
        );
        let twice = Endpoint {
            auth: Some(Auth::ApiKey(secret("k"))),
            ..Endpoint::url("https://u:hunter2@h:9200")
        };
        let e = twice.transport(timeout).unwrap_err();
        assert!(
            e.contains("give them once") && !e.contains("hunter2"),
            "{e}"
        );
        let missing = Endpoint {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Endpoint::url("https://h:9200")
        };
        let e = missing.transport(timeout).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let bad = Endpoint {
            ca_file: Some(junk),
            ..Endpoint::url("https://h:9200")
        };
        let e = bad.transport(timeout).unwrap_err();
        assert!(e.contains("junk.pem"), "{e}");
        let several = Endpoint {
            urls: vec!["https://a:9200".into(), " https://b:9200".into()],
            auth: Some(Auth::Basic {
                username: "wx".into(),
                password: secret("hunter2"),
            }),
            ca_file: None,
        };
        assert!(several.transport(timeout).is_ok());
        assert!(!format!("{several:?}").contains("hunter2"));
        let inline = Endpoint::url("https://u:hunter2@h:9200");
        assert!(!format!("{inline:?}").contains("hunter2"), "{inline:?}");
    }
}
