//! `wxstream bench sink`: the sink's write paths against the local MariaDB and search server,
//! and in the same run MariaDB's own bulk ceiling for the same rows (`LOAD DATA LOCAL INFILE`
//! through the `mysql` client), reported as a ratio. A benchmark: it prints figures.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use wx_codec::ChatMessage;
use wx_decrypt::{Outcome, RawSource};
use wx_mysql::MessageStore;
use wx_search::{IndexedDoc, SearchIndex, index_for};

use crate::bench::{fixture, peak_rss_mib, percentile};

#[derive(Debug, Args)]
pub struct SinkBenchArgs {
    /// Messages to write (decrypted from a generated feed first).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Rows per MySQL transaction and documents per bulk request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// mysql://user:password@host:port (default: WXSTACK_MYSQL_URL from `scripts/stack env`).
    #[arg(long, env = "WXSTACK_MYSQL_URL")]
    mysql_url: String,
    /// The search endpoint (default: WXSTACK_ES_URL).
    #[arg(long, env = "WXSTACK_ES_URL", default_value = "http://127.0.0.1:9200")]
    search_url: String,
}

/// Latency percentiles (ms) and rate of timed batches.
fn summary(name: &str, rows: usize, started: Instant, mut ms: Vec<f64>) -> f64 {
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<34} {rate:>10.0}/s   batch p50 {:>7.1} ms   p99 {:>7.1} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99)
    );
    rate
}

/// A TSV field for LOAD DATA (backslash escapes; \N for NULL).
fn tsv(field: Option<&str>) -> String {
    match field {
        None => "\\N".into(),
        Some(s) => s
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
    }
}

fn tsv_row(m: &ChatMessage) -> String {
    let receivers = serde_json::to_string(&m.tolist).unwrap_or_default();
    let fields = [
        tsv(Some(&m.msgid)),
        m.msgtime.to_string(),
        tsv(Some(&m.corp_id)),
        tsv(Some(&m.action)),
        tsv(Some(&m.msgtype)),
        tsv(Some(&m.from)),
        tsv(Some(&receivers)),
        tsv(Some(&m.roomid)),
        tsv(Some(&m.conversation_id)),
        u8::from(m.is_external).to_string(),
        tsv(m.text.as_deref()),
        tsv(Some(&m.payload_json)),
        tsv(m.extra_json.as_deref()),
        tsv(m.recalled_msgid.as_deref()),
        m.publickey_ver.map_or("\\N".into(), |v| v.to_string()),
        tsv(Some(&m.source.topic)),
        m.source.partition.to_string(),
        m.source.offset.to_string(),
        m.source.seq.map_or("\\N".into(), |v| v.to_string()),
        m.decrypted_at.to_string(),
    ];
    fields.join("\t")
}

/// (user, password, host, port) of a mysql:// URL.
fn url_parts(url: &str) -> anyhow::Result<(String, String, String, String)> {
    let rest = url
        .strip_prefix("mysql://")
        .context("the MySQL URL must start with mysql://")?;
    let (auth, host) = rest.rsplit_once('@').unwrap_or(("root", rest));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let host = host.trim_end_matches('/');
    let (host, port) = host.split_once(':').unwrap_or((host, "3306"));
    Ok((user.into(), password.into(), host.into(), port.into()))
}

/// Rows a second MariaDB's own bulk loader (`LOAD DATA LOCAL INFILE` through the `mysql`
/// client) takes `messages` at, into a fresh table shaped like `messages` in `store`'s database:
/// the MySQL ceiling of the sink.
pub(crate) async fn load_data_ceiling(
    mysql_url: &str,
    store: &MessageStore,
    messages: &[ChatMessage],
) -> anyhow::Result<f64> {
    let (user, password, host, port) = url_parts(mysql_url)?;
    let file = tempfile::NamedTempFile::new()?;
    {
        let mut out = std::io::BufWriter::new(file.as_file());
        for m in messages {
            writeln!(out, "{}", tsv_row(m))?;
        }
    }
    store.create_like_messages("messages_ceiling").await?;
    let load = format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE messages_ceiling CHARACTER SET utf8mb4 \
         (msgid, msgtime, corp_id, action, msgtype, sender, receivers, roomid, conversation_id, \
         is_external, text, payload, extra, recalled_msgid, publickey_ver, source_topic, \
         source_partition, source_offset, seq, decrypted_at)",
        file.path().display()
    );
    let started = Instant::now();
    let output = std::process::Command::new("mysql")
        .args([
            "--local-infile=1",
            "-h",
            &host,
            "-P",
            &port,
            "-u",
            &user,
            &format!("-p{password}"),
            store.database(),
            "-e",
            &load,
        ])
        .output()
        .context("running the mysql client (scripts/stack up installs mariadb-client)")?;
    anyhow::ensure!(
        output.status.success(),
        "LOAD DATA failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rate = messages.len() as f64 / started.elapsed().as_secs_f64();
    let loaded = store.count_rows("messages_ceiling").await?;
    anyhow::ensure!(
        loaded as usize == messages.len(),
        "LOAD DATA loaded {loaded} rows"
    );
    Ok(rate)
}

/// Indexes `messages` through the sink's bulk path in requests of `batch` documents; returns
/// each request's time in ms.
pub(crate) async fn bulk_create_all(
    search: &SearchIndex,
    messages: &[ChatMessage],
    batch: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    for batch in messages.chunks(batch.max(1)) {
        let docs: Vec<_> = batch
            .iter()
            .map(|m| IndexedDoc::new(index_for(search.prefix(), m.msgtime), m, wx_codec::now_ms()))
            .collect();
        let t = Instant::now();
        search.bulk_create(&docs).await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

/// The clean messages of a fixture (decrypted in this process).
pub(crate) fn clean_messages(f: &crate::bench::Fixture) -> Vec<ChatMessage> {
    let source = RawSource {
        topic: "bench".into(),
        partition: 0,
        offset: 0,
    };
    f.batches
        .iter()
        .flat_map(|b| f.decryptor.process_record(Some(b), &source, 0))
        .filter_map(|o| match o {
            Outcome::Clean(m) => Some(m),
            _ => None,
        })
        .collect()
}

pub async fn run(args: SinkBenchArgs) -> anyhow::Result<i32> {
    println!(
        "wxstream bench sink: {} messages, batches of {}",
        args.messages, args.batch
    );
    let f = tokio::task::block_in_place(|| fixture(args.messages, 1000))?;
    let messages = clean_messages(&f);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let database = format!("wxstream_bench_{stamp}");
    let store = MessageStore::connect(
        &args.mysql_url,
        &database,
        wx_runtime::settings::default_store_timeout(),
    )
    .await?;
    store
        .ensure_partitions(messages.first().map_or(0, |m| m.msgtime), 3)
        .await?;

    // The sink's MySQL path: one transaction of multi-row upserts per batch.
    let started = Instant::now();
    let mut latencies = Vec::new();
    for batch in messages.chunks(args.batch.max(1)) {
        let t = Instant::now();
        store.write(batch).await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let sink_rows = summary(
        "MySQL upserts (sink path)",
        messages.len(),
        started,
        latencies,
    );

    // The same rows through MariaDB's own bulk loader.
    let ceiling = load_data_ceiling(&args.mysql_url, &store, &messages).await?;
    println!(
        "{:<34} {ceiling:>10.0}/s",
        "LOAD DATA LOCAL INFILE (ceiling)"
    );
    println!(
        "MySQL: the sink path reaches {:.0}% of LOAD DATA on the same rows",
        100.0 * sink_rows / ceiling
    );

    // The search path: bulk `create`, item-by-item triage.
    let prefix = format!("wxstream-bench-{stamp}");
    let search = SearchIndex::new(
        &wx_search::Endpoint::url(&args.search_url),
        &prefix,
        wx_runtime::settings::default_store_timeout(),
    )?;
    search.ensure_template().await?;
    let started = Instant::now();
    let latencies = bulk_create_all(&search, &messages, args.batch).await?;
    summary(
        "search bulk create (sink path)",
        messages.len(),
        started,
        latencies,
    );
    let count = search.count().await?;
    println!(
        "{count} documents, {} rows; peak RSS {:.0} MiB. Database {database} and index {prefix}-* are left for inspection.",
        messages.len(),
        peak_rss_mib().unwrap_or(0.0)
    );
    Ok(0)
}
