//! `wxstream sim`: the WeCom simulator as a service, for the demo and for manual testing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use wx_sim::{
    CallbackConfig, CallbackSender, CorpFeed, FaultRates, FeedSpec, MediaSizes, MediaSpec,
    ServerConfig, SimKeys, Simulator,
};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to serve GetChatData, GetMediaData and the ground truth on.
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// Number of corps (ids wwsim0, wwsim1, ...; secret `secret-<corp id>`).
    #[arg(long, default_value_t = 3)]
    corps: u32,
    /// Messages per corp.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Messages per second per corp as they "arrive" (rate mode); without it every message is
    /// available at once (bulk mode).
    #[arg(long)]
    rate: Option<u32>,
    /// Seed of the generator: the same seed gives the same msgids and payloads.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Probability of each poison fault per message (corrupt ciphertext, unknown key version,
    /// invalid JSON), and of raw control characters.
    #[arg(long, default_value_t = 0.005)]
    fault_rate: f64,
    /// Probability of a transient error (10001-10003) per GetChatData call.
    #[arg(long, default_value_t = 0.0)]
    transient_error_rate: f64,
    /// GetChatData calls per corp per minute.
    #[arg(long, default_value_t = 600)]
    calls_per_minute: u32,
    /// Where to write the private keys the decrypt stage gets (versions 1 and 2).
    #[arg(long, default_value = "var/keys")]
    keys_out: PathBuf,
    /// Where to write the withheld key (version 99), for the redrive exercise.
    #[arg(long, default_value = "var/keys-withheld")]
    withheld_keys_out: PathBuf,
    /// Read the private keys (versions 1, 2 and 99, files `<version>.pem`) from these
    /// directories instead of generating them; nothing is written (the Helm chart's demo mounts
    /// the keys it generated as Secrets, so the decrypt pods and the simulator share them).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    keys_from: Vec<PathBuf>,
    /// Send signed `msgaudit_notify` callbacks to this URL when new data has arrived (`{corp}`
    /// is replaced by the corp id).
    #[arg(long)]
    callback_url: Option<String>,
    /// The callback token (with --callback-url).
    #[arg(long, env = "WECOM_CALLBACK_TOKEN", default_value = "")]
    callback_token: String,
    /// The callback EncodingAESKey, 43 characters (with --callback-url).
    #[arg(long, env = "WECOM_CALLBACK_AES_KEY", default_value = "")]
    callback_aes_key: String,
    /// Least time between two notifications of one corp (WeCom's is about 15 s).
    #[arg(long, default_value_t = 15)]
    notify_interval_s: u64,
    /// Media file sizes: `small` (200 B-40 KB, one in twenty about 1 MB) or `realistic` (by
    /// kind, KB to `--media-max-mb`).
    #[arg(long, default_value = "small", value_parser = ["small", "realistic"])]
    media_sizes: String,
    /// The largest media file with `--media-sizes realistic`, in MB.
    #[arg(long, default_value_t = 30)]
    media_max_mb: usize,
    /// Share of media files that have expired (GetMediaData answers 10010).
    #[arg(long, default_value_t = 0.0)]
    media_expired_rate: f64,
    /// Share of media files whose first download is corrupted (the MD5 check catches it).
    #[arg(long, default_value_t = 0.0)]
    media_md5_fault_rate: f64,
}

/// Notifies each corp's receiver when new data has arrived since the last notification.
async fn notify_loop(sim: Simulator, sender: CallbackSender, interval: std::time::Duration) {
    let mut notified: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    loop {
        for corp in sim.corp_ids() {
            let Some(newest) = sim.newest_arrived_seq(&corp) else {
                continue;
            };
            if notified.get(&corp).is_some_and(|n| *n >= newest) {
                continue;
            }
            let delivery = sender.msgaudit_notify(&corp).await;
            tracing::info!(corp = %corp, newest_seq = newest, delivered = delivery.delivered, attempts = delivery.attempts, "Sent msgaudit_notify.");
            if delivery.delivered {
                notified.insert(corp, newest);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

pub async fn run(args: SimArgs) -> anyhow::Result<i32> {
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let keys = if args.keys_from.is_empty() {
        let keys = SimKeys::generate(&[1, 2, 99])?;
        keys.write_private(&args.keys_out, |v| v != 99)?;
        keys.write_private(&args.withheld_keys_out, |v| v == 99)?;
        keys
    } else {
        let dirs: Vec<&std::path::Path> = args.keys_from.iter().map(PathBuf::as_path).collect();
        let keys = SimKeys::load_dirs(&dirs)?;
        anyhow::ensure!(
            keys.versions() == [1, 2, 99],
            "--keys-from must hold the private keys of versions 1, 2 and 99 (found {:?})",
            keys.versions()
        );
        keys
    };
    let (start_ms, spacing_ms) = match args.rate {
        Some(rate) => (now, 1000 / i64::from(rate.max(1))),
        None => (now - i64::try_from(args.messages)? * 10, 10),
    };
    let faults = FaultRates {
        corrupt_ciphertext: args.fault_rate,
        unknown_key_version: args.fault_rate,
        invalid_json: args.fault_rate,
        control_chars: args.fault_rate,
    };
    let mut corps = Vec::new();
    for i in 0..args.corps {
        let corp_id = format!("wwsim{i}");
        let spec = FeedSpec {
            corp_id: corp_id.clone(),
            seed: args.seed + u64::from(i),
            messages: args.messages,
            start_ms,
            spacing_ms,
            key_versions: vec![1, 2],
            withheld_key_version: 99,
            faults,
            media: MediaSpec {
                sizes: if args.media_sizes == "realistic" {
                    MediaSizes::Realistic
                } else {
                    MediaSizes::Small
                },
                max_bytes: args.media_max_mb << 20,
                expired_rate: args.media_expired_rate,
            },
        };
        let feed = CorpFeed::build(&spec, &keys)?;
        let poison = feed.truth.iter().filter(|t| t.poison).count();
        tracing::info!(corp = %corp_id, messages = feed.items.len(), poison, "Generated the corp's feed.");
        corps.push((feed, format!("secret-{corp_id}")));
    }
    let config = ServerConfig {
        calls_per_minute: args.calls_per_minute,
        transient_error_rate: args.transient_error_rate,
        media_md5_fault_rate: args.media_md5_fault_rate,
        seed: args.seed,
        ..ServerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(address = %args.listen, "The WeCom simulator is serving.");
    let sim = Simulator::new(config, corps);
    if let Some(url) = args.callback_url {
        let sender = CallbackSender::new(CallbackConfig {
            url,
            token: args.callback_token,
            encoding_aes_key: args.callback_aes_key,
            attempts: 3,
            retry_ms: 5_000,
            json: false,
        })
        .context("invalid callback settings (--callback-token, --callback-aes-key)")?;
        let interval = std::time::Duration::from_secs(args.notify_interval_s.max(1));
        tokio::spawn(notify_loop(sim.clone(), sender, interval));
    }
    sim.serve(listener, async {
        tokio::signal::ctrl_c().await.ok();
    })
    .await?;
    Ok(0)
}
