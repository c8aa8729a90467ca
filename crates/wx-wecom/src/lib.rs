//! The WeCom adapter, for every stage that calls WeCom (ingest pulls GetChatData, media pulls
//! GetMediaData): one client type per way of reaching it, the vendor SDK by FFI
//! ([`SdkClient`]) and the project's simulator over HTTP ([`SimulatorClient`]), each serving
//! both calls with their replies classed (transient, rate-limited, refused, gone), and the
//! settings both stages share. Stages depend on this crate, never on each other.

pub mod client;
pub mod media_get;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wx_runtime::StageSettings;
use wx_runtime::settings::{
    ConsumerSettings, SettingsError, parse_settings, parse_stage_settings, split_fields,
};

pub use client::{
    ArchiveClient, MalformedItem, MediaChunk, MediaClient, MediaError, Page, PullError, SdkClient,
    SimulatorClient,
};
pub use media_get::MediaGetClient;

/// Where WeCom's server API (`gettoken`, `media/get`) is, unless a stage says otherwise.
pub const WECOM_API_URL: &str = "https://qyapi.weixin.qq.com";

/// Which archive client to pull with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// The vendor SDK, loaded by path (`sdk_library`).
    Sdk,
    /// The project's WeCom simulator over HTTP (`simulator_url`).
    Simulator,
}

/// One client of either kind: both calls.
pub trait WecomClient: ArchiveClient + MediaClient {}
impl<T: ArchiveClient + MediaClient> WecomClient for T {}

/// How a stage reaches WeCom: its `client` setting and what that kind needs.
#[derive(Debug, Clone, Copy)]
pub struct ClientSpec<'a> {
    pub kind: ClientKind,
    /// `simulator_url` (client: simulator).
    pub simulator_url: Option<&'a str>,
    /// `sdk_library` (client: sdk).
    pub sdk_library: Option<&'a Path>,
    /// `sdk_proxy` (client: sdk; empty for none).
    pub sdk_proxy: &'a str,
    /// Each call's deadline.
    pub timeout: Duration,
    /// The worker's id, in the simulator's request log.
    pub worker: &'a str,
}

impl ClientSpec<'_> {
    /// Where `media/get` is called: `configured`, else the simulator (client: simulator), else
    /// WeCom's API.
    pub fn api_url<'b>(&'b self, configured: Option<&'b str>) -> &'b str {
        configured.unwrap_or(match self.kind {
            ClientKind::Simulator => self.simulator_url.unwrap_or(WECOM_API_URL),
            ClientKind::Sdk => WECOM_API_URL,
        })
    }

    /// The client of one corp.
    pub fn open(
        &self,
        corp_id: &str,
        secret: &str,
    ) -> Result<Arc<dyn WecomClient>, wx_finance_sdk::SdkError> {
        Ok(match self.kind {
            ClientKind::Simulator => Arc::new(SimulatorClient::new(
                self.simulator_url.unwrap_or_default(),
                corp_id,
                secret,
                self.timeout,
                self.worker,
            )),
            ClientKind::Sdk => Arc::new(SdkClient::load(
                self.sdk_library.unwrap_or(Path::new("")),
                corp_id,
                secret,
                self.sdk_proxy,
                self.timeout,
            )?),
        })
    }
}

/// How a stage reaches WeCom: the `client`, `simulator_url`, `sdk_library` and `sdk_proxy`
/// fields of its settings block, which every stage that calls WeCom (ingest, media) takes the
/// same way. They are parsed apart from the stage's own fields ([`parse_with_client`]), as the
/// consumer's fields are, so both structs keep rejecting unknown fields and naming the field
/// in an error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// `sdk` or `simulator`.
    pub client: ClientKind,
    /// Base URL of the simulator (client: simulator).
    #[serde(default)]
    pub simulator_url: Option<String>,
    /// Path of libWeWorkFinanceSdk_C.so (client: sdk).
    #[serde(default)]
    pub sdk_library: Option<PathBuf>,
    /// An HTTP proxy the SDK reaches WeCom through (client: sdk).
    #[serde(default)]
    pub sdk_proxy: String,
}

/// Only a placeholder for the stage struct's skipped field, which [`parse_with_client`]
/// always replaces with what the block says; never used to reach WeCom.
impl Default for ClientSettings {
    fn default() -> ClientSettings {
        ClientSettings {
            client: ClientKind::Simulator,
            simulator_url: None,
            sdk_library: None,
            sdk_proxy: String::new(),
        }
    }
}

impl ClientSettings {
    /// The field names, taken out of a settings block before the stage's own are parsed.
    pub const FIELDS: [&'static str; 4] = ["client", "simulator_url", "sdk_library", "sdk_proxy"];

    /// The simulator needs its URL, the SDK its library.
    pub fn check(&self, stage: &str) -> Result<(), SettingsError> {
        match self.client {
            ClientKind::Simulator if self.simulator_url.is_none() => Err(SettingsError::new(
                stage,
                "simulator_url",
                "required with `client: simulator`",
            )),
            ClientKind::Sdk if self.sdk_library.is_none() => Err(SettingsError::new(
                stage,
                "sdk_library",
                "required with `client: sdk` (path of libWeWorkFinanceSdk_C.so)",
            )),
            _ => Ok(()),
        }
    }

    /// The clients' recipe: these settings, each call's deadline, the worker's id.
    pub fn spec<'a>(&'a self, timeout: Duration, worker: &'a str) -> ClientSpec<'a> {
        ClientSpec {
            kind: self.client,
            simulator_url: self.simulator_url.as_deref(),
            sdk_library: self.sdk_library.as_deref(),
            sdk_proxy: &self.sdk_proxy,
            timeout,
            worker,
        }
    }
}

/// The settings of a stage that calls WeCom: where its [`ClientSettings`] go.
pub trait WecomSettings: StageSettings {
    /// The stage struct's `#[serde(skip)]` field that holds them.
    fn wecom_mut(&mut self) -> &mut ClientSettings;
}

/// `StageSettings::parse_with_consumer` for a stage that calls WeCom: the client's fields
/// and the consumer's are split off, then the stage's own are parsed and everything checked.
pub fn parse_with_client<S: WecomSettings>(
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<(S, ConsumerSettings), SettingsError> {
    let (client, own) = split_fields(settings, &ClientSettings::FIELDS);
    let client: ClientSettings = parse_settings(S::NAME, &client)?;
    client.check(S::NAME)?;
    let (mut parsed, consumer) = parse_stage_settings::<S>(S::NAME, &own)?;
    *parsed.wecom_mut() = client;
    parsed.validate()?;
    Ok((parsed, consumer))
}

/// A `corps` list: at least one, each id non-empty and unique.
pub fn check_corp_ids<'a>(
    stage: &str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<(), SettingsError> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, id) in ids.enumerate() {
        if id.is_empty() || !seen.insert(id) {
            return Err(SettingsError::new(
                stage,
                &format!("corps[{i}].corp_id"),
                "must be non-empty and unique",
            ));
        }
    }
    if seen.is_empty() {
        return Err(SettingsError::new(stage, "corps", "list at least one corp"));
    }
    Ok(())
}
