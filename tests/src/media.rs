//! Fixtures of the media tests: the stack's S3 server (bucket `wxtest`, each test under a key
//! prefix of its own), a media connector, and the reconciliation of a pipeline's media.

use std::collections::BTreeMap;
use std::path::Path;

use wx_codec::ChatMessage;
use wx_mysql::MessageStore;
use wx_mysql::media::{MediaRow, MediaState};
use wx_s3::{ObjectStore, StoreConfig};
use wx_sim::{MediaRef, ServerConfig, SimKeys, Simulator};

use crate::pipeline::{Names, clean_messages, topology_dir};
use crate::{now_ms, serve_simulator, sim_feeds, stack_setting};

/// The bucket every test writes to (`scripts/stack up` creates it; `scripts/stack prune
/// wxtest` empties it).
pub const TEST_BUCKET: &str = crate::TEST_STEM;

/// The stack's S3 server, bucket [`TEST_BUCKET`].
pub fn test_bucket() -> ObjectStore {
    ObjectStore::new(&StoreConfig {
        endpoint: Some(crate::stores::s3_endpoint()),
        region: "us-east-1".into(),
        bucket: TEST_BUCKET.into(),
        access_key_id: stack_setting("WX_S3_ACCESS_KEY_ID"),
        secret_access_key: stack_setting("WX_S3_SECRET_ACCESS_KEY"),
        path_style: true,
        timeout: wx_runtime::settings::default_store_timeout(),
        ca_file: crate::stores::s3_ca_file(),
    })
    .expect("the store's client")
}

/// Adds a media connector to the topology directory `dir`: GetMediaData from the simulator at
/// `sim_url` for `corps` (id, secret; the secrets written as files in `dir`), the `media` table
/// in `database`, objects in [`TEST_BUCKET`] under `key_prefix`, with `extra` settings lines
/// (two-space indented) appended.
pub fn write_media_connector(
    dir: &Path,
    sim_url: &str,
    corps: &[(String, String)],
    database: &str,
    key_prefix: &str,
    extra: &str,
) {
    std::fs::create_dir_all(dir.join("connectors")).expect("mkdir");
    std::fs::create_dir_all(dir.join("media-secrets")).expect("mkdir");
    let mut corp_lines = String::new();
    for (corp, secret) in corps {
        let file = dir.join("media-secrets").join(corp);
        std::fs::write(&file, secret).expect("secret");
        corp_lines.push_str(&format!(
            "    - corp_id: {corp}\n      secret: {{file: {}}}\n      callback_secret: {{file: {}}}\n",
            file.display(),
            file.display()
        ));
    }
    let yaml = format!(
        "name: media\nconnector.class: wxstream.media\ntasks.max: 1\ntopics: [wxstream.clean]\nerrors.tolerance: all\nerrors.deadletterqueue.topic.name: wxstream.dead-letter\nsettings:\n  client: simulator\n  simulator_url: {sim_url}\n  corps:\n{corp_lines}  mysql_url: {}\n  database: {database}\n  part_size: 5242880\n  backoff_cap: 2s\n  session_timeout: 6s\n  commit_interval: 500ms\n  group_id: {database}_media\n{extra}  s3:\n    endpoint: {}\n    bucket: {TEST_BUCKET}\n    key_prefix: {key_prefix}\n    access_key_id: {{env: WX_S3_ACCESS_KEY_ID}}\n    secret_access_key: {{env: WX_S3_SECRET_ACCESS_KEY}}\n{}",
        crate::stores::mysql_url_setting(),
        crate::stores::s3_endpoint(),
        crate::stores::s3_ca_file()
            .map(|ca| format!("    ca_file: {}\n", ca.display()))
            .unwrap_or_default()
    );
    std::fs::write(dir.join("connectors/media.yaml"), yaml).expect("connector");
}

/// The `media` rows of a database.
pub async fn media_rows(database: &str) -> Vec<MediaRow> {
    let store = wx_mysql::MessageStore::connect(
        &crate::stores::mysql_url(),
        database,
        wx_runtime::settings::default_store_timeout(),
    )
    .await
    .expect("MariaDB");
    store.media_rows().await.expect("media rows")
}

/// One media item a clean message carries, with what the simulator serves for it.
#[derive(Debug, Clone)]
pub struct ExpectedMedia {
    pub corp_id: String,
    pub msgid: String,
    pub item: u32,
    pub key: String,
    pub served: MediaRef,
}

/// The media items of `messages`, each with its simulator file (by sdkfileid) and object key
/// under `key_prefix`. Fails if a message names a file the simulator does not have.
pub fn expected_media(
    messages: &[ChatMessage],
    served: &[MediaRef],
    key_prefix: &str,
) -> Vec<ExpectedMedia> {
    let by_id: BTreeMap<&str, &MediaRef> =
        served.iter().map(|m| (m.sdkfileid.as_str(), m)).collect();
    messages
        .iter()
        .flat_map(|m| {
            m.media_items().into_iter().map(|item| ExpectedMedia {
                corp_id: m.corp_id.clone(),
                msgid: m.msgid.clone(),
                item: item.item,
                key: format!("{key_prefix}{}", m.media_key(item.item)),
                served: (*by_id
                    .get(item.sdkfileid.as_str())
                    .unwrap_or_else(|| panic!("{} is not a simulator file", item.sdkfileid)))
                .clone(),
            })
        })
        .collect()
}

/// The stack's MariaDB database `database`, as the media stage connects it.
pub async fn media_table(database: &str) -> MessageStore {
    MessageStore::connect(
        &crate::stores::mysql_url(),
        database,
        wx_runtime::settings::default_store_timeout(),
    )
    .await
    .expect("MariaDB")
}

/// A clean message of `corp` whose one media item is `file` (a `file` message; its msgid ends
/// with the file's id, so each file's message is another).
pub fn file_message(corp: &str, file: &MediaRef) -> ChatMessage {
    let mut message = clean_messages(corp, 1, now_ms() - 60_000, 1_000).remove(0);
    message.msgid = format!("{}_{}", message.msgid, file.sdkfileid);
    message.msgtype = "file".into();
    message.text = None;
    message.payload_json = file.file_payload("年度合同.pdf");
    message
}

/// A simulator of one corp serving `files` besides its feed's own.
pub async fn simulator_with(
    corp: &str,
    files: &[MediaRef],
    config: ServerConfig,
) -> (Simulator, String) {
    let keys = SimKeys::generate(&[1]).expect("keys");
    let mut feeds = sim_feeds(
        &keys,
        &[corp.to_string()],
        5,
        1,
        (now_ms() - 60_000, 1_000),
        Default::default(),
    );
    feeds[0].0.media.extend(files.iter().cloned());
    let sim = Simulator::new(config, feeds);
    let url = serve_simulator(&sim).await;
    (sim, url)
}

/// A topology directory with the repository's topics and a media connector for `corp` (secret
/// `secret-<corp>`) on the simulator at `url`, objects under `<prefix>/` (returned), `extra`
/// settings lines appended.
pub fn media_topology(
    names: &Names,
    url: &str,
    corp: &str,
    extra: &str,
) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tmp");
    topology_dir(dir.path());
    let key_prefix = format!("{}/", names.prefix);
    write_media_connector(
        dir.path(),
        url,
        &[(corp.to_string(), format!("secret-{corp}"))],
        &names.database,
        &key_prefix,
        extra,
    );
    (dir, key_prefix)
}

/// Waits (`seconds` at most) until `message`'s one media item, `file`, is stored with its size
/// and MD5 in `table`; panics if it is parked or the time runs out (with `stage`'s log).
pub async fn wait_stored(
    table: &MessageStore,
    message: &ChatMessage,
    file: &MediaRef,
    stage: &crate::WxProcess,
    seconds: u64,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        match table.media_state(&message.corp_id, &message.msgid, 0).await {
            Ok(MediaState::Stored { size, md5 }) => {
                assert_eq!((size, md5.as_str()), (file.size as u64, file.md5.as_str()));
                return;
            }
            Ok(MediaState::Parked { cause }) => panic!("parked: {cause}"),
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not stored within {seconds} s:\n{}",
            stage.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The media stage's letters under `prefix` once there are at least `n` (waiting `seconds` at
/// most, with `stage`'s log if they do not come).
pub async fn media_letters_at_least(
    prefix: &str,
    n: usize,
    seconds: u64,
    stage: &crate::WxProcess,
) -> Vec<wx_codec::DeadLetter> {
    let topic = format!("{prefix}wxstream.dead-letter");
    let found = std::sync::Mutex::new(Vec::new());
    crate::wait_until(&format!("{n} media letters"), seconds, stage, || async {
        let letters: Vec<wx_codec::DeadLetter> =
            crate::read_records::<wx_codec::DeadLetter>(&crate::brokers(), &topic)
                .into_iter()
                .map(|(_, letter)| letter)
                .filter(|l| l.stage == "media")
                .collect();
        let enough = letters.len() >= n;
        *found.lock().expect("lock") = letters;
        enough
    })
    .await;
    found.into_inner().expect("lock")
}

/// Puts `messages` on the test's clean topic, starts the media stage of the topology in `dir`
/// and waits (2 minutes at most) until `last`'s one file is stored.
pub async fn media_stage_storing(
    names: &Names,
    dir: &Path,
    messages: &[ChatMessage],
    last: (&ChatMessage, &MediaRef),
) -> crate::WxProcess {
    crate::produce_clean(&format!("{}wxstream.clean", names.prefix), messages).await;
    let args = crate::wx_args(dir, &names.prefix, &["run", "--only", "media"]);
    let stage = crate::WxProcess::start(&args, &dir.join("media.log"));
    let table = media_table(&names.database).await;
    wait_stored(&table, last.0, last.1, &stage, 120).await;
    stage
}

/// What a one-corp media test runs on: its names, the simulator serving `files` (keep it for
/// the test's length), and the topology directory of a media stage with one download slot,
/// objects under the returned key prefix.
pub async fn one_slot(
    stem: &str,
    db_stem: &str,
    corp: &str,
    files: &[MediaRef],
) -> (Names, Simulator, tempfile::TempDir, String) {
    let names = Names::create(stem, db_stem).await;
    let (sim, url) = simulator_with(corp, files, ServerConfig::default()).await;
    let (dir, key_prefix) = media_topology(&names, &url, corp, "  max_concurrent_downloads: 1\n");
    (names, sim, dir, key_prefix)
}
