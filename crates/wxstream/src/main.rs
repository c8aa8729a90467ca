//! The wxstream worker: one binary for every stage, the role picked by subcommand, so one image
//! serves every Kubernetes Deployment.
//!
//! Subcommands: `topology` (apply / check / show), `schemas` (the id table), `sim` (the WeCom
//! simulator), `run` (the stages: ingest and decrypt today), `redrive` (replay dead letters) and
//! `bench` (benchmarks that print figures).

mod archive_cmd;
mod audit;
mod auth;
mod bench;
mod config;
mod connectors;
mod erase_cmd;
mod export_cmd;
mod herder;
mod loggers;
mod ops;
mod purge;
mod redrive_cmd;
mod retention_cmd;
mod run_cmd;
mod sim_cmd;
mod stages;
mod topology_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, WorkerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "wxstream",
    version,
    about = "Archive WeCom chat messages through Kafka."
)]
struct Cli {
    /// A YAML config file layered over config/defaults.yaml (and under WXSTREAM_* variables).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides every config layer).
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// Topology directory (overrides every config layer).
    #[arg(long, global = true)]
    topology: Option<PathBuf>,
    /// Prefix for every topic name (overrides every config layer).
    #[arg(long, global = true)]
    topic_prefix: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, check or show the topics and connectors of topology/.
    Topology {
        #[command(subcommand)]
        command: topology_cmd::TopologyCommand,
    },
    /// Print the schema id and subject of each record kind (registered first with a registry and
    /// `auto_register`).
    Schemas,
    /// Run the WeCom simulator (GetChatData, GetMediaData, ground truth) over HTTP.
    Sim(sim_cmd::SimArgs),
    /// Run the pipeline's stages (ingest, decrypt, sink, stats) until SIGTERM/SIGINT.
    Run(run_cmd::RunArgs),
    /// Replay parked dead letters through decryption (after adding a key, fixing a cause).
    Redrive(redrive_cmd::RedriveArgs),
    /// The audit log of operator actions: verify its hash chain, list its entries.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Retention: delete what each corp's retention (topology/retention.yaml) no longer keeps.
    Retention {
        #[command(subcommand)]
        command: retention_cmd::RetentionCommand,
    },
    /// Erase one person's messages from every store (PIPL Art. 47); refused under a legal hold.
    Erase(erase_cmd::EraseArgs),
    /// Export a custodian's or a conversation's messages for eDiscovery (RSMF 2.0, an index, SHA-256 sums).
    Export(export_cmd::ExportArgs),
    /// Legal holds: messages they cover survive retention and erasure.
    Hold {
        #[command(subcommand)]
        command: archive_cmd::HoldCommand,
    },
    /// Write the daily digests (a SHA-256 per corp and complete day) to the audit log.
    Digest(archive_cmd::DigestArgs),
    /// Recompute a corp's day's digest and report a change no recorded retention or erasure explains.
    Verify(archive_cmd::VerifyArgs),
    /// Benchmarks that print figures (never a test).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

/// The process's logging: `RUST_LOG`, else `log.filter`, else `info`; the filter can be
/// changed while it runs (`/admin/loggers`).
fn init_logging(config: &WorkerConfig) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (directives, filter) = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .and_then(|d| EnvFilter::try_new(&d).ok().map(|f| (d, f)))
        .or_else(|| {
            EnvFilter::try_new(&config.log.filter)
                .ok()
                .map(|f| (config.log.filter.clone(), f))
        })
        .unwrap_or_else(|| ("info".into(), EnvFilter::new("info")));
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    // Colours only on a terminal: log files and collectors get plain text.
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match config.log.format {
        LogFormat::Json => registry.with(layer.json()).init(),
        LogFormat::Text => registry.with(layer).init(),
    }
    loggers::install(reload, &directives);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let mut config = WorkerConfig::load(cli.config.as_deref())?;
    if let Some(brokers) = cli.brokers {
        config.kafka.brokers = brokers;
    }
    if let Some(dir) = cli.topology {
        config.topology_dir = dir;
    }
    if let Some(prefix) = cli.topic_prefix {
        config.topic_prefix = prefix;
    }
    init_logging(&config);
    config.log_ignored_env();
    match cli.command {
        Command::Topology { command } => topology_cmd::run(&config, command).await,
        Command::Sim(args) => sim_cmd::run(args).await,
        Command::Run(args) => run_cmd::run(&config, args).await,
        Command::Redrive(args) => redrive_cmd::run(&config, args).await,
        Command::Audit { command } => audit::run(&config, command).await,
        Command::Retention { command } => retention_cmd::run(&config, command).await,
        Command::Erase(args) => erase_cmd::run(&config, args).await,
        Command::Export(args) => export_cmd::run(&config, args).await,
        Command::Hold { command } => archive_cmd::hold(&config, command).await,
        Command::Digest(args) => archive_cmd::digest(&config, args).await,
        Command::Verify(args) => archive_cmd::verify(&config, args).await,
        Command::Bench { command } => bench::run(&config, command).await,
        Command::Schemas => {
            let codec = config.codec().await?;
            for kind in wx_codec::RecordKind::ALL {
                println!(
                    "{:>6}  {:<34} schemas/{}",
                    codec.schema_id(kind),
                    codec.subject_of(kind),
                    kind.file()
                );
            }
            Ok(0)
        }
    }
}

/// jemalloc instead of glibc's malloc: the stages allocate per record, and glibc's malloc and
/// free took a third of the sink's and stats' CPU (issue 31; README, "CPU per message against
/// RSA", has the runs, mimalloc's too).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: two arenas (one per core of the machine measured; its
/// default of four per core held more memory for librdkafka's and tokio's many threads) and
/// freed pages returned after a second (when the arena is next used: there is no background
/// thread), which kept every stage's peak RSS within 111 MiB in the 60,000-message bench. The
/// environment variable `_RJEM_MALLOC_CONF` overrides them; librdkafka and OpenSSL keep glibc's
/// malloc. (`unsafe_code`: exporting the one symbol jemalloc reads is how its
/// options are compiled in.)
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // jemalloc reads one `const char *`: a thin pointer to the C string.
    Some(unsafe { &*c"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() });

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
