//! `wxstream erase --corp C --user U [--dry-run]`: a person's erasure (PIPL Art. 47). Deletes
//! every message the user sent and every message of a 1:1 conversation they were in, with the
//! search documents, media objects and rows and dead letters of those messages, and the user's
//! room memberships. Group messages others sent stay, even those quoting or replying to the
//! user: they are the other senders' messages (README "Retention, holds, erasure and export").
//! Stats windows are not rewritten: they hold counts per group, no personal data. Refused while
//! a legal hold covers the user; idempotent; audited however it ends (a refusal, or a store
//! failing part-way, too).

use std::time::Duration;

use clap::Args;
use serde_json::json;
use wx_mysql::holds::{Hold, HoldScope};
use wx_mysql::purge::Selection;

use crate::audit::Auditor;
use crate::config::WorkerConfig;
use crate::purge::{Archive, Wholes, purge};

#[derive(Debug, Args)]
pub struct EraseArgs {
    #[arg(long)]
    corp: String,
    /// The user id whose messages are erased.
    #[arg(long)]
    user: String,
    /// Print what would be deleted, per store, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long reading the dead-letter topic to its end may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    read_timeout: Duration,
}

/// The holds that cover any of `user`'s messages in `corp`: the corp's, the user's, and those of
/// a 1:1 conversation of theirs (`single:<a>:<b>`, the two parties sorted). A hold on a group
/// conversation does not: the user's messages in it are held by the purge's exclusion, and the
/// rest of their messages go.
fn covering<'a>(holds: &'a [Hold], corp: &str, user: &str) -> Vec<&'a Hold> {
    holds
        .iter()
        .filter(|h| h.released.is_none() && h.corp_id == corp)
        .filter(|h| match h.scope {
            HoldScope::Corp => true,
            HoldScope::User => h.subject == user,
            HoldScope::Conversation => h
                .subject
                .strip_prefix("single:")
                .is_some_and(|parties| parties.split(':').any(|p| p == user)),
        })
        .collect()
}

pub async fn run(config: &WorkerConfig, args: EraseArgs) -> anyhow::Result<i32> {
    let auditor = Auditor::new(config)?;
    let done = erase(config, &auditor, &args).await;
    if args.dry_run {
        done?;
        println!("dry run: nothing written.");
        return Ok(0);
    }
    // Audited however it ended: a refusal, an erasure a store failed part-way, or done.
    let arguments = json!({"corp": args.corp, "user": args.user, "dry_run": args.dry_run});
    auditor.audited("erase", arguments, done).await?;
    println!("erasure of {} in {} done (audited).", args.user, args.corp);
    Ok(0)
}

/// The erasure (or, with `--dry-run`, its counts), printed per store; its counts.
async fn erase(
    config: &WorkerConfig,
    auditor: &Auditor,
    args: &EraseArgs,
) -> anyhow::Result<serde_json::Value> {
    let archive = Archive::connect(config, auditor.store().await?.clone()).await?;
    let holds = archive.mysql.holds(false).await?;
    let covered = covering(&holds, &args.corp, &args.user);
    anyhow::ensure!(
        covered.is_empty(),
        "refused: legal hold {} covers {} of {} (`wxstream hold list`); nothing was erased",
        covered
            .iter()
            .map(|h| h.id.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        args.user,
        args.corp
    );
    let mut letters = archive.dead_letters(args.read_timeout).await?;
    let bar = indicatif::ProgressBar::new_spinner();
    let progress = |n: u64| bar.inc(n);
    let mut counts = purge(
        &archive,
        &Selection::person(&args.corp, &args.user),
        &holds,
        &Wholes::default(),
        &mut letters,
        args.dry_run,
        &progress,
    )
    .await?;
    bar.finish_and_clear();
    let memberships = if args.dry_run {
        archive
            .mysql
            .count_memberships(&args.corp, &args.user)
            .await?
    } else {
        archive
            .mysql
            .delete_memberships(&args.corp, &args.user)
            .await?
    };
    counts.held_back = 0;
    counts.print(args.dry_run);
    println!("{:<34} {memberships:>10}", "mysql room memberships");
    let mut total = counts.json();
    total["mysql_room_memberships"] = json!(memberships);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_on_the_corp_the_user_or_one_of_their_conversations_refuses_the_erasure() {
        let hold = |id, scope, subject: &str| Hold {
            id,
            corp_id: "wwa".into(),
            scope,
            subject: subject.into(),
            reason: "r".into(),
            set_by: "os:a".into(),
            set_at_ms: 0,
            released: None,
        };
        let holds = [
            hold(1, HoldScope::User, "lisi"),
            hold(2, HoldScope::Conversation, "single:wangwu:zhaoliu"),
            hold(3, HoldScope::Conversation, "room-7"),
        ];
        assert!(covering(&holds, "wwa", "zhangsan").is_empty());
        assert_eq!(covering(&holds, "wwa", "lisi")[0].id, 1);
        assert_eq!(covering(&holds, "wwa", "zhaoliu")[0].id, 2);
        assert!(covering(&holds, "wwb", "lisi").is_empty());
        assert!(covering(&holds, "wwa", "room-7").is_empty());
        let corp = [hold(4, HoldScope::Corp, "")];
        assert_eq!(covering(&corp, "wwa", "anyone")[0].id, 4);
    }
}
