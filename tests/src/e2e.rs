//! The whole pipeline for the failure tests: the simulator (every poison kind, duplicates,
//! transient errors), a topology with all four connectors, and the reconciliation every such test
//! ends with. The stages run as separate `wxstream run --only STAGE` processes against any broker
//! (the stack's, or a [`crate::KafkaNode`] of the test's own).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wx_codec::{ChatMessage, Codec, DeadLetter, GroupWindowCount, message_identity};
use wx_sim::{FaultRates, MediaSpec, ServerConfig, SimKeys, Simulator, Truth};

use crate::pipeline::{
    Names, doc_count, mysql_truth, row_count, write_sink_connector, write_stats_connector,
};
use crate::{
    WxProcess, now_ms, repo_topology, serve_simulator, sim_feeds_with_media, sim_secrets, unique,
    write_decrypt_connector, write_ingest_topology, wxstream_bin,
};

/// The four stages, as `wxstream run --only` names them.
pub const STAGES: [&str; 4] = ["ingest", "decrypt", "sink", "stats"];

/// Small media (at most 1 MiB a file), 2% expired: what the whole-pipeline tests carry.
pub fn small_media() -> MediaSpec {
    MediaSpec {
        sizes: wx_sim::MediaSizes::Small,
        max_bytes: 1 << 20,
        expired_rate: 0.02,
    }
}

/// One test's pipeline: its simulator, topics, database, index and topology directory.
#[derive(Debug)]
pub struct Pipeline {
    pub names: Names,
    pub brokers: String,
    pub sim: Simulator,
    /// With a media stage: the key prefix of its objects in the tests' bucket.
    pub media_prefix: Option<String>,
    /// Environment variables every stage process gets (`WXSTREAM_*` configuration).
    env: Vec<(String, String)>,
    /// Kept (not deleted) when the test fails, for its logs.
    dir: Option<tempfile::TempDir>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "the pipeline's topology and logs are kept in {}",
                dir.keep().display()
            );
        }
    }
}

/// Where a reconciliation stands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub expected_clean: usize,
    pub clean: usize,
    pub poison: usize,
    pub parked: usize,
    pub rows: i64,
    pub documents: u64,
    pub windows_equal: usize,
    pub windows_expected: usize,
    /// Windows of the last minute of event time with no final record yet (they close on
    /// wall-clock idle time).
    pub tail_windows_open: usize,
}

/// What a pipeline has beyond its feed: callbacks on a port (every corp sharing one feed's
/// msgids), media, messages still to arrive over the next `ahead_ms`.
#[derive(Debug, Default)]
struct Shape {
    callbacks: Option<u16>,
    media: Option<MediaSpec>,
    ahead_ms: i64,
    /// The feed's messages are stamped over this span before now (150 s when 0).
    span_ms: i64,
}

impl Pipeline {
    /// `corps` corps of `per_corp` messages each, stamped over the last 150 s (so no window is
    /// dropped while a test runs and nothing is late), every stage with a `session_timeout`
    /// of 6 s and a group of its own.
    pub async fn start(stem: &str, brokers: &str, corps: usize, per_corp: u64) -> Pipeline {
        Pipeline::start_with(stem, brokers, corps, per_corp, |_| {}).await
    }

    /// As [`Pipeline::start`], with the topics changed by `topics` before they are created.
    pub async fn start_with(
        stem: &str,
        brokers: &str,
        corps: usize,
        per_corp: u64,
        topics: impl FnOnce(&mut Vec<wx_topology::TopicSpec>),
    ) -> Pipeline {
        Pipeline::build(stem, brokers, corps, per_corp, topics, Shape::default()).await
    }

    /// As [`Pipeline::start`], with media of `media`'s sizes and faults, the simulator's media
    /// faults on (5% of first downloads corrupt, 2% of chunks slow) and a media connector
    /// storing into the tests' bucket under [`Pipeline::media_prefix`]; the topics changed by
    /// `topics` before they are created (e.g. `TopicSpec::replicate(3)` for a
    /// [`crate::KafkaCluster`]).
    pub async fn start_with_media(
        stem: &str,
        brokers: &str,
        corps: usize,
        per_corp: u64,
        media: MediaSpec,
        topics: impl FnOnce(&mut Vec<wx_topology::TopicSpec>),
    ) -> Pipeline {
        let shape = Shape {
            media: Some(media),
            ..Shape::default()
        };
        Pipeline::build(stem, brokers, corps, per_corp, topics, shape).await
    }

    /// As [`Pipeline::start_with_media`], but the messages arrive at the simulator as their
    /// times pass, over the next `ahead` (the last 150 s otherwise): work keeps coming to every
    /// stage for that long, as in production.
    pub async fn start_paced_with_media(
        stem: &str,
        brokers: &str,
        corps: usize,
        per_corp: u64,
        media: MediaSpec,
        ahead: Duration,
    ) -> Pipeline {
        let shape = Shape {
            media: Some(media),
            ahead_ms: i64::try_from(ahead.as_millis()).unwrap_or(0),
            ..Shape::default()
        };
        Pipeline::build(stem, brokers, corps, per_corp, |_| {}, shape).await
    }

    /// As [`Pipeline::start_with_media`], with the messages stamped over the `span` before now
    /// (months, for retention).
    pub async fn start_spanning_with_media(
        stem: &str,
        brokers: &str,
        corps: usize,
        per_corp: u64,
        media: MediaSpec,
        span: Duration,
    ) -> Pipeline {
        let shape = Shape {
            media: Some(media),
            span_ms: i64::try_from(span.as_millis()).unwrap_or(i64::MAX),
            ..Shape::default()
        };
        Pipeline::build(stem, brokers, corps, per_corp, |_| {}, shape).await
    }

    /// The stages to start: the four, and media when the pipeline has it.
    pub fn stages(&self) -> Vec<&'static str> {
        let mut stages = STAGES.to_vec();
        if self.media_prefix.is_some() {
            stages.push("media");
        }
        stages
    }

    /// As [`Pipeline::start`], but every corp's feed has the same msgids (one seed), and every
    /// corp takes signed callbacks on `127.0.0.1:<callback_port>/callback/<corp>` with the
    /// credentials [`CALLBACK_TOKEN`](crate::CALLBACK_TOKEN) and
    /// [`CALLBACK_KEY`](crate::CALLBACK_KEY): ids common to several corps.
    pub async fn start_sharing_ids(
        stem: &str,
        brokers: &str,
        corps: usize,
        per_corp: u64,
        callback_port: u16,
    ) -> Pipeline {
        Pipeline::build(
            stem,
            brokers,
            corps,
            per_corp,
            |_| {},
            Shape {
                callbacks: Some(callback_port),
                ..Shape::default()
            },
        )
        .await
    }

    async fn build(
        stem: &str,
        brokers: &str,
        corps: usize,
        per_corp: u64,
        topics: impl FnOnce(&mut Vec<wx_topology::TopicSpec>),
        shape: Shape,
    ) -> Pipeline {
        let Shape {
            callbacks: sharing_ids_with_callbacks,
            media,
            ahead_ms,
            span_ms,
        } = shape;
        // A long span is spread over its first 90%: the feed's gaps are random (0 to twice the
        // spacing), and over months the sum of 1,000 of them can otherwise end days from now,
        // messages that would not arrive while the test runs.
        let (span_ms, spread_ms) = if span_ms > 0 {
            (span_ms, span_ms / 10 * 9)
        } else {
            (150_000, 150_000)
        };
        let prefix = format!("{}.", unique(stem));
        let config = crate::stores::kafka_config(brokers);
        let mut specs = repo_topology(&prefix).topics;
        topics(&mut specs);
        apply_topics(&config, &specs).await;
        let db_stem = format!("wxe{}", &stem[..stem.len().min(6)]).replace('-', "_");
        let names = Names {
            database: unique(&db_stem).replace(['-', '.'], "_"),
            index: unique(&format!("{db_stem}-idx")).to_lowercase(),
            prefix,
        };
        let keys = SimKeys::generate(&[1, 2, 99]).expect("keys");
        let dir = tempfile::tempdir().expect("tmp");
        let key_dir = dir.path().join("keys");
        keys.write_private(&key_dir, |v| v != 99).expect("keys");
        let corp_ids: Vec<String> = (0..corps).map(|i| format!("wwe{i}")).collect();
        let spacing = spread_ms / i64::try_from(per_corp.max(1)).unwrap_or(1);
        let faults = FaultRates {
            corrupt_ciphertext: 0.005,
            unknown_key_version: 0.005,
            invalid_json: 0.005,
            control_chars: 0.01,
        };
        let start = now_ms() - span_ms + ahead_ms;
        let media_spec = media.clone().unwrap_or_default();
        let feeds = |corps: &[String]| {
            sim_feeds_with_media(
                &keys,
                corps,
                900,
                per_corp,
                (start, spacing.max(1)),
                faults,
                &media_spec,
            )
        };
        let feeds = match sharing_ids_with_callbacks {
            // One seed for every corp: the same msgids, times and poison in each.
            Some(_) => corp_ids
                .iter()
                .flat_map(|c| feeds(std::slice::from_ref(c)))
                .collect(),
            None => feeds(&corp_ids),
        };
        let sim = Simulator::new(
            ServerConfig {
                calls_per_minute: 6000,
                transient_error_rate: 0.02,
                duplicate_rate: 0.05,
                media_md5_fault_rate: if media.is_some() { 0.05 } else { 0.0 },
                media_slow_chunk_rate: if media.is_some() { 0.02 } else { 0.0 },
                media_slow_chunk_ms: 200,
                // A span of months stands for an archive pulled day by day since then: WeCom's
                // 5-day window would hide all but its last days from one pull now.
                retention_ms: ServerConfig::default()
                    .retention_ms
                    .max(span_ms + 86_400_000),
                ..ServerConfig::default()
            },
            feeds,
        );
        let url = serve_simulator(&sim).await;
        let p = &names.prefix;
        let listen = sharing_ids_with_callbacks
            .map(|port| format!("  callback_listen: 127.0.0.1:{port}\n"))
            .unwrap_or_default();
        write_ingest_topology(
            dir.path(),
            &url,
            &sim_secrets(&corp_ids),
            &format!(
                "  page_limit: 500\n  calls_per_minute: 6000\n  poll_interval: 1s\n  session_timeout: 6s\n  group_id: {p}ingest\n{listen}"
            ),
        );
        if sharing_ids_with_callbacks.is_some() {
            crate::add_callbacks_to_every_corp(dir.path());
        }
        // The callback credentials by corp, for decrypt to open the callbacks' envelopes.
        let callbacks = if sharing_ids_with_callbacks.is_some() {
            let lines = crate::callback_secret_lines(dir.path(), "      ");
            let corps: String = corp_ids
                .iter()
                .map(|c| format!("    {c}:\n{lines}"))
                .collect();
            format!("  callbacks:\n{corps}")
        } else {
            String::new()
        };
        write_decrypt_connector(
            dir.path(),
            &key_dir,
            &format!(
                "  session_timeout: 6s\n  commit_interval: 500ms\n  group_id: {p}decrypt\n{callbacks}"
            ),
        );
        write_sink_connector(dir.path(), &names.database, &names.index, None);
        write_stats_connector(
            dir.path(),
            &format!("  session_timeout: 6s\n  group_id: {p}stats\n"),
        );
        let media_prefix = media.map(|_| {
            let key_prefix = format!("{p}/");
            crate::media::write_media_connector(
                dir.path(),
                &url,
                &sim_secrets(&corp_ids),
                &names.database,
                &key_prefix,
                "",
            );
            key_prefix
        });
        Pipeline {
            names,
            brokers: brokers.to_string(),
            sim,
            media_prefix,
            env: Vec::new(),
            dir: Some(dir),
        }
    }

    /// Every stage started from now on gets `key=value` in its environment.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// The stats connector writes `format` (`avro`, `json`, `connect_json`) from now on.
    pub fn set_stats_format(&self, format: &str) {
        let path = self.dir().join("connectors/stats.yaml");
        let text = std::fs::read_to_string(&path).expect("stats.yaml");
        let mut replaced = 0;
        let text: String = text
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("format:") {
                    replaced += 1;
                    format!("  format: {format}\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        assert_eq!(replaced, 1, "one format line in stats.yaml");
        std::fs::write(&path, text).expect("write stats.yaml");
    }

    /// The topology directory (connectors and topics).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory is kept until drop")
            .path()
    }

    /// The log file of a stage's processes (appended to by every start).
    pub fn log(&self, stage: &str) -> PathBuf {
        self.dir().join(format!("{stage}.log"))
    }

    /// Starts `wxstream run --only STAGE` against this pipeline's broker; `suffix` tells the
    /// logs of two members of one stage apart.
    pub fn start_stage(&self, stage: &str, suffix: &str) -> WxProcess {
        self.start_stage_listening(stage, suffix, "")
    }

    /// As [`Pipeline::start_stage`], with the operations endpoint (`/readyz`, metrics) on
    /// `listen`.
    pub fn start_stage_listening(&self, stage: &str, suffix: &str, listen: &str) -> WxProcess {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        WxProcess::start_env(
            &self.stage_args(stage),
            &self.log(&format!("{stage}{suffix}")),
            listen,
            &env,
        )
    }

    fn stage_args(&self, stage: &str) -> Vec<String> {
        self.command_args(&["run", "--only", stage])
    }

    /// The arguments of `wxstream REST...` on this pipeline (its configuration, broker,
    /// topology and topic prefix).
    pub fn command_args(&self, rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = crate::stores::worker_config(self.dir())
            .map(|path| vec!["--config".into(), path.display().to_string()])
            .unwrap_or_default();
        args.extend([
            "--brokers".to_string(),
            self.brokers.clone(),
            "--topology".into(),
            self.dir().display().to_string(),
            "--topic-prefix".into(),
            self.names.prefix.clone(),
        ]);
        args.extend(rest.iter().map(|s| s.to_string()));
        assert!(wxstream_bin().exists());
        args
    }

    /// Waits (`seconds` at most) until the clean topic holds at least `n` msgids; fails with
    /// `process`'s log.
    pub async fn wait_for_clean(&self, n: usize, seconds: u64, process: &WxProcess) {
        let reader = self.reader();
        crate::wait_until(&format!("{n} clean msgids"), seconds, process, || {
            let reader = reader.clone();
            async move {
                tokio::task::spawn_blocking(move || reader.clean().len())
                    .await
                    .expect("join")
                    >= n
            }
        })
        .await;
    }

    /// Blocking reads of this pipeline's topics.
    pub fn reader(&self) -> Reader {
        Reader::new(&self.brokers, &self.names.prefix)
    }

    /// The identities ([`wx_codec::message_identity`], `<corp>/<msgid>`) the simulator's feeds
    /// hold: (those that decrypt, the poison).
    pub fn expected(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let (poison, clean): (Vec<Truth>, Vec<Truth>) = self
            .sim
            .truth()
            .into_iter()
            .flat_map(|c| c.messages)
            .partition(|t| t.poison);
        let ids = |truth: Vec<Truth>| {
            truth
                .iter()
                .map(|t| message_identity(&t.corp_id, &t.msgid))
                .collect()
        };
        (ids(clean), ids(poison))
    }

    /// Waits (up to `seconds`) until the pipeline has reconciled, then proves it:
    /// - the clean identities (`<corp>/<msgid>`) are exactly the simulator's messages minus the
    ///   poison, and the parked ones exactly the poison (nothing lost, nothing parked that is
    ///   not the data's fault);
    /// - MySQL rows = search documents = distinct clean identities (nothing duplicated, nothing
    ///   merged across corps);
    /// - every 1-minute window is final and equals MySQL's `COUNT(DISTINCT msgid)` by msgtype,
    ///   the last minute's too (those close on wall-clock idle time).
    ///
    /// `processes` are only for the failure message.
    pub async fn assert_reconciled(&self, seconds: u64, processes: &[&WxProcess]) -> Tally {
        let (expected_clean, poison) = self.expected();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let (clean, parked, windows) = tokio::task::spawn_blocking({
                let reader = self.reader();
                move || (reader.clean(), reader.parked(), reader.windows())
            })
            .await
            .expect("join");
            // The media stage's letters (files that cannot be had) are reconciled by
            // `assert_media_reconciled`; here every letter is a message's.
            let parked: Vec<DeadLetter> =
                parked.into_iter().filter(|l| l.stage != "media").collect();
            let parked_ids: BTreeSet<String> =
                parked.iter().filter_map(DeadLetter::identity).collect();
            let rows = row_count(&self.names.database).await;
            let documents = doc_count(&self.names.index).await;
            let want_windows = if rows >= expected_clean.len() as i64 {
                mysql_truth(&self.names.database).await
            } else {
                BTreeMap::new()
            };
            let last_start = want_windows
                .keys()
                .filter_map(|k| k.rsplit('/').next()?.parse::<i64>().ok())
                .max()
                .unwrap_or(i64::MAX);
            let in_tail = |k: &String| {
                k.rsplit('/').next().and_then(|s| s.parse::<i64>().ok()) == Some(last_start)
            };
            let tally = Tally {
                expected_clean: expected_clean.len(),
                clean: clean.len(),
                poison: poison.len(),
                parked: parked.len(),
                rows,
                documents,
                windows_equal: want_windows
                    .iter()
                    .filter(|(k, v)| windows.get(*k) == Some(v))
                    .count(),
                windows_expected: want_windows.len(),
                tail_windows_open: want_windows
                    .keys()
                    .filter(|k| in_tail(k) && !windows.contains_key(*k))
                    .count(),
            };
            let windows_right = !want_windows.is_empty() && windows == want_windows;
            let done = clean == expected_clean
                && parked_ids == poison
                && parked.len() == poison.len()
                && rows == expected_clean.len() as i64
                && documents == expected_clean.len() as u64
                && windows_right;
            if done {
                return tally;
            }
            if Instant::now() >= deadline {
                let lost: Vec<&String> = expected_clean.difference(&clean).take(5).collect();
                let unexpected: Vec<String> = parked
                    .iter()
                    .filter(|d| d.identity().is_none_or(|id| !poison.contains(&id)))
                    .take(5)
                    .map(|d| format!("{}:{} {}", d.stage, d.error_class, d.error_message))
                    .collect();
                let windows_differ: Vec<String> = want_windows
                    .iter()
                    .filter(|(k, v)| windows.get(*k) != Some(v))
                    .take(5)
                    .map(|(k, v)| format!("{k}: MySQL {v:?}, stats {:?}", windows.get(k)))
                    .collect();
                let tails: Vec<String> = processes.iter().map(|p| p.log_tail()).collect();
                panic!(
                    "not reconciled after {seconds} s: {tally:?}\nmissing clean (first 5): {lost:?}\nparked but not poison (first 5): {unexpected:?}\nwindows that differ (first 5): {windows_differ:?}\n{}",
                    tails.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Where a media reconciliation stands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MediaTally {
    /// Media items of the clean messages.
    pub items: usize,
    /// Of which the simulator serves as expired.
    pub expired: usize,
    pub rows_stored: usize,
    pub rows_parked: usize,
    pub objects: usize,
    pub bytes: u64,
    /// Files downloaded a second time because their first download's MD5 mismatched.
    pub md5_redownloads: usize,
    pub multipart_objects: usize,
}

impl Pipeline {
    /// Waits (up to `seconds`) until every media item of the clean messages is stored or
    /// parked, then proves it:
    /// - every item the simulator serves is an object at its key with the simulator's size and
    ///   MD5 (read back from the bucket), its row `stored` with that MD5;
    /// - every expired item is parked: its row `parked` with cause `media_expired`, its message's
    ///   letter on the dead-letter topic with that class; nothing else of the media stage parked;
    /// - the objects under the pipeline's prefix are exactly those (nothing twice, nothing
    ///   extra), and no multipart upload is left unfinished;
    /// - each file was downloaded from its first chunk once, or twice when the simulator
    ///   corrupted its first download (the MD5 retry), never more.
    pub async fn assert_media_reconciled(
        &self,
        seconds: u64,
        processes: &[&WxProcess],
    ) -> MediaTally {
        self.assert_media_reconciled_with(seconds, processes, true)
            .await
    }

    /// Starts every stage (one worker each) and waits, `seconds` at most for each, until the
    /// messages reconcile ([`Pipeline::assert_reconciled`]) and then the media
    /// ([`Pipeline::assert_media_reconciled`]); the workers are handed back running.
    pub async fn run_until_reconciled(&self, seconds: u64) -> (Vec<WxProcess>, Tally, MediaTally) {
        let processes: Vec<WxProcess> = self
            .stages()
            .iter()
            .map(|s| self.start_stage(s, ""))
            .collect();
        let refs: Vec<&WxProcess> = processes.iter().collect();
        let tally = self.assert_reconciled(seconds, &refs).await;
        let media = self.assert_media_reconciled(seconds, &refs).await;
        (processes, tally, media)
    }

    /// As [`Pipeline::assert_media_reconciled`]; with `downloaded_once` false, a file may have
    /// been downloaded again (stored once all the same): a rebalance stops every running
    /// download, and whoever gets its record again resumes it from its last stored part, or
    /// from the first chunk when no part was stored yet (the broker-crash test provokes it).
    pub async fn assert_media_reconciled_with(
        &self,
        seconds: u64,
        processes: &[&WxProcess],
        downloaded_once: bool,
    ) -> MediaTally {
        let prefix = self.media_prefix.clone().expect("a pipeline with media");
        let messages = tokio::task::spawn_blocking({
            let reader = self.reader();
            move || reader.clean_messages()
        })
        .await
        .expect("join");
        let served: Vec<wx_sim::MediaRef> = self
            .sim
            .corp_ids()
            .iter()
            .flat_map(|c| self.sim.media(c))
            .collect();
        let expected = crate::media::expected_media(&messages, &served, &prefix);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let rows = loop {
            let rows = crate::media::media_rows(&self.names.database).await;
            let terminal = rows
                .iter()
                .filter(|r| r.status == "stored" || r.status == "parked")
                .count();
            if terminal >= expected.len() {
                break rows;
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> = processes.iter().map(|p| p.log_tail()).collect();
                panic!(
                    "media not reconciled after {seconds} s: {terminal} of {} items stored or parked ({} rows)\n{}",
                    expected.len(),
                    rows.len(),
                    tails.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let rows: BTreeMap<(String, String, u32), wx_mysql::media::MediaRow> = rows
            .into_iter()
            .map(|r| ((r.corp_id.clone(), r.msgid.clone(), r.item), r))
            .collect();
        assert_eq!(rows.len(), expected.len(), "one row per media item");
        let bucket = crate::media::test_bucket();
        let objects: BTreeMap<String, u64> = bucket
            .list_objects(&prefix)
            .await
            .expect("list objects")
            .into_iter()
            .collect();
        let mut tally = MediaTally {
            items: expected.len(),
            objects: objects.len(),
            ..MediaTally::default()
        };
        let mut parked_messages = BTreeSet::new();
        for want in &expected {
            let row = &rows[&(want.corp_id.clone(), want.msgid.clone(), want.item)];
            if want.served.expired {
                tally.expired += 1;
                assert_eq!(
                    row.status, "parked",
                    "{}: an expired file is parked",
                    want.key
                );
                let cause = row.cause.as_deref().unwrap_or_default();
                assert!(
                    cause.starts_with("media_expired") && cause.contains("10010"),
                    "{}: {cause}",
                    want.key
                );
                assert!(
                    !objects.contains_key(&want.key),
                    "{}: no object for an expired file",
                    want.key
                );
                parked_messages.insert(message_identity(&want.corp_id, &want.msgid));
                tally.rows_parked += 1;
                continue;
            }
            assert_eq!(
                row.status, "stored",
                "{}: stored ({:?})",
                want.key, row.cause
            );
            assert_eq!(
                row.md5.as_deref(),
                Some(want.served.md5.as_str()),
                "{}: the row's MD5",
                want.key
            );
            assert_eq!(row.object_key, want.key);
            tally.rows_stored += 1;
            assert_eq!(
                objects.get(&want.key),
                Some(&(want.served.size as u64)),
                "{}: the object's size",
                want.key
            );
            let (md5, size) = bucket
                .md5_of(&want.key)
                .await
                .expect("read the object back");
            assert_eq!(
                (md5.as_str(), size),
                (want.served.md5.as_str(), want.served.size as u64),
                "{}: the stored bytes",
                want.key
            );
            tally.bytes += size;
            if size > 5 * 1024 * 1024 {
                tally.multipart_objects += 1;
            }
        }
        assert_eq!(
            objects.len(),
            tally.rows_stored,
            "the objects under {prefix} are exactly the stored items"
        );
        let uploads = bucket.list_uploads(&prefix).await.expect("list uploads");
        assert!(
            uploads.is_empty(),
            "unfinished multipart uploads left: {uploads:?}"
        );
        // Downloads from the first chunk, per file.
        let mut starts: BTreeMap<String, usize> = BTreeMap::new();
        for corp in self.sim.corp_ids() {
            for (file, offset) in self.sim.chunk_log(&corp) {
                if offset == 0 {
                    *starts.entry(file).or_default() += 1;
                }
            }
        }
        for want in expected.iter().filter(|w| !w.served.expired) {
            let id = &want.served.sdkfileid;
            let allowed = if self.sim.md5_faulty(&want.served) {
                2
            } else {
                1
            };
            let started = starts.get(id).copied().unwrap_or(0);
            if downloaded_once {
                assert_eq!(
                    started, allowed,
                    "{}: downloads from the first chunk",
                    want.key
                );
            } else {
                assert!(
                    started >= 1,
                    "{}: downloaded from its first chunk at least once",
                    want.key
                );
            }
            tally.md5_redownloads += allowed - 1;
        }
        let media_letters: BTreeSet<String> = tokio::task::spawn_blocking({
            let reader = self.reader();
            move || reader.parked()
        })
        .await
        .expect("join")
        .into_iter()
        .filter(|l| l.stage == "media")
        .map(|l| {
            assert_eq!(l.error_class, "media_expired", "{}", l.error_message);
            l.identity().expect("a media letter names its message")
        })
        .collect();
        assert_eq!(
            media_letters, parked_messages,
            "the media stage parked exactly the messages with expired files"
        );
        tally
    }
}

/// Blocking reads of a pipeline's topics (run them off the async runtime).
#[derive(Debug, Clone)]
pub struct Reader {
    brokers: String,
    prefix: String,
}

impl Reader {
    /// Reads the topics of the pipeline whose topic prefix is `prefix` on `brokers`.
    pub fn new(brokers: &str, prefix: &str) -> Reader {
        Reader {
            brokers: brokers.to_string(),
            prefix: prefix.to_string(),
        }
    }

    /// The distinct identities (`<corp>/<msgid>`) of the clean topic.
    pub fn clean(&self) -> BTreeSet<String> {
        crate::read_records::<ChatMessage>(&self.brokers, &format!("{}wxstream.clean", self.prefix))
            .into_iter()
            .map(|(_, m)| m.identity())
            .collect()
    }

    /// What a fault made the pipeline do twice: (raw items, distinct (corp, seq) of them,
    /// clean records, distinct (corp, seq, msgid) of them). A raw item written twice (ingest
    /// pulled it again) and a clean record written twice (decrypt consumed its raw item again)
    /// each count once more than its distinct figure.
    pub fn repeats(&self) -> (usize, usize, usize, usize) {
        let raw: Vec<(String, wx_codec::RawBatch)> =
            crate::read_records(&self.brokers, &format!("{}wxstream.raw", self.prefix));
        let items: Vec<(String, i64)> = raw
            .iter()
            .flat_map(|(_, b)| b.items.iter().map(|i| (b.corp_id.clone(), i.seq)))
            .collect();
        let distinct_items = items.iter().collect::<BTreeSet<_>>().len();
        let clean = crate::read_records::<ChatMessage>(
            &self.brokers,
            &format!("{}wxstream.clean", self.prefix),
        );
        let distinct_clean = clean
            .iter()
            .map(|(_, m)| (m.corp_id.as_str(), m.source.seq, m.msgid.as_str()))
            .collect::<BTreeSet<_>>()
            .len();
        (items.len(), distinct_items, clean.len(), distinct_clean)
    }

    /// The clean messages, one per identity.
    pub fn clean_messages(&self) -> Vec<ChatMessage> {
        crate::read_records::<ChatMessage>(&self.brokers, &format!("{}wxstream.clean", self.prefix))
            .into_iter()
            .map(|(_, m)| (m.identity(), m))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect()
    }

    /// The current dead letters (latest per key, tombstones applied).
    pub fn parked(&self) -> Vec<DeadLetter> {
        self.letters().into_values().collect()
    }

    /// The current dead letters by their key (latest per key, tombstones applied); fails unless
    /// every record decodes.
    pub fn letters(&self) -> BTreeMap<String, DeadLetter> {
        let config = crate::stores::kafka_config(&self.brokers);
        let topic = format!("{}wxstream.dead-letter", self.prefix);
        let records = wx_kafka::read_topic(&config, &topic, Duration::from_secs(120))
            .expect("read the dead-letter topic");
        let parked = wx_runtime::letters::parked(&Codec::fixed().expect("codec"), &records);
        assert_eq!(parked.unreadable, 0, "every dead letter decodes");
        parked.letters.into_iter().collect()
    }

    /// The final 1-minute windows whose total adds up: key -> counts by msgtype.
    pub fn windows(&self) -> BTreeMap<String, BTreeMap<String, i64>> {
        crate::read_records::<GroupWindowCount>(
            &self.brokers,
            &format!("{}wxstream.stats", self.prefix),
        )
        .into_iter()
        .filter(|(_, r)| r.window_size_ms == 60_000)
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .filter(|(_, r)| r.is_final && r.by_msgtype.values().sum::<i64>() == r.total)
        .map(|(k, r)| (k, r.by_msgtype))
        .collect()
    }
}

/// Fails unless no corp was pulled by two ingest workers at overlapping times. Per corp, the
/// GetChatData calls in start order form runs of one worker each: a run must be answered before
/// the next run's first call starts, and there may be at most `max_runs` runs (concurrent
/// pullers interleave into many short runs).
pub fn assert_exclusive_pulls(pulls: &[wx_sim::PullRecord], max_runs: usize) {
    let mut by_corp: BTreeMap<&str, Vec<&wx_sim::PullRecord>> = BTreeMap::new();
    for p in pulls {
        by_corp.entry(p.corp_id.as_str()).or_default().push(p);
    }
    assert!(!by_corp.is_empty(), "no GetChatData call was logged");
    for (corp, mut calls) in by_corp {
        calls.sort_by_key(|c| c.started_ms);
        // (client, first start, last answer)
        let mut runs: Vec<(&str, i64, i64)> = Vec::new();
        for c in calls {
            match runs.last_mut() {
                Some(run) if run.0 == c.client => run.2 = run.2.max(c.ended_ms),
                _ => runs.push((c.client.as_str(), c.started_ms, c.ended_ms)),
            }
        }
        for pair in runs.windows(2) {
            assert!(
                pair[0].2 <= pair[1].1,
                "{corp} was pulled by {} until {} and by {} from {}: two workers at once",
                pair[0].0,
                pair[0].2,
                pair[1].0,
                pair[1].1
            );
        }
        assert!(
            runs.len() <= max_runs,
            "{corp} changed hands {} times (at most {max_runs} runs expected): {:?}",
            runs.len() - 1,
            runs.iter().map(|r| r.0).collect::<Vec<_>>()
        );
    }
}

/// Creates the missing topics of `specs`.
async fn apply_topics(config: &wx_kafka::KafkaConfig, specs: &[wx_topology::TopicSpec]) {
    // `apply` itself tries a creation that fails for the moment again (a cluster just formed
    // failed one with `DestroyBroker` in 2 of 8 runs of a cluster test).
    wx_kafka::TopicAdmin::new(config)
        .expect("admin")
        .apply(specs)
        .await
        .expect("apply topics");
}
