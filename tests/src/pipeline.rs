//! Fixtures shared by the tests of the stages after decrypt: clean messages made from the
//! simulator's feed, topologies with a sink or stats connector of the test's own, and MariaDB
//! access.

use std::path::Path;
use std::sync::Arc;

use wx_codec::{ChatMessage, Codec};
use wx_decrypt::{Decryptor, Outcome, RawSource};
use wx_sim::{CorpFeed, FaultRates, FeedSpec, SimKeys};

use crate::{fresh_topics, now_ms, repo_root, stack_setting, unique};

/// One test's own pipeline: a topic prefix (the repository's topics are created under it), a
/// MySQL database and an index prefix, all unique.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    pub database: String,
    pub index: String,
}

impl Names {
    /// Topics `wxtest-<stem>-...`, database `wxtest_<db_stem>_...`, index
    /// `wxtest-<db_stem>-idx-...` (see [`crate::unique`]).
    pub async fn create(stem: &str, db_stem: &str) -> Names {
        let prefix = fresh_topics(stem).await;
        Names {
            prefix,
            database: unique(db_stem).replace(['-', '.'], "_"),
            index: unique(&format!("{db_stem}-idx")).to_lowercase(),
        }
    }
}

/// Clean messages of a simulated corp, as the decrypt stage makes them: `messages` items from
/// `start_ms`, `spacing_ms` apart.
pub fn clean_messages(
    corp: &str,
    messages: u64,
    start_ms: i64,
    spacing_ms: i64,
) -> Vec<ChatMessage> {
    let keys = SimKeys::generate(&[1]).expect("keys");
    let dir = tempfile::tempdir().expect("tmp");
    keys.write_private(dir.path(), |_| true)
        .expect("write keys");
    let spec = FeedSpec {
        corp_id: corp.into(),
        seed: 77,
        messages,
        start_ms,
        spacing_ms,
        key_versions: vec![1],
        withheld_key_version: 99,
        faults: FaultRates::default(),
        media: Default::default(),
    };
    let feed = CorpFeed::build(&spec, &keys).expect("feed");
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let decryptor = Decryptor::simulator(dir.path(), codec.clone()).expect("ring");
    let batch = feed.raw_batch(0..feed.items.len());
    let value = codec.encode(&batch).expect("encode");
    let source = RawSource {
        topic: "raw".into(),
        partition: 0,
        offset: 0,
    };
    decryptor
        .process_record(Some(&value), &source, now_ms())
        .into_iter()
        .map(|o| match o {
            Outcome::Clean(m) => m,
            other => panic!("a fault-free feed decrypts: {other:?}"),
        })
        .collect()
}

/// A topology directory with the repository's topics and no connector yet.
pub fn topology_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("connectors")).expect("mkdir");
    std::fs::copy(
        repo_root().join("topology/topics.yaml"),
        dir.join("topics.yaml"),
    )
    .expect("topics");
}

/// Adds a sink connector writing to `database` and the indices `index`, with the MySQL URL
/// secret reference and the search URL given (the stack's by default: `None`).
pub fn write_sink_connector(
    dir: &Path,
    database: &str,
    index: &str,
    endpoints: Option<(&str, &str)>,
) {
    topology_dir(dir);
    let (mysql_url, search) = match endpoints {
        Some((mysql_url, search_url)) => (
            mysql_url.to_string(),
            format!("  elasticsearch_url: {search_url}\n"),
        ),
        None => (
            crate::stores::mysql_url_setting(),
            crate::stores::search_settings(),
        ),
    };
    let yaml = format!(
        "name: sink\nconnector.class: wxstream.sink\ntasks.max: 2\ntopics: [wxstream.clean]\nerrors.tolerance: all\nerrors.deadletterqueue.topic.name: wxstream.dead-letter\nsettings:\n  mysql_url: {mysql_url}\n  database: {database}\n{search}  index_prefix: {index}\n  batch_max: 300\n  session_timeout: 6s\n  commit_interval: 500ms\n  backoff_cap: 2s\n  group_id: {database}_sink\n"
    );
    std::fs::write(dir.join("connectors/sink.yaml"), yaml).expect("connector");
}

/// Adds a sink connector (as [`write_sink_connector`]) that reaches MariaDB and the search
/// server only through proxies the test controls: a [`crate::TcpProxy`] to fail MariaDB and a
/// [`crate::FaultyHttpProxy`] to make the search endpoint answer 429/503.
pub async fn write_sink_connector_behind_proxies(
    dir: &Path,
    database: &str,
    index: &str,
) -> (crate::TcpProxy, crate::FaultyHttpProxy) {
    let mysql_url = stack_setting("WXSTACK_MYSQL_URL");
    let (scheme_user, host) = mysql_url
        .rsplit_once('@')
        .expect("user@host in WXSTACK_MYSQL_URL");
    let db_proxy = crate::TcpProxy::start(host.trim_end_matches('/').to_string()).await;
    let search_proxy = crate::FaultyHttpProxy::start(stack_setting("WXSTACK_ES_URL")).await;
    let secret = dir.join("mysql-url");
    std::fs::write(&secret, format!("{scheme_user}@{}", db_proxy.addr)).expect("secret");
    write_sink_connector(
        dir,
        database,
        index,
        Some((
            &format!("{{file: {}}}", secret.display()),
            &search_proxy.url,
        )),
    );
    (db_proxy, search_proxy)
}

/// Adds the repository's stats connector with `extra` settings lines appended (each
/// `  key: value\n`).
pub fn write_stats_connector(dir: &Path, extra: &str) {
    topology_dir(dir);
    let stats = std::fs::read_to_string(repo_root().join("topology/connectors/stats.yaml"))
        .expect("stats.yaml");
    std::fs::write(dir.join("connectors/stats.yaml"), format!("{stats}{extra}"))
        .expect("write stats.yaml");
}

/// A pool on `database` of the stack's MariaDB.
pub async fn mysql(database: &str) -> sqlx::MySqlPool {
    let url = crate::stores::mysql_database_url(database);
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("connect to MariaDB (start the local stack with `scripts/stack up`)")
}

/// Rows in `database`.messages (0 while the database does not exist yet).
pub async fn row_count(database: &str) -> i64 {
    let url = crate::stores::mysql_database_url(database);
    match sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
    {
        Ok(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(&pool)
            .await
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Documents behind the search alias `index` (0 while it does not exist yet).
pub async fn doc_count(index: &str) -> u64 {
    wx_search::SearchIndex::new(
        &crate::stores::search_endpoint(),
        index,
        wx_runtime::settings::default_store_timeout(),
    )
    .expect("search")
    .count()
    .await
    .unwrap_or(0)
}

/// MySQL's distinct msgids per 1-minute window key (`corp/group/60000/start`) and msgtype,
/// switch records excluded, grouped as the stats stage groups them (room, else the 1:1
/// conversation).
pub async fn mysql_truth(
    database: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> {
    use sqlx::Row;
    let pool = mysql(database).await;
    let rows = sqlx::query(
        "SELECT corp_id, IF(roomid <> '', roomid, conversation_id) AS grp,
                CAST(FLOOR(msgtime / 60000) * 60000 AS SIGNED) AS minute, msgtype, COUNT(DISTINCT msgid)
         FROM messages WHERE action <> 'switch'
         GROUP BY corp_id, grp, minute, msgtype",
    )
    .fetch_all(&pool)
    .await
    .expect("truth");
    let mut truth: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> =
        Default::default();
    for r in rows {
        // utf8mb4_bin columns arrive as bytes.
        let text = |i: usize| String::from_utf8(r.get::<Vec<u8>, _>(i)).expect("utf-8");
        let minute: i64 = r.get(2);
        truth
            .entry(format!("{}/{}/60000/{minute}", text(0), text(1)))
            .or_default()
            .insert(text(3), r.get(4));
    }
    truth
}

/// Drops a passing test's database (a failing test leaves it for inspection).
pub async fn drop_database(database: &str) {
    let pool = mysql(database).await;
    sqlx::query(&format!("DROP DATABASE `{database}`"))
        .execute(&pool)
        .await
        .expect("drop the test database");
}

/// `docs/bi/read_stats.py` (the BI reader) on `topic` of the stack's broker with `args`
/// (`--format F`, `--registry URL`, ...): the latest record of every key, as it prints them.
pub fn read_stats_py(topic: &str, args: &[&str]) -> Vec<serde_json::Value> {
    crate::run_ok_text(
        std::process::Command::new(crate::python())
            .arg(repo_root().join("docs/bi/read_stats.py"))
            .args(["--brokers", &crate::brokers(), "--topic", topic])
            .args(args),
        "read_stats.py",
    )
    .lines()
    .map(|l| serde_json::from_str(l).expect("json line"))
    .collect()
}

/// The total of every 1-minute window in records `read_stats.py` printed, keyed
/// `corp/group/60000/<start ms>` like [`mysql_truth`] (the shares of a per-sender window
/// summed).
pub fn minute_totals(records: &[serde_json::Value]) -> std::collections::BTreeMap<String, i64> {
    let mut totals = std::collections::BTreeMap::new();
    for r in records.iter().filter(|r| r["window_size_ms"] == 60_000) {
        let key = format!(
            "{}/{}/60000/{}",
            r["corp_id"].as_str().expect("corp"),
            r["group_id"].as_str().expect("group"),
            r["window_start"]
        );
        *totals.entry(key).or_default() += r["total"].as_i64().expect("total");
    }
    totals
}
