//! Small runs of `wxstream bench pipeline --json` on the local stack and of `bench windows` (issue
//! 31): the figures they report exist and are positive. Not timed and not a measurement: the
//! figures themselves are taken by hand on a release build (README, "CPU per message against RSA").

use std::process::Command;

use wxstream_tests::{TEST_STEM, brokers, repo_root, stack_setting, wxstream_bin};

#[test]
fn the_pipeline_bench_reports_its_cpu_figures() {
    let out = Command::new(wxstream_bin())
        .args(["--brokers", &brokers(), "bench", "pipeline"])
        .args(["--corps", "1", "--messages", "300"])
        .args(["--seconds", "1", "--ceiling-messages", "1000", "--json"])
        // What the run leaves is named after the tests' stem: scripts/test prunes it.
        .args(["--stem", TEST_STEM])
        .env("WXSTACK_MYSQL_URL", stack_setting("WXSTACK_MYSQL_URL"))
        .env("WXSTACK_ES_URL", stack_setting("WXSTACK_ES_URL"))
        .current_dir(repo_root())
        .output()
        .expect("run wxstream bench pipeline");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench pipeline failed: {stderr}");
    assert!(
        stderr.contains(&format!("topics {TEST_STEM}-bench-"))
            && stderr.contains(&format!("database {TEST_STEM}_bench_")),
        "the run's topics and database are not named after the stem: {stderr}"
    );
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {stderr}"));
    assert_eq!(figures["messages"], 300, "{figures}");
    for field in [
        "cpu_seconds",
        "cpu_ms_per_message",
        "rsa_ms_per_op",
        "rsa_library_ms_per_op",
        "rsa_openssl_ms_per_op",
        "cpu_vs_rsa",
        "end_to_end_per_second",
    ] {
        let value = figures[field].as_f64();
        assert!(
            value.is_some_and(|v| v > 0.0 && v.is_finite()),
            "{field} is {:?} in {figures}",
            figures[field]
        );
    }
    let stages = figures["stages"].as_array().expect("stages");
    let names: Vec<&str> = stages.iter().filter_map(|s| s["stage"].as_str()).collect();
    assert_eq!(names, ["ingest", "decrypt", "sink", "stats"]);
    for stage in stages {
        for field in ["cpu_seconds", "peak_rss_mib", "items"] {
            assert!(
                stage[field].as_f64().is_some_and(|v| v > 0.0),
                "{field} of {stage}"
            );
        }
    }
}

#[test]
fn the_windows_bench_reports_cpu_per_message_for_each_group_count() {
    let out = Command::new(wxstream_bin())
        .args([
            "bench",
            "windows",
            "--groups",
            "1,100",
            "--messages",
            "100000",
            "--json",
        ])
        .current_dir(repo_root())
        .output()
        .expect("run wxstream bench windows");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench windows failed: {stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a JSON array ({e}): {stderr}"));
    let groups: Vec<u64> = rows.iter().filter_map(|r| r["groups"].as_u64()).collect();
    assert_eq!(groups, [1, 100]);
    for row in &rows {
        for field in ["cpu_us_per_message", "peak_open_windows", "records_emitted"] {
            assert!(
                row[field].as_f64().is_some_and(|v| v > 0.0),
                "{field} of {row}"
            );
        }
    }
    // 100 groups hold more windows open at once than one.
    assert!(rows[1]["peak_open_windows"].as_u64() > rows[0]["peak_open_windows"].as_u64());
}
