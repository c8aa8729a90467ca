//! `wxstream export --corp C (--user U | --conversation X) --from D --to D --out DIR`: what a
//! legal team loads into an eDiscovery review platform. One file per conversation and UTC day in
//! Relativity's short message format, RSMF 2.0: an EML (`X-RSMF-*` headers, a text/plain
//! transcript) whose one attachment `rsmf.zip` holds `rsmf_manifest.json` (participants,
//! conversations, events) and each event's media files, named by their attachment ids. Beside
//! them, `index.csv` (one row per file) and `SHA256SUMS` (every file's SHA-256, as `sha256sum
//! -c` reads it). Audited, an export that failed part-way too.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use clap::Args;
use serde_json::{Value, json};
use sha2::Digest;
use wx_codec::months::{format_day, parse_day};
use wx_mysql::digest::DAY_MS;
use wx_mysql::media::MediaRow;
use wx_mysql::purge::{ArchivedMessage, Selection};

use crate::audit::Auditor;
use crate::config::WorkerConfig;

/// The RSMF version written (header and manifest).
pub const RSMF_VERSION: &str = "2.0.0";

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long)]
    corp: String,
    /// The custodian: every message they sent or received.
    #[arg(
        long,
        conflicts_with = "conversation",
        required_unless_present = "conversation"
    )]
    user: Option<String>,
    /// One conversation (a room id, or `single:<a>:<b>`).
    #[arg(long)]
    conversation: Option<String>,
    /// The first UTC day, `YYYY-MM-DD`.
    #[arg(long, value_parser = day_parser)]
    from: i64,
    /// The last UTC day (included).
    #[arg(long, value_parser = day_parser)]
    to: i64,
    /// The directory written (created; files already in it are left alone).
    #[arg(long)]
    out: PathBuf,
}

fn day_parser(text: &str) -> Result<i64, String> {
    parse_day(text).ok_or_else(|| format!("`{text}` is not a date YYYY-MM-DD"))
}

/// A millisecond timestamp as RFC 3339 UTC with `Z` (what RSMF's timestamps and date headers take).
pub fn rfc3339(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// A name safe in a path and in a zip: what is not a letter, digit, `.`, `-` or `_` becomes `_`.
fn safe(name: &str) -> String {
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

/// An RFC 2047 encoded word when `text` is not plain ASCII.
fn header_text(text: &str) -> String {
    if text.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        text.to_string()
    } else {
        format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    }
}

/// Base64 in lines of 76 characters (MIME).
fn base64_lines(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// One attachment of an event: its id (the file's name in the zip) and bytes.
struct Attachment {
    id: String,
    bytes: Vec<u8>,
}

/// The manifest of one conversation's day.
fn manifest(
    conversation: &str,
    messages: &[&ArchivedMessage],
    attachments: &BTreeMap<String, Vec<Attachment>>,
) -> Value {
    let mut people = BTreeSet::new();
    for m in messages {
        people.insert(m.sender.clone());
        people.extend(m.receivers.iter().cloned());
    }
    people.retain(|p| !p.is_empty());
    let participants: Vec<Value> = people
        .iter()
        .map(|p| json!({"id": p, "display": p}))
        .collect();
    let group = messages.iter().any(|m| !m.roomid.is_empty());
    let events: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut event = json!({
                "id": m.msgid,
                "type": "message",
                "participant": m.sender,
                "conversation": conversation,
                "timestamp": rfc3339(m.msgtime),
                "body": m.text.clone().unwrap_or_else(|| format!("[{}]", m.msgtype)),
                "custom": [
                    {"name": "msgtype", "value": m.msgtype},
                    {"name": "action", "value": m.action},
                ],
            });
            if m.recalled {
                event["deleted"] = json!(true);
            }
            if let Some(files) = attachments.get(&m.msgid) {
                event["attachments"] = files
                    .iter()
                    .map(|a| json!({"id": a.id, "size": a.bytes.len()}))
                    .collect();
            }
            event
        })
        .collect();
    json!({
        "version": RSMF_VERSION,
        "participants": participants,
        "conversations": [{
            "id": conversation,
            "display": conversation,
            "platform": "WeCom",
            "type": if group { "channel" } else { "direct" },
            "participants": people.iter().collect::<Vec<_>>(),
        }],
        "events": events,
    })
}

/// The RSMF EML of one conversation's day: headers, a transcript, `rsmf.zip`.
fn eml(
    conversation: &str,
    day: i64,
    messages: &[&ArchivedMessage],
    attachments: &BTreeMap<String, Vec<Attachment>>,
) -> anyhow::Result<Vec<u8>> {
    let manifest = manifest(conversation, messages, attachments);
    let mut zipped = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zipped.start_file("rsmf_manifest.json", options)?;
    zipped.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    for files in attachments.values() {
        for a in files {
            zipped.start_file(a.id.as_str(), options)?;
            zipped.write_all(&a.bytes)?;
        }
    }
    let zip = zipped.finish()?.into_inner();
    let first = messages.first().map_or(0, |m| m.msgtime);
    let last = messages.last().map_or(0, |m| m.msgtime);
    let transcript: String = messages
        .iter()
        .map(|m| {
            format!(
                "[{}] {}: {}\r\n",
                rfc3339(m.msgtime),
                m.sender,
                m.text.as_deref().unwrap_or(&format!("[{}]", m.msgtype))
            )
        })
        .collect();
    let attachment_count: usize = attachments.values().map(Vec::len).sum();
    let people: BTreeSet<&str> = manifest["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["display"].as_str())
        .collect();
    let boundary = format!(
        "wxstream-{}",
        &hex::encode(sha2::Sha256::digest(&zip))[..32]
    );
    let mut out = String::new();
    let mut header = |name: &str, value: &str| out.push_str(&format!("{name}: {value}\r\n"));
    header("MIME-Version", "1.0");
    header("From", "wxstream <export@wxstream.invalid>");
    header(
        "Subject",
        &header_text(&format!("WeCom {conversation} {}", format_day(day))),
    );
    header("X-RSMF-Version", RSMF_VERSION);
    header(
        "X-RSMF-Generator",
        concat!("wxstream ", env!("CARGO_PKG_VERSION")),
    );
    header("X-RSMF-Application", "WeCom");
    header("X-RSMF-BeginDate", &rfc3339(first));
    header("X-RSMF-EndDate", &rfc3339(last));
    header("X-RSMF-EventCount", &messages.len().to_string());
    header("X-RSMF-AttachmentCount", &attachment_count.to_string());
    header(
        "X-RSMF-Participants",
        &header_text(&people.into_iter().collect::<Vec<_>>().join(", ")),
    );
    header(
        "Content-Type",
        &format!("multipart/mixed; boundary=\"{boundary}\""),
    );
    out.push_str("\r\n");
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        base64_lines(transcript.as_bytes())
    ));
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/zip; name=\"rsmf.zip\"\r\nContent-Disposition: attachment; filename=\"rsmf.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        base64_lines(&zip)
    ));
    out.push_str(&format!("--{boundary}--\r\n"));
    Ok(out.into_bytes())
}

/// Writes `bytes` to `dir/relative` (directories created); its SHA-256.
fn write_file(dir: &Path, relative: &str, bytes: &[u8]) -> anyhow::Result<String> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(bytes)))
}

pub async fn run(config: &WorkerConfig, args: ExportArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(args.from <= args.to, "--from is after --to");
    let auditor = Auditor::new(config)?;
    let arguments = json!({
        "corp": args.corp,
        "user": args.user,
        "conversation": args.conversation,
        "from": format_day(args.from),
        "to": format_day(args.to),
        "out": args.out.display().to_string(),
    });
    // Audited however it ended: an export that failed part-way may have written files.
    let counts = auditor
        .audited("export", arguments, export(config, &auditor, &args).await)
        .await?;
    println!(
        "exported {} messages ({} attachments) in {} RSMF files to {} (index.csv, SHA256SUMS).",
        counts["events"],
        counts["attachments"],
        counts["files"],
        args.out.display()
    );
    Ok(0)
}

/// The export's files written; its counts.
async fn export(
    config: &WorkerConfig,
    auditor: &Auditor,
    args: &ExportArgs,
) -> anyhow::Result<serde_json::Value> {
    let store = auditor.store().await?;
    let archive = crate::purge::Archive::connect(config, store.clone()).await?;
    let selection = match (&args.user, &args.conversation) {
        (Some(user), _) => Selection::custodian(&args.corp, user),
        (_, Some(conversation)) => Selection::conversation(&args.corp, conversation),
        _ => anyhow::bail!("give --user or --conversation"),
    };
    let messages = store
        .selected_messages(&selection, args.from * DAY_MS, (args.to + 1) * DAY_MS)
        .await?;
    let ids: BTreeSet<&str> = messages.iter().map(|m| m.msgid.as_str()).collect();
    let rows: Vec<MediaRow> = store
        .media_rows_of(&args.corp)
        .await?
        .into_iter()
        .filter(|r| r.status == "stored" && ids.contains(r.msgid.as_str()))
        .collect();
    // The stored media rows of each message, in the store's order.
    let mut rows_of: BTreeMap<&str, Vec<&MediaRow>> = BTreeMap::new();
    for row in &rows {
        rows_of.entry(row.msgid.as_str()).or_default().push(row);
    }
    let mut groups: BTreeMap<(String, i64), Vec<&ArchivedMessage>> = BTreeMap::new();
    for m in &messages {
        groups
            .entry((m.conversation_id.clone(), m.msgtime.div_euclid(DAY_MS)))
            .or_default()
            .push(m);
    }
    let bar = indicatif::ProgressBar::new(groups.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} export [{bar:40}] {pos}/{len} files {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut sums: Vec<(String, String)> = Vec::new();
    let mut index = String::from("file,conversation,day,events,attachments,begin,end,sha256\n");
    let mut attached = 0usize;
    for ((conversation, day), day_messages) in &groups {
        // Each stored media item of the day's messages, read from the bucket, by message.
        let mut by_message: BTreeMap<String, Vec<Attachment>> = BTreeMap::new();
        if let Some(bucket) = &archive.bucket {
            let day_rows = day_messages
                .iter()
                .filter_map(|m| rows_of.get(m.msgid.as_str()))
                .flatten();
            for row in day_rows {
                let bytes = bucket
                    .get(&row.object_key)
                    .await
                    .with_context(|| format!("reading media object {}", row.object_key))?;
                by_message
                    .entry(row.msgid.clone())
                    .or_default()
                    .push(Attachment {
                        id: format!("{}-{}", safe(&row.msgid), row.item),
                        bytes,
                    });
            }
        }
        let files: usize = by_message.values().map(Vec::len).sum();
        attached += files;
        let relative = format!("{}/{}.eml", safe(conversation), format_day(*day));
        let bytes = eml(conversation, *day, day_messages, &by_message)?;
        let sha = write_file(&args.out, &relative, &bytes)?;
        index.push_str(&format!(
            "{relative},\"{}\",{},{},{},{},{},{sha}\n",
            conversation.replace('"', "\"\""),
            format_day(*day),
            day_messages.len(),
            files,
            rfc3339(day_messages.first().map_or(0, |m| m.msgtime)),
            rfc3339(day_messages.last().map_or(0, |m| m.msgtime)),
        ));
        sums.push((sha, relative));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let index_sha = write_file(&args.out, "index.csv", index.as_bytes())?;
    sums.push((index_sha, "index.csv".into()));
    let manifest: String = sums
        .iter()
        .map(|(sha, file)| format!("{sha}  {file}\n"))
        .collect();
    write_file(&args.out, "SHA256SUMS", manifest.as_bytes())?;
    Ok(json!({
        "files": groups.len(),
        "events": messages.len(),
        "attachments": attached,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_encoded_words_when_not_ascii_and_timestamps_end_in_z() {
        assert_eq!(header_text("room 1"), "room 1");
        assert_eq!(header_text("周会"), "=?utf-8?b?5ZGo5Lya?=");
        assert_eq!(rfc3339(1_547_087_894_783), "2019-01-10T02:38:14.783Z");
        assert_eq!(safe("a/b:c 1.jpg"), "a_b_c_1.jpg");
        assert!(base64_lines(&[0u8; 100]).lines().all(|l| l.len() <= 76));
    }
}
