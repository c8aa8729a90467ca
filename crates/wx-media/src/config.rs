//! The media connector's settings: the `settings` block of `topology/connectors/media.yaml`.

use std::time::Duration;

use serde::Deserialize;
use wx_runtime::settings::{SecretRef, SettingsError, duration};
use wx_wecom::check_corp_ids;
pub use wx_wecom::{ClientKind, ClientSettings};

/// S3's smallest part (every part but the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_BYTES: usize = 5 * 1024 * 1024 * 1024;

fn default_database() -> String {
    "wxstream".into()
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_true() -> bool {
    true
}
fn default_calls_per_minute() -> u32 {
    6000
}
fn default_concurrent() -> usize {
    4
}
fn default_part_size() -> usize {
    8 * 1024 * 1024
}
fn default_md5_attempts() -> u32 {
    3
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_cap() -> Duration {
    Duration::from_secs(30)
}

/// One corp whose media are downloaded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaCorp {
    pub corp_id: String,
    /// The chat archive secret (GetMediaData uses the same SDK handle as GetChatData).
    pub secret: SecretRef,
    /// The secret of the app that receives the corp's callbacks: a callback's file (a
    /// `MediaId`) is fetched with `media/get` under its access token. Without it such files are
    /// parked `media_callback`.
    #[serde(default)]
    pub callback_secret: Option<SecretRef>,
}

/// Where objects go: an S3-compatible bucket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The endpoint, e.g. `http://minio:9000`; absent for Amazon S3 itself.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Keys are `<key_prefix><corp>/<yyyy>/<mm>/<msgid>/<item>` [empty].
    #[serde(default)]
    pub key_prefix: String,
    /// Secrets by reference (`{env: NAME}` or `{file: PATH}`).
    pub access_key_id: SecretRef,
    pub secret_access_key: SecretRef,
    /// Path-style addressing (MinIO and most self-hosted servers) [true].
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// A PEM file of the CA that signed an HTTPS endpoint's certificate, trusted besides the
    /// system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// The media connector's settings. Durations are written like `30s`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSettings {
    /// How WeCom is reached: the block's `client`, `simulator_url`, `sdk_library` and
    /// `sdk_proxy` ([`wx_wecom::ClientSettings`], parsed apart).
    #[serde(skip)]
    pub wecom: ClientSettings,
    /// The corps whose media are downloaded; a message of another corp is parked
    /// (`media_no_corp`).
    pub corps: Vec<MediaCorp>,
    /// GetMediaData calls (chunks) per corp per minute, a token bucket [6000].
    #[serde(default = "default_calls_per_minute")]
    pub calls_per_minute: u32,
    /// Downloads running at once in this worker; with `part_size` it bounds memory (about
    /// `max_concurrent_downloads` x (`part_size` + 1 MiB)) [4].
    #[serde(default = "default_concurrent")]
    pub max_concurrent_downloads: usize,
    /// Bytes per multipart part, at least 5 MiB (S3's smallest) [8 MiB]. A file smaller than
    /// one part is stored with a single PUT.
    #[serde(default = "default_part_size")]
    pub part_size: usize,
    /// Downloads of one file whose MD5 mismatches, before it is parked (`media_md5`) [3].
    #[serde(default = "default_md5_attempts")]
    pub md5_attempts: u32,
    /// Timeout of one GetMediaData call.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Longest pause between retries of a failing call or store.
    #[serde(default = "default_backoff_cap", deserialize_with = "duration")]
    pub backoff_cap: Duration,
    /// Deadline of each call to the object store and to MySQL [30s]: a store that hangs fails
    /// the call once it passes, shown in health and retried, parking nothing.
    #[serde(
        default = "wx_runtime::settings::default_store_timeout",
        deserialize_with = "duration"
    )]
    pub store_timeout: Duration,
    /// WeCom's server API, where `gettoken` and `media/get` are called [the simulator with
    /// `client: simulator`, else `https://qyapi.weixin.qq.com`].
    #[serde(default)]
    pub api_url: Option<String>,
    /// MySQL, for the `media` table (a secret, as the sink's).
    pub mysql_url: SecretRef,
    #[serde(default = "default_database")]
    pub database: String,
    pub s3: S3Settings,
}

impl MediaSettings {
    /// What the types alone do not check (`StageSettings::validate`).
    pub(crate) fn check(&self) -> Result<(), SettingsError> {
        let fail = |field: &str, reason: &str| Err(SettingsError::new(crate::STAGE, field, reason));
        check_corp_ids(crate::STAGE, self.corps.iter().map(|c| c.corp_id.as_str()))?;
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&self.part_size) {
            return fail(
                "part_size",
                "must be between 5 MiB (5242880, S3's smallest part) and 5 GiB",
            );
        }
        if self.max_concurrent_downloads == 0 {
            return fail("max_concurrent_downloads", "must be at least 1");
        }
        if self.calls_per_minute == 0 {
            return fail("calls_per_minute", "must be at least 1");
        }
        if self.md5_attempts == 0 {
            return fail("md5_attempts", "must be at least 1");
        }
        if self.store_timeout.is_zero() {
            return fail("store_timeout", "must be more than 0");
        }
        wx_mysql::check_database(crate::STAGE, &self.database)?;
        if self.s3.bucket.is_empty() {
            return fail("s3.bucket", "must be non-empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<MediaSettings, SettingsError> {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_yaml_ng::from_str(yaml).expect("yaml");
        <MediaSettings as wx_runtime::StageSettings>::parse(&map)
    }

    const MINIMAL: &str = "client: simulator\nsimulator_url: http://s\ncorps: [{corp_id: ww1, secret: {env: S}}]\nmysql_url: {env: M}\ns3: {bucket: b, access_key_id: {env: A}, secret_access_key: {env: K}}\n";

    #[test]
    fn minimal_settings_take_the_defaults() {
        let ok = parse(MINIMAL).expect("ok");
        assert_eq!(ok.part_size, 8 << 20);
        assert_eq!(ok.max_concurrent_downloads, 4);
        assert_eq!(ok.md5_attempts, 3);
        assert!(ok.s3.path_style);
        assert_eq!(ok.s3.endpoint, None);
    }

    #[test]
    fn each_wrong_field_is_named() {
        for (extra, field) in [
            ("part_size: 1048576\n", "part_size"),
            ("max_concurrent_downloads: 0\n", "max_concurrent_downloads"),
            ("md5_attempts: 0\n", "md5_attempts"),
            ("calls_per_minute: 0\n", "calls_per_minute"),
            ("request_timeout: soon\n", "request_timeout"),
            ("unknown_field: 1\n", "unknown_field"),
            ("database: 'a;b'\n", "database"),
        ] {
            let e = parse(&format!("{MINIMAL}{extra}")).expect_err(extra);
            assert!(e.to_string().contains(field), "{extra}: {e}");
        }
        let e = parse(&MINIMAL.replace("simulator_url: http://s\n", "")).expect_err("no url");
        assert!(e.to_string().contains("simulator_url"), "{e}");
        let e = parse(&MINIMAL.replace("client: simulator", "client: sdk")).expect_err("no lib");
        assert!(e.to_string().contains("sdk_library"), "{e}");
        let e = parse(&MINIMAL.replace("client: simulator", "client: carrier_pigeon"))
            .expect_err("no such client");
        assert!(e.to_string().contains("client"), "{e}");
    }

    #[test]
    fn the_wecom_client_fields_are_parsed_apart_into_the_shared_settings() {
        let ok = parse(&MINIMAL.replace(
            "client: simulator\nsimulator_url: http://s\n",
            "client: sdk\nsdk_library: /opt/sdk.so\nsdk_proxy: http://proxy:3128\n",
        ))
        .expect("ok");
        assert_eq!(ok.wecom.client, ClientKind::Sdk);
        assert_eq!(
            ok.wecom.sdk_library.as_deref(),
            Some(std::path::Path::new("/opt/sdk.so"))
        );
        assert_eq!(ok.wecom.sdk_proxy, "http://proxy:3128");
        assert_eq!(ok.wecom.simulator_url, None);
        let e = parse(&MINIMAL.replace("secret_access_key: {env: K}", "secret_access_key: plain"))
            .expect_err("a secret given as a value");
        assert!(e.to_string().contains("secret_access_key"), "{e}");
    }

    #[test]
    fn the_repository_connector_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology");
        let topology = wx_topology::load_dir(&dir).expect("topology");
        let media = topology
            .connectors
            .iter()
            .find(|c| c.class == wx_topology::ConnectorClass::Media)
            .expect("a media connector");
        let settings =
            <MediaSettings as wx_runtime::StageSettings>::parse(&media.settings).expect("parses");
        assert_eq!(settings.corps.len(), 3);
        assert!(settings.part_size >= MIN_PART_BYTES);
    }
}
