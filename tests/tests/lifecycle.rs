//! The archive's lifecycle against the local stack (issue 29): the tamper-evident audit log of
//! operator actions. Every change over the REST API and every redrive appends an entry to the
//! archive's MySQL `audit_log` (hash-chained, append-only) and to the audit topic;
//! `wxstream audit verify` passes on an untouched log and names the first broken link once a row
//! is edited by hand, or once the table loses its tail (the topic's copy shows it).

use std::time::Duration;

use serde_json::Value;
use wxstream_tests::pipeline::{Names, drop_database, mysql, write_sink_connector};
use wxstream_tests::{
    WxProcess, free_port, run_wxstream, run_wxstream_status, wait_until, wx_args,
};

/// Sends a change; its status and the `X-Wxstream-Audit` header it was answered with.
async fn change(
    method: reqwest::Method,
    addr: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut request = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let audit = reply
        .headers()
        .get("x-wxstream-audit")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (reply.status().as_u16(), audit)
}

/// Each entry's action and outcome, `action outcome`.
fn outcomes(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap_or(""),
                e["outcome"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// `wxstream audit list`: every entry, as JSON.
fn entries(args: &dyn Fn(&[&str]) -> Vec<String>, log: &std::path::Path) -> Vec<Value> {
    run_wxstream(&args(&["audit", "list"]), log)
        .lines()
        .map(|l| serde_json::from_str(l).expect("an entry per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_are_chained_in_the_audit_log_and_verify_names_a_tampered_entry() {
    use reqwest::Method;
    let Names {
        prefix,
        database,
        index,
    } = Names::create("audit", "wxa").await;
    let dir = tempfile::tempdir().expect("tmp");
    write_sink_connector(dir.path(), &database, &index, None);
    let args = |rest: &[&str]| wx_args(dir.path(), &prefix, rest);
    let log = dir.path().join("cli.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let sink = WxProcess::start_with(&args(&["run"]), &dir.path().join("sink.log"), &addr);
    wait_until("/readyz answers 200", 60, &sink, || async {
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // Changes over REST, one refused: each answered with the entry it was audited as.
    let clean = format!("{prefix}wxstream.clean");
    let to_zero = serde_json::json!({ "offsets": [{
        "partition": { "kafka_topic": clean, "kafka_partition": 0 },
        "offset": { "kafka_offset": 0 },
    }]});
    let steps = [
        (Method::PUT, "/connectors/sink/pause", None, 202),
        (Method::PUT, "/connectors/sink/resume", None, 202),
        (
            Method::PATCH,
            "/connectors/sink/offsets",
            Some(to_zero.clone()),
            400,
        ),
        (Method::PUT, "/connectors/sink/stop", None, 204),
        (
            Method::PATCH,
            "/connectors/sink/offsets",
            Some(to_zero),
            200,
        ),
        (Method::PUT, "/connectors/sink/resume", None, 202),
    ];
    for (seq, (method, path, body, status)) in (1..).zip(steps) {
        let (got, audit) = change(method.clone(), &addr, path, body).await;
        assert_eq!(got, status, "{method} {path}");
        assert_eq!(audit, format!("entry {seq}"), "{method} {path}");
    }
    // Reads are not actions.
    let (_, audit) = change(Method::GET, &addr, "/connectors/sink/status", None).await;
    assert_eq!(audit, "");

    // Two redrives at once (nothing parked): CLI actions, chained one after the other.
    let both: Vec<_> = (0..2)
        .map(|i| {
            let command = args(&["redrive", "--stage", "sink", "--corp", "wwaudit"]);
            let log = dir.path().join(format!("redrive-{i}.log"));
            std::thread::spawn(move || run_wxstream(&command, &log))
        })
        .collect();
    for redrive in both {
        redrive.join().expect("redrive");
    }
    // A dry run changes nothing and is not audited.
    run_wxstream(&args(&["redrive", "--stage", "sink", "--dry-run"]), &log);

    let all = entries(&args, &log);
    let actions: Vec<&str> = all
        .iter()
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        actions,
        [
            "connector.pause",
            "connector.resume",
            "offsets.alter",
            "connector.stop",
            "offsets.alter",
            "connector.resume",
            "redrive",
            "redrive",
        ]
    );
    assert_eq!(all[2]["outcome"], "refused: 400 Bad Request");
    assert_eq!(all[4]["outcome"], "ok");
    let altered: Value =
        serde_json::from_str(all[4]["arguments"].as_str().unwrap_or("")).expect("JSON");
    assert_eq!(
        altered["body"]["offsets"][0]["offset"]["kafka_offset"], 0,
        "{altered}"
    );
    assert_eq!(altered["path"], "/connectors/sink/offsets");
    // No credentials are configured here: the REST principal says so; the CLI's is the OS user.
    assert_eq!(all[0]["principal"], "anonymous");
    let os_user = std::env::var("USER").unwrap_or_default();
    assert!(
        all[6]["principal"]
            .as_str()
            .is_some_and(|p| p.starts_with(&format!("os:{os_user}"))),
        "{}",
        all[6]
    );
    let redrive_args: Value =
        serde_json::from_str(all[6]["arguments"].as_str().unwrap_or("")).expect("JSON");
    assert_eq!(redrive_args["corps"], serde_json::json!(["wwaudit"]));
    let out = run_wxstream(&args(&["audit", "verify"]), &log);
    assert!(
        out.contains("audit log intact: 8 entries chained, the audit topic's copy agrees"),
        "{out}"
    );

    // Append-only: the stages' own user can neither update nor delete an entry.
    let pool = mysql(&database).await;
    for statement in [
        "UPDATE audit_log SET principal = 'os:mallory' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 8",
    ] {
        let refused = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect_err(statement);
        assert!(
            refused.to_string().contains("append-only"),
            "{statement}: {refused}"
        );
    }

    // Someone who can drop the triggers removes the last entry: the table's chain is still
    // whole, but the topic's copy names the entry missing.
    sqlx::query("DROP TRIGGER audit_log_append_only_delete")
        .execute(&pool)
        .await
        .expect("drop trigger");
    sqlx::query("DELETE FROM audit_log WHERE seq = 8")
        .execute(&pool)
        .await
        .expect("delete");
    let (code, out) = run_wxstream_status(&args(&["audit", "verify"]), &log);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the audit topic's copy: first broken link at entry 8"),
        "{out}"
    );
    let (code, out) = run_wxstream_status(&args(&["audit", "verify", "--table-only"]), &log);
    assert_eq!(code, 0, "the table alone cannot tell a lost tail: {out}");

    // An entry edited in place: the chain breaks at it.
    sqlx::query("DROP TRIGGER audit_log_append_only_update")
        .execute(&pool)
        .await
        .expect("drop trigger");
    sqlx::query("UPDATE audit_log SET counts = '{\"status\":200}' WHERE seq = 3")
        .execute(&pool)
        .await
        .expect("edit");
    let (code, out) = run_wxstream_status(&args(&["audit", "verify", "--table-only"]), &log);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the audit_log table's chain: first broken link at entry 3")
            && out.contains("edited"),
        "{out}"
    );
    pool.close().await;
    drop(sink);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop_database(&database).await;
}

/// Daily digests: `wxstream digest` writes one audit entry per corp and complete day, once;
/// `wxstream verify --day` matches an untouched day and names a row deleted or changed by hand
/// (exit 1). Holds set and released are audited and listed; the chain stays intact through all
/// of it. (A change a recorded retention run or erasure explains is not exercised here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_digests_verify_until_a_row_is_deleted_by_hand_and_holds_are_audited() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("digest", "wxd").await;
    let dir = tempfile::tempdir().expect("tmp");
    write_sink_connector(dir.path(), &database, &index, None);
    let args = |rest: &[&str]| wx_args(dir.path(), &prefix, rest);
    let log = dir.path().join("cli.log");
    // Two corps, 3 days each, ending 2 days ago (complete), and today's (not complete).
    let day_ms = 86_400_000_i64;
    let today = wxstream_tests::now_ms().div_euclid(day_ms);
    let mut messages = Vec::new();
    for corp in ["wwdig0", "wwdig1"] {
        messages.extend(wxstream_tests::pipeline::clean_messages(
            corp,
            36,
            (today - 4) * day_ms + 3_600_000,
            7_200_000,
        ));
        messages.extend(wxstream_tests::pipeline::clean_messages(
            corp,
            2,
            today * day_ms,
            1_000,
        ));
    }
    let store = wx_mysql::MessageStore::connect(
        &wxstream_tests::stores::mysql_url(),
        &database,
        Duration::from_secs(30),
    )
    .await
    .expect("MySQL");
    store
        .ensure_partitions(wxstream_tests::now_ms(), 1)
        .await
        .expect("partitions");
    store.write(&messages).await.expect("write");
    let day = |d: i64| wx_codec::months::format_day(d);
    // Messages of a corp's day, counted from what was written (the feed's times are jittered).
    let on_day = |corp: &str, d: i64| {
        messages
            .iter()
            .filter(|m| m.corp_id == corp && m.msgtime.div_euclid(day_ms) == d)
            .count()
    };
    assert!((today - 4..today - 1).all(|d| on_day("wwdig0", d) > 0 && on_day("wwdig1", d) > 0));
    assert_eq!(
        (today - 4..today - 1)
            .map(|d| on_day("wwdig0", d))
            .sum::<usize>(),
        36
    );
    let (n0, n1) = (on_day("wwdig0", today - 3), on_day("wwdig1", today - 3));

    let out = run_wxstream(&args(&["digest"]), &log);
    // 36 messages about 2 h apart from 01:00 four days ago: days -4, -3 and -2 (today's is
    // not complete).
    assert!(out.contains("6 daily digests written"), "{out}");
    let first = format!(
        "wwdig0 {}: {} messages",
        day(today - 4),
        on_day("wwdig0", today - 4)
    );
    assert!(out.contains(&first), "{out}");
    let out = run_wxstream(&args(&["digest"]), &log);
    assert!(
        out.contains("0 daily digests written"),
        "a day is digested once: {out}"
    );

    let target = day(today - 3);
    let verify = |corp: &str| args(&["verify", "--corp", corp, "--day", &target]);
    let (code, out) = run_wxstream_status(&verify("wwdig0"), &log);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{n0} messages, as digested")),
        "{out}"
    );
    let (code, out) = run_wxstream_status(
        &args(&["verify", "--corp", "wwdig0", "--day", &day(today)]),
        &log,
    );
    assert_eq!(code, 2, "today has no digest: {out}");

    // One row of that day deleted by hand: verify names it; the other corp's day is untouched.
    let pool = mysql(&database).await;
    let deleted = sqlx::query(
        "DELETE FROM messages WHERE corp_id = 'wwdig0' AND msgtime >= ? AND msgtime < ? LIMIT 1",
    )
    .bind((today - 3) * day_ms)
    .bind((today - 2) * day_ms)
    .execute(&pool)
    .await
    .expect("delete");
    assert_eq!(deleted.rows_affected(), 1);
    let (code, out) = run_wxstream_status(&verify("wwdig0"), &log);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "CHANGED: 1 rows missing ({n0} -> {} messages)",
            n0 - 1
        )),
        "{out}"
    );
    // A row changed in place (same count) is named too.
    sqlx::query(
        "UPDATE messages SET text = 'altered' WHERE corp_id = 'wwdig1' AND msgtime >= ? AND msgtime < ? LIMIT 1",
    )
    .bind((today - 3) * day_ms)
    .bind((today - 2) * day_ms)
    .execute(&pool)
    .await
    .expect("update");
    let (code, out) = run_wxstream_status(&verify("wwdig1"), &log);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("CHANGED: a row changed ({n1} -> {n1} messages)")),
        "{out}"
    );

    // Holds: set, listed, released; each audited.
    let out = run_wxstream(
        &args(&[
            "hold",
            "add",
            "--corp",
            "wwdig0",
            "--user",
            "zhangsan",
            "--reason",
            "matter 42",
        ]),
        &log,
    );
    assert!(out.contains("hold 1 set"), "{out}");
    run_wxstream(
        &args(&["hold", "add", "--corp", "wwdig1", "--reason", "matter 43"]),
        &log,
    );
    let listed = run_wxstream(&args(&["hold", "list"]), &log);
    let holds: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(holds.len(), 2, "{listed}");
    assert_eq!(holds[0]["scope"], "user");
    assert_eq!(holds[0]["subject"], "zhangsan");
    assert_eq!(holds[1]["scope"], "corp");
    run_wxstream(
        &args(&["hold", "release", "2", "--reason", "matter closed"]),
        &log,
    );
    let (code, _) =
        run_wxstream_status(&args(&["hold", "release", "2", "--reason", "again"]), &log);
    assert_ne!(code, 0, "a released hold is not released twice");
    let listed = run_wxstream(&args(&["hold", "list"]), &log);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let all = run_wxstream(&args(&["hold", "list", "--all"]), &log);
    assert!(all.contains("matter closed"), "{all}");

    let actions = outcomes(&entries(&args, &log));
    assert_eq!(actions.iter().filter(|a| *a == "digest ok").count(), 6);
    assert_eq!(
        actions[6..],
        [
            "hold.add ok",
            "hold.add ok",
            "hold.release ok",
            "hold.release error: no hold 2 is holding"
        ]
    );
    let out = run_wxstream(&args(&["audit", "verify"]), &log);
    assert!(out.contains("audit log intact: 10 entries"), "{out}");
    pool.close().await;
    drop_database(&database).await;
}

/// The identities (`corp/msgid`) of MySQL's messages.
async fn mysql_ids(database: &str) -> std::collections::BTreeSet<String> {
    use sqlx::Row;
    let pool = mysql(database).await;
    let rows = sqlx::query("SELECT corp_id, msgid FROM messages")
        .fetch_all(&pool)
        .await
        .expect("messages");
    pool.close().await;
    rows.iter()
        .map(|r| {
            let text = |i: usize| String::from_utf8_lossy(&r.get::<Vec<u8>, _>(i)).into_owned();
            wx_codec::message_identity(&text(0), &text(1))
        })
        .collect()
}

/// The identities of the search documents under the pipeline's alias.
async fn search_ids(index: &str) -> std::collections::BTreeSet<String> {
    let search = wx_search::SearchIndex::new(
        &wxstream_tests::stores::search_endpoint(),
        index,
        Duration::from_secs(30),
    )
    .expect("search");
    search
        .written_at()
        .await
        .expect("documents")
        .into_iter()
        .map(|(corp, msgid, _)| wx_codec::message_identity(&corp, &msgid))
        .collect()
}

/// The keys of the objects under `prefix` in the tests' bucket.
async fn objects(prefix: &str) -> std::collections::BTreeSet<String> {
    wxstream_tests::media::test_bucket()
        .list_objects(prefix)
        .await
        .expect("list")
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// Retention (issue 29's first "done when"): three corps, messages over five months with media,
/// retention 60 days for the first and 120 for the others, a hold on one user of the first.
/// After `retention run`, exactly the expired, unheld messages are gone from MySQL, search, the
/// bucket (and the media table) and the dead-letter topic; everything else is intact. A dry run
/// writes nothing; a second run finds nothing; once the hold is released, the held messages go
/// too, and the month no corp keeps any more goes as a whole partition and index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_exactly_the_expired_unheld_messages_from_every_store() {
    use std::collections::{BTreeMap, BTreeSet};
    use wxstream_tests::e2e::{Pipeline, small_media};
    const DAY: i64 = 86_400_000;
    let pipeline = Pipeline::start_spanning_with_media(
        "retention",
        &wxstream_tests::brokers(),
        3,
        1_200,
        small_media(),
        Duration::from_secs(160 * 86_400),
    )
    .await;
    let database = pipeline.names.database.clone();
    // Monthly partitions back to the oldest message, as a sink running since then made them.
    let store = wx_mysql::MessageStore::connect(
        &wxstream_tests::stores::mysql_url(),
        &database,
        Duration::from_secs(30),
    )
    .await
    .expect("MySQL");
    store
        .ensure_partitions(wxstream_tests::now_ms() - 160 * DAY, 7)
        .await
        .expect("partitions");
    std::fs::write(
        pipeline.dir().join("retention.yaml"),
        "default: 120d\ncorps:\n  wwe0: 60d\nkafka_topics: [wxstream.raw, wxstream.clean]\n",
    )
    .expect("retention.yaml");
    run_until_archived(&pipeline).await;
    let (expected, _) = pipeline.expected();
    let index = pipeline.names.index.clone();
    let media_prefix = pipeline.media_prefix.clone().expect("media");

    let messages = tokio::task::spawn_blocking({
        let reader = pipeline.reader();
        move || reader.clean_messages()
    })
    .await
    .expect("join");
    let t0 = wxstream_tests::now_ms();
    // The hold: wwe0's user with the most messages past its retention.
    let mut sent: BTreeMap<&str, usize> = BTreeMap::new();
    for m in messages
        .iter()
        .filter(|m| m.corp_id == "wwe0" && m.msgtime < t0 - 60 * DAY)
    {
        *sent.entry(m.from.as_str()).or_default() += 1;
    }
    let held_user = sent
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(u, _)| u.to_string())
        .expect("wwe0 has expired messages");
    let args = |rest: &[&str]| pipeline.command_args(rest);
    let log = pipeline.dir().join("cli.log");
    run_wxstream(
        &args(&[
            "hold", "add", "--corp", "wwe0", "--user", &held_user, "--reason", "matter 1",
        ]),
        &log,
    );
    let held = |m: &wx_codec::ChatMessage| {
        m.corp_id == "wwe0" && (m.from == held_user || m.tolist.contains(&held_user))
    };
    let letters_before = tokio::task::block_in_place(|| pipeline.reader().letters());
    let rows_before = wxstream_tests::media::media_rows(&database).await;
    let objects_before = objects(&media_prefix).await;

    // A dry run writes nothing.
    let out = run_wxstream(&args(&["retention", "run", "--dry-run"]), &log);
    assert!(out.contains("dry run: nothing written"), "{out}");
    assert_eq!(mysql_ids(&database).await, expected);
    assert_eq!(objects(&media_prefix).await, objects_before);

    let out = run_wxstream(&args(&["retention", "run"]), &log);
    assert!(out.contains("retention run done"), "{out}");
    let all = entries(&args, &log);
    let run = all.last().expect("an entry");
    assert_eq!(run["action"], "retention.run");
    let arguments: Value =
        serde_json::from_str(run["arguments"].as_str().unwrap_or("")).expect("JSON");
    // The run's cutoffs, checked against the retention of each corp, then used for the truth.
    let cutoffs: BTreeMap<String, i64> = ["wwe0", "wwe1", "wwe2"]
        .iter()
        .map(|c| {
            (
                c.to_string(),
                arguments["cutoffs"][c].as_i64().expect("a cutoff"),
            )
        })
        .collect();
    for (corp, days) in [("wwe0", 60), ("wwe1", 120), ("wwe2", 120)] {
        let drift = cutoffs[corp] - (t0 - days * DAY);
        assert!(
            (0..600_000).contains(&drift),
            "{corp}: cutoff {drift} ms from expected"
        );
    }
    let expired = |m: &wx_codec::ChatMessage| m.msgtime < cutoffs[&m.corp_id];
    let gone: BTreeSet<String> = messages
        .iter()
        .filter(|m| expired(m) && !held(m))
        .map(|m| m.identity())
        .collect();
    let kept: BTreeSet<String> = expected.difference(&gone).cloned().collect();
    assert!(gone.len() > 500, "a good share expired: {}", gone.len());
    assert!(
        messages.iter().any(|m| expired(m) && held(m)),
        "the hold keeps some expired messages"
    );
    for corp in ["wwe0", "wwe1", "wwe2"] {
        assert!(
            gone.iter().any(|id| id.starts_with(corp)),
            "{corp} lost messages"
        );
        assert!(
            kept.iter().any(|id| id.starts_with(corp)),
            "{corp} kept messages"
        );
    }
    assert!(
        rows_before
            .iter()
            .any(|r| gone.contains(&wx_codec::message_identity(&r.corp_id, &r.msgid))),
        "some media belonged to what goes"
    );
    assert!(
        letters_before.values().any(|l| letter_of(l, &gone)),
        "some letters were of messages that go"
    );
    assert_every_store_holds(&pipeline, &kept, &gone, &letters_before, &rows_before).await;
    let counts: Value = serde_json::from_str(run["counts"].as_str().unwrap_or("")).expect("JSON");
    assert_eq!(counts["total"]["mysql_messages"], gone.len(), "{counts}");

    // Again: nothing left to delete.
    let out = run_wxstream(&args(&["retention", "run"]), &log);
    assert!(
        out.contains(&format!("{:<34} {:>10}", "mysql messages", 0)),
        "{out}"
    );
    assert_eq!(mysql_ids(&database).await, kept);

    // The hold released: its expired messages go too; the oldest month, which no corp keeps
    // any more, goes as a whole partition and a whole index.
    run_wxstream(
        &args(&["hold", "release", "1", "--reason", "matter closed"]),
        &log,
    );
    let oldest = messages.iter().map(|m| m.msgtime).min().expect("messages");
    let month = wx_codec::months::Month::of_ms(oldest);
    assert!(
        month.next().start_ms() < cutoffs["wwe1"],
        "the oldest month is wholly expired"
    );
    let old_index = format!("{index}-{}", month.index_suffix());
    let out = run_wxstream(&args(&["retention", "run"]), &log);
    assert!(out.contains("retention run done"), "{out}");
    let gone_all: BTreeSet<String> = messages
        .iter()
        .filter(|m| expired(m))
        .map(|m| m.identity())
        .collect();
    let kept_all: BTreeSet<String> = expected.difference(&gone_all).cloned().collect();
    assert_every_store_holds(
        &pipeline,
        &kept_all,
        &gone_all,
        &letters_before,
        &rows_before,
    )
    .await;
    let pool = mysql(&database).await;
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(PARTITION_NAME AS CHAR) FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'messages'",
    )
    .bind(&database)
    .fetch_all(&pool)
    .await
    .expect("partitions");
    assert!(
        !partitions.contains(&month.partition_name()),
        "{partitions:?}"
    );
    let indices: Vec<String> = wx_search::SearchIndex::new(
        &wxstream_tests::stores::search_endpoint(),
        &index,
        Duration::from_secs(30),
    )
    .expect("search")
    .monthly_indices()
    .await
    .expect("indices")
    .into_iter()
    .map(|(name, _)| name)
    .collect();
    assert!(!indices.contains(&old_index), "{indices:?}");
    pool.close().await;
    let out = run_wxstream(&args(&["audit", "verify"]), &log);
    assert!(out.contains("audit log intact"), "{out}");
    drop_database(&database).await;
}

/// Whether `letter` is of one of `messages` (identities).
fn letter_of(letter: &wx_codec::DeadLetter, messages: &std::collections::BTreeSet<String>) -> bool {
    match (&letter.corp_id, &letter.msgid) {
        (Some(corp), Some(msgid)) => messages.contains(&wx_codec::message_identity(corp, msgid)),
        _ => false,
    }
}

/// MySQL, search, the media table, the bucket and the dead-letter topic hold exactly `kept`'s
/// messages, media and letters of what they held before (`letters_before`, `rows_before`),
/// and nothing of `gone`'s.
async fn assert_every_store_holds(
    pipeline: &wxstream_tests::e2e::Pipeline,
    kept: &std::collections::BTreeSet<String>,
    gone: &std::collections::BTreeSet<String>,
    letters_before: &std::collections::BTreeMap<String, wx_codec::DeadLetter>,
    rows_before: &[wx_mysql::media::MediaRow],
) {
    use std::collections::BTreeSet;
    let database = &pipeline.names.database;
    assert_eq!(&mysql_ids(database).await, kept, "MySQL");
    assert_eq!(&search_ids(&pipeline.names.index).await, kept, "search");
    let id = |r: &wx_mysql::media::MediaRow| wx_codec::message_identity(&r.corp_id, &r.msgid);
    let rows: BTreeSet<(String, u32)> = wxstream_tests::media::media_rows(database)
        .await
        .iter()
        .map(|r| (id(r), r.item))
        .collect();
    let expected_rows: BTreeSet<(String, u32)> = rows_before
        .iter()
        .filter(|r| !gone.contains(&id(r)))
        .map(|r| (id(r), r.item))
        .collect();
    assert_eq!(rows, expected_rows, "the media table");
    let expected_objects: BTreeSet<String> = rows_before
        .iter()
        .filter(|r| r.status == "stored" && !gone.contains(&id(r)))
        .map(|r| r.object_key.clone())
        .collect();
    let prefix = pipeline.media_prefix.clone().expect("media");
    assert_eq!(objects(&prefix).await, expected_objects, "the bucket");
    let of_gone = |l: &wx_codec::DeadLetter| letter_of(l, gone);
    let letters = tokio::task::block_in_place(|| pipeline.reader().letters());
    let expected_letters: BTreeSet<&String> = letters_before
        .iter()
        .filter(|(_, l)| !of_gone(l))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        letters.keys().collect::<BTreeSet<_>>(),
        expected_letters,
        "the dead-letter topic"
    );
}

/// A running pipeline of `per_corp` messages a corp with media, stamped over `span`, run until
/// every message is in MySQL and search and every media item stored or parked; the stages are
/// stopped before it returns.
async fn archived(stem: &str, per_corp: u64, span: Duration) -> wxstream_tests::e2e::Pipeline {
    use wxstream_tests::e2e::{Pipeline, small_media};
    let pipeline = Pipeline::start_spanning_with_media(
        stem,
        &wxstream_tests::brokers(),
        3,
        per_corp,
        small_media(),
        span,
    )
    .await;
    run_until_archived(&pipeline).await;
    pipeline
}

/// Runs `pipeline`'s stages (media, no stats) until every message is in MySQL and search and
/// every media item stored or parked, then stops them.
async fn run_until_archived(pipeline: &wxstream_tests::e2e::Pipeline) {
    let stages: Vec<WxProcess> = ["ingest", "decrypt", "sink", "media"]
        .iter()
        .map(|s| pipeline.start_stage(s, ""))
        .collect();
    let refs: Vec<&WxProcess> = stages.iter().collect();
    let (expected, _) = pipeline.expected();
    let database = pipeline.names.database.clone();
    pipeline.wait_for_clean(expected.len(), 400, refs[1]).await;
    wait_until("every message in MySQL", 300, refs[2], || async {
        mysql_ids(&database).await == expected
    })
    .await;
    pipeline.assert_media_reconciled(400, &refs).await;
    let index = pipeline.names.index.clone();
    wait_until("every message in search", 60, refs[2], || async {
        search_ids(&index).await == expected
    })
    .await;
    drop(stages);
}

/// Erasure (issue 29's second "done when"): one person's messages (those they sent, and their
/// 1:1 conversations) and media are gone from every store, everything else intact; a second run
/// changes nothing; a held person's erasure is refused and changes nothing; one a store fails
/// part-way is audited as failed, and the next run completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_removes_exactly_one_persons_messages_once_and_is_refused_under_a_hold() {
    use std::collections::{BTreeMap, BTreeSet};
    let pipeline = archived("erasure", 800, Duration::from_secs(10 * 86_400)).await;
    let database = pipeline.names.database.clone();
    let (expected, _) = pipeline.expected();
    let messages = tokio::task::spawn_blocking({
        let reader = pipeline.reader();
        move || reader.clean_messages()
    })
    .await
    .expect("join");
    let busiest = |corp: &str| {
        let mut sent: BTreeMap<&str, usize> = BTreeMap::new();
        for m in messages.iter().filter(|m| m.corp_id == corp) {
            *sent.entry(m.from.as_str()).or_default() += 1;
        }
        sent.into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(u, _)| u.to_string())
            .expect("messages")
    };
    let (user, held_user) = (busiest("wwe1"), busiest("wwe2"));
    let of_person = |m: &wx_codec::ChatMessage, corp: &str, user: &str| {
        m.corp_id == corp
            && (m.from == user || (m.roomid.is_empty() && m.tolist.iter().any(|t| t == user)))
    };
    let gone: BTreeSet<String> = messages
        .iter()
        .filter(|m| of_person(m, "wwe1", &user))
        .map(|m| m.identity())
        .collect();
    assert!(gone.len() > 20, "{user} has messages: {}", gone.len());
    assert!(
        messages.iter().any(|m| m.corp_id == "wwe1"
            && m.from != user
            && !m.roomid.is_empty()
            && m.tolist.contains(&user)),
        "group messages others sent to {user} exist (they stay)"
    );
    let kept: BTreeSet<String> = expected.difference(&gone).cloned().collect();
    let args = |rest: &[&str]| pipeline.command_args(rest);
    let log = pipeline.dir().join("cli.log");
    run_wxstream(
        &args(&[
            "hold", "add", "--corp", "wwe2", "--user", &held_user, "--reason", "matter 9",
        ]),
        &log,
    );
    let letters_before = tokio::task::block_in_place(|| pipeline.reader().letters());
    let rows_before = wxstream_tests::media::media_rows(&database).await;
    let line = |n: usize| format!("{:<34} {:>10}", "mysql messages", n);

    let out = run_wxstream(
        &args(&["erase", "--corp", "wwe1", "--user", &user, "--dry-run"]),
        &log,
    );
    assert!(
        out.contains(&line(gone.len())) && out.contains("dry run: nothing written"),
        "{out}"
    );
    assert_eq!(
        mysql_ids(&database).await,
        expected,
        "a dry run writes nothing"
    );

    let out = run_wxstream(&args(&["erase", "--corp", "wwe1", "--user", &user]), &log);
    assert!(out.contains(&line(gone.len())), "{out}");
    assert_every_store_holds(&pipeline, &kept, &gone, &letters_before, &rows_before).await;
    let pool = mysql(&database).await;
    let memberships: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM room_members WHERE corp_id = 'wwe1' AND member = ?",
    )
    .bind(&user)
    .fetch_one(&pool)
    .await
    .expect("members");
    assert_eq!(memberships, 0, "the user's room memberships are gone");
    pool.close().await;

    // Again: nothing changes.
    let out = run_wxstream(&args(&["erase", "--corp", "wwe1", "--user", &user]), &log);
    assert!(out.contains(&line(0)), "{out}");
    assert_every_store_holds(&pipeline, &kept, &gone, &letters_before, &rows_before).await;

    // A held person: refused, nothing erased.
    let (code, _) = run_wxstream_status(
        &args(&["erase", "--corp", "wwe2", "--user", &held_user]),
        &log,
    );
    assert_ne!(code, 0);
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(said.contains("refused: legal hold 1 covers"), "{said}");
    assert_eq!(mysql_ids(&database).await, kept);

    // An erasure a store fails part-way (the search server unreachable, after the first batch's
    // media went): it stops with the cause and is audited as failed; a second run completes it.
    let other = busiest("wwe0");
    let gone_too: BTreeSet<String> = messages
        .iter()
        .filter(|m| of_person(m, "wwe0", &other))
        .map(|m| m.identity())
        .collect();
    assert!(
        gone_too.len() > 20,
        "{other} has messages: {}",
        gone_too.len()
    );
    let search_down = pipeline.dir().join("topology-search-down");
    std::fs::create_dir_all(search_down.join("connectors")).expect("mkdir");
    for file in ["topics.yaml", "retention.yaml"] {
        if pipeline.dir().join(file).exists() {
            std::fs::copy(pipeline.dir().join(file), search_down.join(file)).expect("copy");
        }
    }
    for entry in std::fs::read_dir(pipeline.dir().join("connectors")).expect("connectors") {
        let path = entry.expect("entry").path();
        let yaml = std::fs::read_to_string(&path).expect("connector");
        let yaml: String = yaml
            .lines()
            .map(|l| match l.trim_start().starts_with("elasticsearch_url:") {
                true => "  elasticsearch_url: http://127.0.0.1:9\n".to_string(),
                false => format!("{l}\n"),
            })
            .collect();
        std::fs::write(
            search_down
                .join("connectors")
                .join(path.file_name().expect("name")),
            yaml,
        )
        .expect("write");
    }
    let mut broken = args(&["erase", "--corp", "wwe0", "--user", &other]);
    let at = broken
        .iter()
        .position(|a| a == "--topology")
        .expect("--topology");
    broken[at + 1] = search_down.display().to_string();
    let (code, _) = run_wxstream_status(&broken, &log);
    assert_ne!(
        code, 0,
        "an erasure with its search server unreachable fails"
    );
    let out = run_wxstream(&args(&["erase", "--corp", "wwe0", "--user", &other]), &log);
    assert!(out.contains(&line(gone_too.len())), "{out}");
    let kept_now: BTreeSet<String> = kept.difference(&gone_too).cloned().collect();
    let gone_now: BTreeSet<String> = gone.union(&gone_too).cloned().collect();
    assert_every_store_holds(
        &pipeline,
        &kept_now,
        &gone_now,
        &letters_before,
        &rows_before,
    )
    .await;

    let actions = outcomes(&entries(&args, &log));
    assert_eq!(actions[1..3], ["erase ok", "erase ok"]);
    assert!(
        actions[3].starts_with("erase error: refused: legal hold 1"),
        "{actions:?}"
    );
    assert!(actions[4].starts_with("erase error: "), "{actions:?}");
    assert_eq!(actions[5], "erase ok", "{actions:?}");
    assert_eq!(actions.len(), 6, "{actions:?}");
    let out = run_wxstream(&args(&["audit", "verify"]), &log);
    assert!(out.contains("audit log intact: 6 entries"), "{out}");
    drop_database(&database).await;
}

/// Reads an RSMF EML with Python's standard library (`email`, `zipfile`, `hashlib`), as a
/// reader that is not ours: its RSMF headers, the manifest and each file of `rsmf.zip` with its
/// MD5, as JSON.
fn read_rsmf(path: &std::path::Path) -> Value {
    const READER: &str = r#"
import email, hashlib, io, json, sys, zipfile
msg = email.message_from_bytes(open(sys.argv[1], 'rb').read())
assert msg.get_content_type() == 'multipart/mixed', msg.get_content_type()
parts = [p for p in msg.walk() if not p.is_multipart()]
bodies = [p for p in parts if p.get_filename() is None]
zips = [p for p in parts if p.get_filename() is not None]
assert len(bodies) == 1 and bodies[0].get_content_type() == 'text/plain'
assert len(zips) == 1 and zips[0].get_filename() == 'rsmf.zip', [z.get_filename() for z in zips]
z = zipfile.ZipFile(io.BytesIO(zips[0].get_payload(decode=True)))
files = {n: hashlib.md5(z.read(n)).hexdigest() for n in z.namelist() if n != 'rsmf_manifest.json'}
headers = {k: str(v) for k, v in msg.items() if k.lower().startswith('x-rsmf-')}
print(json.dumps({'headers': headers, 'manifest': json.loads(z.read('rsmf_manifest.json')), 'files': files}))
"#;
    let out = wxstream_tests::run_ok_text(
        std::process::Command::new("python3")
            .args(["-c", READER])
            .arg(path),
        "reading an RSMF file with Python",
    );
    serde_json::from_str(&out).expect("JSON")
}

/// A name as the export writes it in paths and zips: what is not a letter, digit, `.`, `-` or
/// `_` becomes `_`.
fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Checks a manifest against RSMF 2.0's rules (the published schema's required fields and
/// enums, and the validator's header checks): the events' ids, in order.
fn assert_rsmf(rsmf: &Value) -> Vec<String> {
    let (headers, manifest) = (&rsmf["headers"], &rsmf["manifest"]);
    assert_eq!(headers["X-RSMF-Version"], "2.0.0");
    assert_eq!(manifest["version"], "2.0.0");
    let participants: std::collections::BTreeSet<&str> = manifest["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| {
            p["id"]
                .as_str()
                .filter(|s| !s.is_empty())
                .expect("a participant id")
        })
        .collect();
    for c in manifest["conversations"].as_array().expect("conversations") {
        assert!(c["id"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
        assert!(c["platform"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
        assert!(
            ["direct", "channel"].contains(&c["type"].as_str().unwrap_or("")),
            "{c}"
        );
        for p in c["participants"].as_array().expect("its participants") {
            assert!(participants.contains(p.as_str().unwrap_or("")), "{p}");
        }
    }
    let events = manifest["events"].as_array().expect("events");
    let stamps: Vec<&str> = events
        .iter()
        .map(|e| e["timestamp"].as_str().expect("a timestamp"))
        .collect();
    for e in events {
        assert!(
            [
                "message",
                "disclaimer",
                "join",
                "leave",
                "history",
                "unknown"
            ]
            .contains(&e["type"].as_str().unwrap_or("")),
            "{e}"
        );
        assert!(
            participants.contains(e["participant"].as_str().unwrap_or("")),
            "{e}"
        );
        let stamp = e["timestamp"].as_str().unwrap_or("");
        assert!(
            stamp.ends_with('Z') && humantime::parse_rfc3339(stamp).is_ok(),
            "{e}"
        );
        for c in e["custom"].as_array().into_iter().flatten() {
            assert!(c["name"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
            assert!(c["value"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
        }
        for a in e["attachments"].as_array().into_iter().flatten() {
            let id = a["id"].as_str().expect("an attachment id");
            assert!(rsmf["files"].get(id).is_some(), "{id} is in rsmf.zip");
        }
    }
    assert_eq!(headers["X-RSMF-EventCount"], events.len().to_string());
    assert_eq!(
        headers["X-RSMF-BeginDate"],
        *stamps.iter().min().expect("events")
    );
    assert_eq!(
        headers["X-RSMF-EndDate"],
        *stamps.iter().max().expect("events")
    );
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Export (issue 29's third "done when"): the RSMF file of a conversation's day holds every
/// message of the truth for that conversation and day, read by Python's own MIME and zip
/// readers and checked against RSMF 2.0's rules; its media attachments have their MD5s; the
/// SHA-256 manifest verifies with `sha256sum -c`; a custodian's export has one file per
/// conversation and day of theirs, listed in index.csv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_each_conversation_day_in_rsmf_with_its_media_and_verified_sums() {
    use std::collections::{BTreeMap, BTreeSet};
    const DAY: i64 = 86_400_000;
    let pipeline = archived("export", 700, Duration::from_secs(4 * 86_400)).await;
    let database = pipeline.names.database.clone();
    let messages = tokio::task::spawn_blocking({
        let reader = pipeline.reader();
        move || reader.clean_messages()
    })
    .await
    .expect("join");
    let stored: BTreeMap<(String, u32), String> = wxstream_tests::media::media_rows(&database)
        .await
        .into_iter()
        .filter(|r| r.corp_id == "wwe0" && r.status == "stored")
        .map(|r| ((r.msgid, r.item), r.md5.unwrap_or_default()))
        .collect();
    // The conversation and day of wwe0 with the most stored media.
    let mut media_by_day: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for m in messages.iter().filter(|m| m.corp_id == "wwe0") {
        let n = stored.keys().filter(|(msgid, _)| *msgid == m.msgid).count();
        *media_by_day
            .entry((m.conversation_id.clone(), m.msgtime.div_euclid(DAY)))
            .or_default() += n;
    }
    let ((conversation, day), media) = media_by_day
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, n)| (k.clone(), *n))
        .expect("wwe0 has messages");
    assert!(media > 0, "a conversation day with media");
    let truth: Vec<&wx_codec::ChatMessage> = messages
        .iter()
        .filter(|m| {
            m.corp_id == "wwe0"
                && m.conversation_id == conversation
                && m.msgtime.div_euclid(DAY) == day
        })
        .collect();
    let date = wx_codec::months::format_day(day);
    let out_dir = pipeline.dir().join("export-conversation");
    let out = run_wxstream(
        &pipeline.command_args(&[
            "export",
            "--corp",
            "wwe0",
            "--conversation",
            &conversation,
            "--from",
            &date,
            "--to",
            &date,
            "--out",
            &out_dir.display().to_string(),
        ]),
        &pipeline.dir().join("export.log"),
    );
    assert!(
        out.contains(&format!("exported {} messages", truth.len())),
        "{out}"
    );
    let safe = safe_name(&conversation);
    let rsmf = read_rsmf(&out_dir.join(&safe).join(format!("{date}.eml")));
    let ids = assert_rsmf(&rsmf);
    let truth_ids: BTreeSet<String> = truth.iter().map(|m| m.msgid.clone()).collect();
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        truth_ids,
        "every message, once"
    );
    assert_eq!(ids.len(), truth.len());
    // Each stored media item of those messages is attached, with its MD5.
    let mut attached = 0;
    for ((msgid, item), md5) in stored
        .iter()
        .filter(|((msgid, _), _)| truth_ids.contains(msgid))
    {
        let id = safe_name(&format!("{msgid}-{item}"));
        assert_eq!(rsmf["files"][&id], md5.as_str(), "{id}");
        attached += 1;
    }
    assert_eq!(attached, media);
    assert_eq!(rsmf["files"].as_object().map(|f| f.len()), Some(media));
    let check = |dir: &std::path::Path| {
        wxstream_tests::run_ok_text(
            std::process::Command::new("sha256sum")
                .args(["--check", "--strict", "SHA256SUMS"])
                .current_dir(dir),
            "sha256sum --check",
        )
    };
    assert!(check(&out_dir).contains(": OK"));

    // A custodian's export: one file per conversation and day of theirs.
    let user = truth[0].from.clone();
    let theirs: BTreeSet<(String, i64)> = messages
        .iter()
        .filter(|m| m.corp_id == "wwe0" && (m.from == user || m.tolist.contains(&user)))
        .map(|m| (m.conversation_id.clone(), m.msgtime.div_euclid(DAY)))
        .collect();
    let first = messages
        .iter()
        .map(|m| m.msgtime)
        .min()
        .unwrap_or(0)
        .div_euclid(DAY);
    let user_dir = pipeline.dir().join("export-user");
    run_wxstream(
        &pipeline.command_args(&[
            "export",
            "--corp",
            "wwe0",
            "--user",
            &user,
            "--from",
            &wx_codec::months::format_day(first),
            "--to",
            &wx_codec::months::format_day(wxstream_tests::now_ms().div_euclid(DAY)),
            "--out",
            &user_dir.display().to_string(),
        ]),
        &pipeline.dir().join("export.log"),
    );
    let index = std::fs::read_to_string(user_dir.join("index.csv")).expect("index.csv");
    assert_eq!(index.lines().count(), theirs.len() + 1, "{index}");
    assert_eq!(check(&user_dir).lines().count(), theirs.len() + 1);
    // Tampering shows.
    let tampered = user_dir.join(
        index
            .lines()
            .nth(1)
            .and_then(|l| l.split(',').next())
            .expect("a file"),
    );
    std::fs::write(&tampered, b"changed").expect("write");
    let (status, _) = {
        let out = std::process::Command::new("sha256sum")
            .args(["--check", "--quiet", "SHA256SUMS"])
            .current_dir(&user_dir)
            .output()
            .expect("sha256sum");
        (out.status.success(), ())
    };
    assert!(!status, "a changed file fails the sums");
    let all = entries(
        &|rest: &[&str]| pipeline.command_args(rest),
        &pipeline.dir().join("cli.log"),
    );
    assert_eq!(
        all.iter().filter(|e| e["action"] == "export").count(),
        2,
        "both exports audited"
    );
    drop_database(&database).await;
}
