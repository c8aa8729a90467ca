//! The archive's lifecycle commands (README "Retention, holds, erasure and export"):
//! - `wxstream hold add|list|release`: legal holds (`wx_mysql::holds`), each change audited;
//! - `wxstream digest`: for each corp and complete day not yet digested, a SHA-256 over its
//!   messages (`wx_mysql::digest`) appended to the audit log;
//! - `wxstream verify --corp C --day D`: recomputes a day's digest and reports a change that no
//!   recorded retention run or erasure explains.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use wx_codec::months::{format_day, parse_day};
use wx_mysql::audit::AuditEntry;
use wx_mysql::digest::DAY_MS;
use wx_mysql::holds::HoldScope;

use crate::audit::{Auditor, os_principal};
use crate::config::WorkerConfig;

#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Hold a corp's messages, one user's (sent or received) or one conversation's: they
    /// survive retention and erasure until released.
    Add {
        #[arg(long)]
        corp: String,
        /// The user id whose messages are held.
        #[arg(long, conflicts_with = "conversation")]
        user: Option<String>,
        /// The conversation id whose messages are held.
        #[arg(long)]
        conversation: Option<String>,
        /// Why (a matter, a case number): kept with the hold and in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// The holds still holding (with --all, the released ones too), one JSON object per line.
    List {
        #[arg(long)]
        all: bool,
    },
    /// Release hold ID.
    Release {
        id: i64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct DigestArgs {
    /// A day is complete once it ended this long ago (late messages, recalls and the sink's
    /// lag have settled).
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Only these corps (repeatable); all corps with messages otherwise.
    #[arg(long = "corp")]
    corps: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(long)]
    corp: String,
    /// The UTC day, `YYYY-MM-DD`.
    #[arg(long, value_parser = day_parser)]
    day: i64,
}

fn day_parser(text: &str) -> Result<i64, String> {
    parse_day(text).ok_or_else(|| format!("`{text}` is not a date YYYY-MM-DD"))
}

pub async fn hold(config: &WorkerConfig, command: HoldCommand) -> anyhow::Result<i32> {
    let auditor = Auditor::new(config)?;
    let store = auditor.store().await?;
    match command {
        HoldCommand::Add {
            corp,
            user,
            conversation,
            reason,
        } => {
            let (scope, subject) = match (&user, &conversation) {
                (Some(user), _) => (HoldScope::User, user.clone()),
                (_, Some(conversation)) => (HoldScope::Conversation, conversation.clone()),
                _ => (HoldScope::Corp, String::new()),
            };
            let arguments =
                json!({"corp": corp, "scope": scope.name(), "subject": subject, "reason": reason});
            let done = store
                .hold_add(
                    &corp,
                    scope,
                    &subject,
                    &reason,
                    &os_principal(),
                    wx_codec::now_ms(),
                )
                .await
                .map(|id| json!({"hold": id}))
                .map_err(anyhow::Error::from);
            let counts = auditor.audited("hold.add", arguments, done).await?;
            println!("hold {} set", counts["hold"]);
        }
        HoldCommand::List { all } => {
            for hold in store.holds(all).await? {
                println!("{}", serde_json::to_string(&hold)?);
            }
        }
        HoldCommand::Release { id, reason } => {
            let arguments = json!({"hold": id, "reason": reason});
            let done = store
                .hold_release(id, &reason, &os_principal(), wx_codec::now_ms())
                .await
                .map_err(anyhow::Error::from)
                .and_then(|released| match released {
                    true => Ok(json!({"released": 1})),
                    false => Err(anyhow::anyhow!("no hold {id} is holding")),
                });
            auditor.audited("hold.release", arguments, done).await?;
            println!("hold {id} released");
        }
    }
    Ok(0)
}

/// The digests in the audit log: (corp, day) -> the latest entry.
fn digests(entries: &[AuditEntry]) -> std::collections::BTreeMap<(String, i64), &AuditEntry> {
    entries
        .iter()
        .filter(|e| e.action == "digest" && e.outcome == "ok")
        .filter_map(|e| {
            let arguments: Value = serde_json::from_str(&e.arguments).ok()?;
            let corp = arguments["corp"].as_str()?.to_string();
            let day = parse_day(arguments["day"].as_str()?)?;
            Some(((corp, day), e))
        })
        .collect()
}

pub async fn digest(config: &WorkerConfig, args: DigestArgs) -> anyhow::Result<i32> {
    let auditor = Auditor::new(config)?;
    let store = auditor.store().await?;
    let settle = i64::try_from(args.settle.as_millis()).unwrap_or(i64::MAX);
    // Days before this one are complete.
    let complete_before = (wx_codec::now_ms() - settle).div_euclid(DAY_MS);
    let entries = store.audit_entries().await?;
    let done = digests(&entries);
    let corps = if args.corps.is_empty() {
        store.corps().await?
    } else {
        args.corps.clone()
    };
    let mut written = 0;
    for corp in corps {
        // After the last day digested: earlier days were digested or had no message then.
        let mut from = done
            .keys()
            .filter(|(c, _)| *c == corp)
            .map(|(_, day)| day + 1)
            .max()
            .unwrap_or(i64::MIN / DAY_MS);
        while let Some(day) = store
            .next_day_with_messages(&corp, from, complete_before)
            .await?
        {
            let digest = store.day_digest(&corp, day).await?;
            let arguments = json!({"corp": corp, "day": format_day(day)});
            let counts = json!({"messages": digest.messages, "sha256": digest.sha256});
            auditor.audited("digest", arguments, Ok(counts)).await?;
            println!(
                "{corp} {}: {} messages, sha256 {}",
                format_day(day),
                digest.messages,
                digest.sha256
            );
            written += 1;
            from = day + 1;
        }
    }
    println!("{written} daily digests written to the audit log.");
    Ok(0)
}

/// The actions that delete messages on the record (a digest they follow may no longer match).
const RECORDED_DELETES: [&str; 2] = ["retention.run", "erase"];

pub async fn verify(config: &WorkerConfig, args: VerifyArgs) -> anyhow::Result<i32> {
    let auditor = Auditor::new(config)?;
    let store = auditor.store().await?;
    let entries = store.audit_entries().await?;
    let day = format_day(args.day);
    let Some(digested) = digests(&entries)
        .get(&(args.corp.clone(), args.day))
        .copied()
    else {
        println!(
            "no digest of {} {day} in the audit log (`wxstream digest` writes one once the day is complete)",
            args.corp
        );
        return Ok(2);
    };
    let counts: Value = serde_json::from_str(&digested.counts)?;
    let now = store.day_digest(&args.corp, args.day).await?;
    if counts["sha256"] == now.sha256.as_str() {
        println!(
            "{} {day}: {} messages, as digested in audit entry {}.",
            args.corp, now.messages, digested.seq
        );
        return Ok(0);
    }
    let then = counts["messages"].as_u64().unwrap_or(0);
    let change = match now.messages.cmp(&then) {
        std::cmp::Ordering::Less => format!("{} rows missing", then - now.messages),
        std::cmp::Ordering::Greater => format!("{} rows added", now.messages - then),
        std::cmp::Ordering::Equal => "a row changed".to_string(),
    };
    // A retention run or an erasure of this corp since the digest explains it.
    let explained = entries.iter().find(|e| {
        e.seq > digested.seq
            && RECORDED_DELETES.contains(&e.action.as_str())
            && serde_json::from_str::<Value>(&e.arguments).is_ok_and(|a| {
                a["corp"] == args.corp.as_str() || a["cutoffs"].get(&args.corp).is_some()
            })
    });
    match explained {
        Some(by) => {
            println!(
                "{} {day}: {change} ({then} -> {} messages) since audit entry {}, by the recorded {} of audit entry {}.",
                args.corp, now.messages, digested.seq, by.action, by.seq
            );
            Ok(0)
        }
        None => {
            println!(
                "{} {day}: CHANGED: {change} ({then} -> {} messages) since the digest of audit entry {}, and no recorded retention run or erasure explains it.",
                args.corp, now.messages, digested.seq
            );
            Ok(1)
        }
    }
}
