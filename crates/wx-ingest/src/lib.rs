//! The ingest connector: pulls the WeCom chat archive and receives signed callbacks, writing
//! still-encrypted batches to the raw topic.
//!
//! # Layout
//! - `config`: the connector's settings (secrets by reference, `Debug` prints `***`).
//! - `client`: GetChatData behind [`ArchiveClient`]: the vendor SDK by FFI, or the simulator.
//! - `puller`: one corp's loop; the cursor moves only after the broker acknowledged the batch,
//!   and the checkpoint (a compacted topic) is written after that.
//! - `worker`: which corps this process pulls, by Kafka's group protocol on the checkpoint topic.
//! - `callback`: the WXBizMsgCrypt receiver; answers success only after the broker acknowledged.
//!
//! # Invariants
//! Never decrypts archive data and never logs plaintext or secrets. Never advances a cursor past
//! data that is not acknowledged by the broker. No Kafka transactions.

pub mod callback;
pub mod client;
pub mod config;
pub mod liveness;
pub mod puller;
pub mod worker;

pub use callback::CallbackReceiver;
pub use client::{ArchiveClient, Page, PullError, SdkClient, SimulatorClient};
pub use config::{IngestSettings, Secret, SecretRef};
pub use puller::Checkpoint;
pub use worker::{IngestError, IngestWorker, Wakers};
