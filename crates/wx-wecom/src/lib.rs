//! The WeCom adapter, for every stage that calls WeCom (ingest pulls GetChatData, media pulls
//! GetMediaData): one client type per way of reaching it, the vendor SDK by FFI
//! ([`SdkClient`]) and the project's simulator over HTTP ([`SimulatorClient`]), each serving
//! both calls with their replies classed (transient, rate-limited, refused, gone), and the
//! settings both stages share. Stages depend on this crate, never on each other.

pub mod client;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wx_runtime::settings::SettingsError;

pub use client::{
    ArchiveClient, MalformedItem, MediaChunk, MediaClient, MediaError, Page, PullError, SdkClient,
    SimulatorClient,
};

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

/// The archive client's settings, for every stage that calls WeCom (ingest, media): the
/// simulator needs its URL, the SDK its library.
pub fn check_client(
    stage: &str,
    client: ClientKind,
    simulator_url: Option<&str>,
    sdk_library: Option<&Path>,
) -> Result<(), SettingsError> {
    match client {
        ClientKind::Simulator if simulator_url.is_none() => Err(SettingsError::new(
            stage,
            "simulator_url",
            "required with `client: simulator`",
        )),
        ClientKind::Sdk if sdk_library.is_none() => Err(SettingsError::new(
            stage,
            "sdk_library",
            "required with `client: sdk` (path of libWeWorkFinanceSdk_C.so)",
        )),
        _ => Ok(()),
    }
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
