//! The S3 adapter: an S3-compatible bucket through the AWS SDK for Rust (MinIO, Amazon S3, and
//! others that speak the S3 API). The only crate that uses `aws-sdk-s3`; stages depend on this
//! crate, never on each other.
//!
//! Objects carry their MD5 as user metadata (`x-amz-meta-md5`), set when the upload begins: a
//! multipart object's ETag is not the MD5 of its bytes, so the metadata is what says an object
//! is already stored with the right content. Every part and single upload is sent with its
//! `Content-MD5`, so the server refuses bytes damaged on the way.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;

pub use bytes::Bytes;

/// The metadata key of an object's MD5 (lower-case hex).
pub const MD5_METADATA: &str = "md5";

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The multipart upload no longer exists (aborted, expired by a lifecycle rule, or already
    /// completed): begin the object again.
    #[error("the multipart upload is gone: {0}")]
    UploadGone(String),
    /// The server refused a body as damaged (`BadDigest`): send it again.
    #[error("the store refused a damaged body: {0}")]
    BadDigest(String),
    /// The server refuses this object as such: its key or its size (`KeyTooLongError`,
    /// `EntityTooLarge`). No retry of the same object can succeed: the item is parked. (From
    /// `head`: it may not be looked at, 403; the caller goes on without knowing.)
    /// (`InvalidArgument` is not one: it mostly names a setting, such as encryption or storage
    /// class, that every object shares, so it is the store's configuration, retried and shown.)
    #[error("the store refuses the object: {0}")]
    Refused(String),
    /// Anything else: unreachable, 5xx, throttling, credentials or permissions refused, a
    /// missing bucket. Retried with backoff while consumption is paused, parking nothing: the
    /// data is good, the store (or its configuration) is not.
    #[error("object store: {0}")]
    Unavailable(String),
    /// The client cannot be made as configured (a CA file that cannot be read): the stage
    /// stops, naming it.
    #[error("object store configuration: {0}")]
    Config(String),
}

/// What an S3 error code says, in [`StoreError`]'s classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    /// [`StoreError::UploadGone`]: the upload is gone, or the parts as sent cannot make the
    /// object (a part missing, out of order or too small, a malformed part list): begin again.
    UploadGone,
    /// [`StoreError::BadDigest`].
    BadDigest,
    /// [`StoreError::Refused`].
    Refused,
    /// [`StoreError::Unavailable`].
    Unavailable,
}

/// The class of an S3 error code (empty: no code, e.g. a connection refused or a timeout).
pub fn code_class(code: &str) -> CodeClass {
    match code {
        "NoSuchUpload" | "InvalidPart" | "InvalidPartOrder" | "EntityTooSmall" | "MalformedXML" => {
            CodeClass::UploadGone
        }
        "BadDigest" | "InvalidDigest" => CodeClass::BadDigest,
        "KeyTooLongError" | "EntityTooLarge" => CodeClass::Refused,
        _ => CodeClass::Unavailable,
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: SdkError<E>,
) -> StoreError {
    let code = e.code().unwrap_or_default().to_string();
    let message = match &e {
        SdkError::ServiceError(s) => {
            format!("{} {}", code, s.err().message().unwrap_or("(no message)"))
        }
        other => {
            use std::error::Error as _;
            let mut text = other.to_string();
            let mut source = other.source();
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    };
    match code_class(&code) {
        CodeClass::UploadGone => StoreError::UploadGone(message),
        CodeClass::BadDigest => StoreError::BadDigest(message),
        CodeClass::Refused => StoreError::Refused(message),
        CodeClass::Unavailable => StoreError::Unavailable(message),
    }
}

/// An object as HEAD reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// The `md5` metadata, when the object has it.
    pub md5: Option<String>,
}

/// How to reach a bucket.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `http://host/bucket/key` rather than `http://bucket.host/key` (MinIO and most
    /// self-hosted servers).
    pub path_style: bool,
    /// Deadline of each call, its retries included: a server that does not answer within it
    /// (frozen, blackholed) fails the call as [`StoreError::Unavailable`].
    pub timeout: std::time::Duration,
    /// A PEM file of a CA trusted besides the system's roots (an HTTPS endpoint whose
    /// certificate a private CA signed).
    pub ca_file: Option<std::path::PathBuf>,
}

/// One bucket.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    client: Client,
    bucket: String,
}

/// Base64 of an MD5 digest (the `Content-MD5` header).
pub fn content_md5(digest: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

impl ObjectStore {
    /// The client of `config`'s bucket; Err([`StoreError::Config`]) when its CA file cannot be
    /// read or holds no certificate.
    pub fn new(config: &StoreConfig) -> Result<ObjectStore, StoreError> {
        let credentials = Credentials::new(
            &config.access_key_id,
            &config.secret_access_key,
            None,
            None,
            "wxstream-settings",
        );
        // rustls with ring and the system's trust store, plus the configured CA
        // (ARCHITECTURE.md: aws-smithy-http-client).
        use aws_smithy_http_client::tls;
        let mut trust = tls::TrustStore::default();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::Config(format!(
                    "the CA file {} cannot be read: {e}",
                    path.display()
                ))
            })?;
            // Parsed here: the client parses it only at its first connection, and panics on a
            // malformed certificate (or ignores a file without one).
            use rustls_pki_types::pem::PemObject as _;
            let certificates = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Config(format!("the CA file {}: {e}", path.display())))?;
            if certificates.is_empty() {
                return Err(StoreError::Config(format!(
                    "the CA file {} holds no PEM certificate",
                    path.display()
                )));
            }
            trust = trust.with_pem_certificate(pem);
        }
        let context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| StoreError::Config(format!("the TLS context: {e}")))?;
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(context)
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(https)
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.path_style)
            // Every body carries its Content-MD5 already; no second checksum is computed.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(config.timeout)
                    .operation_attempt_timeout(config.timeout)
                    .operation_timeout(config.timeout)
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(ObjectStore {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Whether the bucket exists and these credentials may use it (checked at start: a wrong
    /// bucket or key stops the stage visibly rather than retrying for ever).
    pub async fn check_bucket(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// The object at `key`, if there is one.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(ObjectInfo {
                size: u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0),
                md5: head
                    .metadata()
                    .and_then(|m| m.get(MD5_METADATA))
                    .map(|m| m.to_ascii_lowercase()),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            // HEAD carries no error code; 403 is a policy that lets this writer put but not
            // read (or wrong credentials, which the next PUT shows as `AccessDenied`, retried).
            // Whether the object is there cannot be told: the caller decides without it.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => Err(
                StoreError::Refused("HEAD answered 403: the object cannot be looked at".into()),
            ),
            Err(e) => Err(classify(e)),
        }
    }

    /// A whole object in one request (files smaller than one part).
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        md5_hex: &str,
        md5_digest: &[u8],
    ) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_md5(content_md5(md5_digest))
            .metadata(MD5_METADATA, md5_hex)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Begins a multipart upload whose object will carry `md5_hex` (the MD5 WeCom states; the
    /// upload is completed only once the bytes are shown to have it; empty when WeCom states
    /// none, and then the object has no `md5` metadata).
    pub async fn begin_upload(
        &self,
        key: &str,
        content_type: &str,
        md5_hex: &str,
    ) -> Result<String, StoreError> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type);
        if !md5_hex.is_empty() {
            create = create.metadata(MD5_METADATA, md5_hex);
        }
        let created = create.send().await.map_err(classify)?;
        created.upload_id().map(str::to_string).ok_or_else(|| {
            StoreError::Unavailable("CreateMultipartUpload gave no upload id".into())
        })
    }

    /// Stores part `number` (from 1), sent with its Content-MD5; returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        use md5::Digest as _;
        let md5_digest = md5::Md5::digest(&body);
        let part = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_md5(content_md5(&md5_digest))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(classify)?;
        Ok(part.e_tag().unwrap_or_default().to_string())
    }

    /// Completes an upload from its parts (number, ETag), in order.
    pub async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StoreError> {
        let parts = parts
            .iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(*n).e_tag(etag).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Aborts an upload (its parts are deleted); one already gone is not an error.
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(classify)
        {
            Ok(_) | Err(StoreError::UploadGone(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the object at `key` (one that is not there is not an error).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// The unfinished multipart uploads under `prefix`: (key, upload id). The bucket's uploads
    /// are listed whole and filtered here: MinIO answers a `prefix` that is not a whole object
    /// key with no uploads at all (Amazon S3 filters by prefix), which made every "no upload is
    /// left" check pass whatever was left.
    pub async fn list_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(classify)?;
            for upload in page.uploads() {
                let key = upload.key().unwrap_or_default();
                if key.starts_with(prefix) {
                    out.push((
                        key.to_string(),
                        upload.upload_id().unwrap_or_default().to_string(),
                    ));
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
        }
    }

    /// The objects under `prefix`: (key, size).
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        let mut token = None::<String>;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(classify)?;
            for object in page.contents() {
                out.push((
                    object.key().unwrap_or_default().to_string(),
                    u64::try_from(object.size().unwrap_or(0)).unwrap_or(0),
                ));
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// The MD5 (lower-case hex) and size of an object's bytes as the store serves them, read
    /// as a stream (tests and `bench media`; the stage itself hashes what it uploads).
    pub async fn md5_of(&self, key: &str) -> Result<(String, u64), StoreError> {
        use md5::Digest as _;
        let mut hasher = md5::Md5::new();
        let size = self.read(key, |bytes| hasher.update(bytes)).await?;
        Ok((hex::encode(hasher.finalize()), size))
    }

    /// An object's bytes (`wxstream export` attaches media files).
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.read(key, |bytes| out.extend_from_slice(bytes)).await?;
        Ok(out)
    }

    /// Streams an object's bytes to `each`, chunk by chunk; its size.
    async fn read(&self, key: &str, mut each: impl FnMut(&[u8])) -> Result<u64, StoreError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        let mut body = object.body;
        let mut size = 0u64;
        while let Some(bytes) = body
            .try_next()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
        {
            size += bytes.len() as u64;
            each(&bytes);
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_its_class() {
        for (code, class) in [
            ("NoSuchUpload", CodeClass::UploadGone),
            ("InvalidPart", CodeClass::UploadGone),
            ("InvalidPartOrder", CodeClass::UploadGone),
            ("EntityTooSmall", CodeClass::UploadGone),
            ("MalformedXML", CodeClass::UploadGone),
            ("BadDigest", CodeClass::BadDigest),
            ("InvalidDigest", CodeClass::BadDigest),
            ("KeyTooLongError", CodeClass::Refused),
            ("EntityTooLarge", CodeClass::Refused),
            ("InvalidArgument", CodeClass::Unavailable),
            ("AccessDenied", CodeClass::Unavailable),
            ("SlowDown", CodeClass::Unavailable),
            ("NoSuchBucket", CodeClass::Unavailable),
            ("", CodeClass::Unavailable),
        ] {
            assert_eq!(code_class(code), class, "{code}");
        }
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_when_the_client_is_made() {
        let dir = std::env::temp_dir().join(format!("wx-s3-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = |ca: &str| StoreConfig {
            endpoint: Some("https://127.0.0.1:1".into()),
            region: "us-east-1".into(),
            bucket: "b".into(),
            access_key_id: "a".into(),
            secret_access_key: "s".into(),
            path_style: true,
            timeout: std::time::Duration::from_secs(1),
            ca_file: Some(dir.join(ca)),
        };
        std::fs::write(dir.join("empty.pem"), "no certificate here\n").expect("write");
        std::fs::write(
            dir.join("broken.pem"),
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        for (file, says) in [
            ("empty.pem", "holds no PEM certificate"),
            ("broken.pem", "broken.pem"),
            ("missing.pem", "cannot be read"),
        ] {
            match ObjectStore::new(&config(file)) {
                Err(StoreError::Config(text)) => assert!(text.contains(says), "{file}: {text}"),
                other => panic!("{file}: {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
