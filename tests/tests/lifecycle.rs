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
