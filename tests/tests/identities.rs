//! A msgid is unique only within its corp. Two corps whose archive feeds have the very same
//! msgids (one seed), and whose callbacks carry the same AgentID and MsgId, go through all four
//! stages: each keeps its own rows, documents and window counts; nothing is merged.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sqlx::Row;
use wxstream_tests::e2e::{Pipeline, STAGES};
use wxstream_tests::pipeline::{drop_database, mysql, mysql_truth};
use wxstream_tests::{CALLBACK_KEY, CALLBACK_TOKEN, brokers, free_port, stack_setting};

/// The search documents whose msgid is `msgid`, as (corp_id, `_id`).
async fn documents_of(index: &str, msgid: &str) -> BTreeSet<(String, String)> {
    let url = stack_setting("WXSTACK_ES_URL");
    let http = reqwest::Client::new();
    let _ = http.post(format!("{url}/{index}/_refresh")).send().await;
    let reply: serde_json::Value = http
        .post(format!("{url}/{index}/_search"))
        .json(&serde_json::json!({"query": {"term": {"msgid": msgid}}, "size": 10}))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    reply["hits"]["hits"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .map(|h| {
                    (
                        h["_source"]["corp_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        h["_id"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_corps_sharing_msgids_keep_separate_rows_documents_and_counts() {
    let callback_port = free_port();
    let pipeline =
        Pipeline::start_sharing_ids("sharedids", &brokers(), 2, 300, callback_port).await;
    let truth = pipeline.sim.truth();
    let msgids = |i: usize| -> BTreeSet<&str> {
        truth[i].messages.iter().map(|t| t.msgid.as_str()).collect()
    };
    assert_eq!(
        msgids(0),
        msgids(1),
        "both corps' archives hold the same msgids"
    );
    let (expected, poison) = pipeline.expected();
    assert_eq!(
        expected.len() + poison.len(),
        2 * msgids(0).len(),
        "every message is expected once per corp"
    );

    let processes: Vec<_> = STAGES.iter().map(|s| pipeline.start_stage(s, "")).collect();
    let refs: Vec<_> = processes.iter().collect();
    // Rows = documents = distinct (corp, msgid), and every 1-minute window of each corp equals
    // MySQL's count for that corp: the shared msgids were counted once per corp.
    let tally = pipeline.assert_reconciled(240, &refs).await;
    assert_eq!(tally.rows as usize, expected.len());

    // Each corp's app 1000002 sends message 77: one callback msgid, two corps.
    let msgid = "callback:agent:1000002:77";
    for corp in ["wwe0", "wwe1"] {
        let sender = wx_sim::CallbackSender::new(wx_sim::CallbackConfig {
            url: format!("http://127.0.0.1:{callback_port}/callback/{corp}"),
            token: CALLBACK_TOKEN.into(),
            encoding_aes_key: CALLBACK_KEY.into(),
            attempts: 20,
            retry_ms: 500,
            json: false,
        })
        .expect("sender");
        let delivery = sender.text_message(corp, "alice", "same ids", 77).await;
        assert!(
            delivery.delivered,
            "{corp}'s callback is accepted: {delivery:?}"
        );
    }
    let both: BTreeSet<String> = ["wwe0".to_string(), "wwe1".to_string()].into();
    let pool = mysql(&pipeline.names.database).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let corps: BTreeSet<String> = sqlx::query("SELECT corp_id FROM messages WHERE msgid = ?")
            .bind(msgid)
            .fetch_all(&pool)
            .await
            .expect("rows")
            .iter()
            .map(|r| String::from_utf8(r.get::<Vec<u8>, _>(0)).expect("utf-8"))
            .collect();
        let documents = documents_of(&pipeline.names.index, msgid).await;
        let document_corps: BTreeSet<String> = documents.iter().map(|d| d.0.clone()).collect();
        // The stats topic's 1-minute windows equal MySQL's per-corp counts again, now with the
        // callback's minute of each corp closed.
        let windows = {
            let reader = pipeline.reader();
            tokio::task::spawn_blocking(move || reader.windows())
                .await
                .expect("join")
        };
        let want = mysql_truth(&pipeline.names.database).await;
        let parked: Vec<String> = {
            let reader = pipeline.reader();
            tokio::task::spawn_blocking(move || reader.parked())
                .await
                .expect("join")
                .into_iter()
                .filter(|d| d.msgid.as_deref() == Some(msgid) || d.stage != "decrypt")
                .map(|d| format!("{}:{} {}", d.stage, d.error_class, d.error_message))
                .collect()
        };
        if corps == both && document_corps == both && windows == want {
            let ids: BTreeSet<String> = documents.into_iter().map(|d| d.1).collect();
            assert_eq!(
                ids,
                [format!("wwe0/{msgid}"), format!("wwe1/{msgid}")].into(),
                "a document's _id is <corp>/<msgid>"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two corps' callback {msgid}: rows of {corps:?}, documents of {document_corps:?}, stats windows equal MySQL: {}, letters: {parked:?}\n{}",
            windows == want,
            processes
                .iter()
                .map(|p| p.log_tail())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop_database(&pipeline.names.database).await;
}
