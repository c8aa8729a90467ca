//! A small run of `wxstream bench pipeline --json` on the local stack (issue 31): the figures it
//! reports exist and are positive. Not timed and not a measurement: the figures themselves are
//! taken by hand on a release build (README, "CPU per message against RSA").

use std::process::Command;

use wxstream_tests::{brokers, repo_root, stack_setting, wxstream_bin};

#[test]
fn the_pipeline_bench_reports_its_cpu_figures() {
    let out = Command::new(wxstream_bin())
        .args(["--brokers", &brokers(), "bench", "pipeline"])
        .args(["--corps", "1", "--messages", "300"])
        .args(["--seconds", "1", "--ceiling-messages", "1000", "--json"])
        .env("WXSTACK_MYSQL_URL", stack_setting("WXSTACK_MYSQL_URL"))
        .env("WXSTACK_ES_URL", stack_setting("WXSTACK_ES_URL"))
        .current_dir(repo_root())
        .output()
        .expect("run wxstream bench pipeline");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench pipeline failed: {stderr}");
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
