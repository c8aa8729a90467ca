//! `wxstream bench windows`: the stats stage's window work per message as the number of open
//! windows grows (issue 31: flat from 1 to 10,000 groups). In process, on one thread, the stage's
//! per-record steps on its own `WindowStore` with the default settings: observe the message,
//! find the safe offset (what the stage finishes held records up to), and every 1,000 records
//! (a commit tick) close what is due. Messages are spread over the groups round-robin, each
//! group one message a second of event time, so with N groups about N x (window sizes) windows
//! are open at once. Prints CPU microseconds per message (the thread's own CPU clock).

use clap::Args;
use wx_codec::{ChatMessage, SourceCoordinates};
use wx_stats::{StatsSettings, WindowStore};

#[derive(Debug, Args)]
pub struct WindowsBenchArgs {
    /// Group counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,10000")]
    groups: Vec<usize>,
    /// Messages per group count.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

/// CPU time of the calling thread, in seconds (clock ticks: the runs last seconds).
fn thread_cpu_seconds() -> f64 {
    crate::bench::pipeline::stat_cpu_seconds("/proc/thread-self/stat").unwrap_or(0.0)
}

fn message(i: u64, groups: usize, base_ms: i64) -> ChatMessage {
    let group = i % groups as u64;
    ChatMessage {
        msgid: format!("bench-{i}"),
        corp_id: "wwbench".into(),
        action: "send".into(),
        from: format!("user{}", i % 50),
        tolist: Vec::new(),
        roomid: format!("wrbench{group}"),
        msgtime: base_ms + (i / groups as u64) as i64 * 1000,
        msgtype: "text".into(),
        payload_json: r#"{"content":"x"}"#.into(),
        extra_json: None,
        text: Some("x".into()),
        recalled_msgid: None,
        conversation_id: format!("wrbench{group}"),
        is_external: false,
        publickey_ver: Some(1),
        source: SourceCoordinates {
            topic: "bench".into(),
            partition: 0,
            offset: i as i64,
            seq: Some(i as i64),
        },
        decrypted_at: base_ms,
    }
}

pub fn run(args: WindowsBenchArgs) -> anyhow::Result<i32> {
    let settings: StatsSettings = serde_json::from_value(serde_json::json!({}))?;
    let spec = settings.spec()?;
    let base_ms = 1_700_000_000_000_i64;
    let mut rows = Vec::new();
    for &groups in &args.groups {
        anyhow::ensure!(groups > 0, "--groups: every count must be at least 1");
        // Built before the clock starts: the stage receives them decoded.
        let messages: Vec<ChatMessage> = (0..args.messages)
            .map(|i| message(i, groups, base_ms))
            .collect();
        let mut store = WindowStore::new(spec.clone());
        let (mut peak_open, mut emitted) = (0usize, 0usize);
        let mut closing = std::time::Duration::ZERO;
        let start = thread_cpu_seconds();
        for (i, m) in messages.iter().enumerate() {
            // Event time is the wall clock here: windows close as the feed moves on.
            let now = m.msgtime;
            store.observe(m, i as i64, now);
            std::hint::black_box(store.safe_offset());
            if i % 1000 == 999 {
                peak_open = peak_open.max(store.open_windows());
                let t = std::time::Instant::now();
                emitted += store.close_due(now).len();
                closing += t.elapsed();
            }
        }
        let cpu = thread_cpu_seconds() - start;
        let per_message_us = 1e6 * cpu / args.messages.max(1) as f64;
        rows.push(serde_json::json!({
            "groups": groups,
            "messages": args.messages,
            "cpu_seconds": cpu,
            "cpu_us_per_message": per_message_us,
            "closing_us_per_message": 1e6 * closing.as_secs_f64() / args.messages.max(1) as f64,
            "peak_open_windows": peak_open,
            "records_emitted": emitted,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "wxstream bench windows: the stats stage's window work per message ({} messages per run, windows {:?})",
        args.messages, settings.windows
    );
    println!(
        "{:>8} {:>18} {:>8} {:>16} {:>26}",
        "groups", "peak open windows", "CPU s", "CPU us/message", "of which closing (wall us)"
    );
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    for r in &rows {
        println!(
            "{:>8} {:>18} {:>8.2} {:>16.2} {:>26.2}",
            number(&r["groups"]),
            number(&r["peak_open_windows"]),
            number(&r["cpu_seconds"]),
            number(&r["cpu_us_per_message"]),
            number(&r["closing_us_per_message"])
        );
    }
    Ok(0)
}
