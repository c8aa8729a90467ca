//! Redrive: replays parked records of the decrypt stage once their cause is fixed (a missing key
//! version added, callback credentials configured, a bug fixed).
//!
//! The dead-letter topic is keyed by what was parked, so the latest record of a key is its
//! current state and a tombstone means "resolved". Redrive reads the topic to its end, keeps the
//! latest record per key, selects by filter, and decrypts each again in this process:
//! - it now succeeds: the clean message is produced and acknowledged, then the key is
//!   tombstoned;
//! - it fails again: a new dead letter under the same key, `attempts` + 1, first failure time
//!   kept.
//!
//! Running it twice produces nothing new the second time (the moved keys are tombstoned); a
//! crash between the clean write and the tombstone repeats one clean message with the same
//! msgid, which the stores absorb. A record whose outputs cannot all be encoded writes nothing
//! and keeps its key (`encode_failed`): a tombstone is written only after what replaces the
//! letter is acknowledged. We decrypt here rather than writing back to the raw topic so
//! each record's result is known, counted and reported, and `attempts` survives.

use std::sync::Arc;
use wx_runtime::redrive::{Redrive, RedriveFuture, RedriveRequest};

use rayon::prelude::*;
use wx_codec::{DeadLetter, now_ms};
use wx_kafka::OutputRecord;
use wx_runtime::StageError;
use wx_runtime::letters::RedriveSummary;

use crate::decryptor::{Decryptor, Outcome};
use crate::processor::Outputs;

/// The decrypt stage's redrive: its decryptor and outputs, connected as the stage connects.
#[derive(Debug)]
pub struct Replay {
    decryptor: Arc<Decryptor>,
    outputs: Outputs,
}

impl Replay {
    pub fn new(decryptor: Arc<Decryptor>, outputs: Outputs) -> Replay {
        Replay { decryptor, outputs }
    }
}

impl Redrive for Replay {
    fn destination(&self) -> String {
        self.outputs.clean_topic().to_string()
    }

    fn redrive<'a>(&'a self, r: RedriveRequest<'a>) -> RedriveFuture<'a> {
        Box::pin(async move {
            let (selected, dry_run) = (r.selected, r.dry_run);
            Ok(redrive(
                self.decryptor.clone(),
                &self.outputs,
                selected,
                dry_run,
                r.progress,
            )
            .await)
        })
    }
}

/// Replays `selected` (see the module docs); `progress` is told how many are done so far.
pub async fn redrive(
    decryptor: Arc<Decryptor>,
    outputs: &Outputs,
    selected: Vec<(String, DeadLetter)>,
    dry_run: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> RedriveSummary {
    let mut summary = RedriveSummary::default();
    let mut done = 0u64;
    for chunk in selected.chunks(256) {
        let chunk = chunk.to_vec();
        for (_, dead) in &chunk {
            if outputs.schema_ready(&dead.original).await.is_err() {
                // Stopped while the registry could not answer: the rest stay parked.
                return summary;
            }
        }
        let worker = decryptor.clone();
        let now = now_ms();
        // Decryption is CPU-bound: the chunk runs on every core.
        let results: Vec<((String, DeadLetter), Vec<Outcome>)> =
            tokio::task::spawn_blocking(move || {
                chunk
                    .into_par_iter()
                    .map(|(key, dead)| {
                        let outcomes = worker.redrive(&dead, now);
                        ((key, dead), outcomes)
                    })
                    .collect()
            })
            .await
            .unwrap_or_default();
        for ((key, dead), outcomes) in results {
            let outcome = settle(outputs, &key, &outcomes, dry_run).await;
            *summary
                .rows
                .entry((dead.error_class.clone(), outcome))
                .or_default() += 1;
            done += 1;
            progress(done);
        }
    }
    summary
}

/// What replaying one parked record writes: its outputs (a letter that fails again keeps the
/// parked key), and whether the key is then tombstoned (only when nothing is parked under it
/// any more).
#[derive(Debug, PartialEq, Eq)]
struct Settlement {
    records: Vec<OutputRecord>,
    tombstone: bool,
}

/// Encodes every output of a replayed record first, so an output that cannot be encoded leaves
/// the letter exactly as it is.
fn settlement(
    outputs: &Outputs,
    key: &str,
    outcomes: &[Outcome],
) -> Result<Settlement, StageError> {
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Dead(_)))
        .count();
    let mut records = Vec::with_capacity(outcomes.len());
    let mut keeps_key = false;
    for outcome in outcomes {
        let Some(mut record) = outputs.encode(outcome)? else {
            continue;
        };
        if let Outcome::Dead(d) = outcome {
            // A record that fails again stays parked under the key it had.
            if failed == 1 || d.key() == key {
                record.key = key.as_bytes().to_vec();
                keeps_key = true;
            }
        }
        records.push(record);
    }
    Ok(Settlement {
        records,
        tombstone: !keeps_key,
    })
}

/// Writes one redriven record's outcomes; returns its summary outcome.
async fn settle(outputs: &Outputs, key: &str, outcomes: &[Outcome], dry_run: bool) -> String {
    let first_failure = outcomes.iter().find_map(|o| match o {
        Outcome::Dead(d) => Some(d.error_class.clone()),
        _ => None,
    });
    let label = match first_failure {
        Some(class) if dry_run => format!("would_fail:{class}"),
        Some(class) => format!("failed_again:{class}"),
        None if dry_run => "would_move".to_string(),
        None if outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Filtered { .. })) =>
        {
            "filtered".to_string()
        }
        None => "moved".to_string(),
    };
    if dry_run {
        return label;
    }
    let plan = match settlement(outputs, key, outcomes) {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!(error = %e, key, "A replayed record's output cannot be encoded; it stays parked.");
            return "encode_failed".to_string();
        }
    };
    if let Err(e) = outputs.write_all(plan.records).await {
        // Refused for good (a clean message still too large, a topic gone): the letter stays.
        tracing::error!(key, error = %e, "A replayed record's output is refused by the broker; it stays parked.");
        return match e.refusal() {
            Some(wx_kafka::Refusal::TooLarge) => format!("refused:{}", wx_runtime::TOO_LARGE),
            _ => "refused".to_string(),
        };
    }
    if plan.tombstone {
        // Only after the outputs are acknowledged: a crash before this line repeats them.
        if let Err(e) = outputs
            .producer()
            .send_until_acknowledged(
                outputs.dead_letter_topic(),
                key.as_bytes(),
                None,
                std::time::Duration::from_secs(10),
            )
            .await
        {
            tracing::error!(key, error = %e, "A replayed letter's tombstone is refused by the broker; the letter stays.");
        }
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::STAGE;
    use wx_codec::Codec;

    /// A parked archive item of corp `wwA`, built as the decryptor parks one.
    fn letter(class: &str, msgid: &str, at: i64) -> DeadLetter {
        let from = wx_codec::ParkedFrom {
            topic: "raw",
            partition: 0,
            offset: 1,
            seq: Some(1),
        };
        DeadLetter::new(
            STAGE,
            from,
            b"{}".to_vec(),
            "archive-item-json",
            class,
            "m",
            at,
        )
        .about("wwA", Some(msgid), Some(99))
    }

    fn moved_message() -> wx_codec::ChatMessage {
        wx_codec::ChatMessage {
            msgid: "m1".into(),
            corp_id: "wwA".into(),
            action: "send".into(),
            from: "alice".into(),
            tolist: vec!["bob".into()],
            roomid: String::new(),
            msgtime: 1_700_000_000_000,
            msgtype: "text".into(),
            payload_json: "{}".into(),
            extra_json: None,
            text: None,
            recalled_msgid: None,
            conversation_id: "single:alice:bob".into(),
            is_external: false,
            publickey_ver: Some(99),
            source: wx_codec::SourceCoordinates {
                topic: "raw".into(),
                partition: 0,
                offset: 1,
                seq: Some(1),
            },
            decrypted_at: 2,
        }
    }

    #[test]
    fn a_replay_is_tombstoned_only_when_every_output_encodes() {
        let codec = Arc::new(Codec::fixed().expect("codec"));
        let connector: wx_topology::ConnectorSpec = serde_yaml_ng::from_str(
            "name: decrypt\nconnector.class: wxstream.decrypt\ntasks.max: 1\ntopics: [raw]\n\
             output.topics: [clean]\nerrors.tolerance: all\n\
             errors.deadletterqueue.topic.name: dead",
        )
        .expect("connector");
        let context = wx_runtime::StageContext::new(
            STAGE,
            <crate::DecryptSettings as wx_runtime::StageSettings>::TOPICS,
            "",
            &connector,
            &wx_kafka::KafkaConfig::new("127.0.0.1:1"),
            codec.clone(),
            Default::default(),
        )
        .expect("context");
        let producer = wx_kafka::Producer::new(
            &context.kafka,
            "redrive-test",
            std::time::Duration::from_secs(1),
        )
        .expect("producer");
        let outputs = Outputs::new(&context, producer);
        let key = letter("unknown_key_version", "m1", 1).key();
        let moved = [Outcome::Clean(moved_message())];

        let plan = settlement(&outputs, &key, &moved).expect("encodes");
        assert_eq!(plan.records.len(), 1);
        assert_eq!(plan.records[0].topic, "clean");
        assert!(plan.tombstone);

        let again = [Outcome::Dead(letter("bad_padding", "m1", 5))];
        let plan = settlement(&outputs, &key, &again).expect("encodes");
        assert_eq!(plan.records[0].key, key.as_bytes());
        assert!(!plan.tombstone, "a letter that fails again keeps its key");

        codec.fail_encoding_after(wx_codec::RecordKind::ChatMessage, 0);
        assert!(
            settlement(&outputs, &key, &moved).is_err(),
            "nothing is written, and no tombstone, when the clean message cannot be encoded"
        );
    }
}
