//! Which offsets of each partition are still being worked on, and therefore which offset is safe
//! to commit: the smallest offset in flight, or one past the last offset seen when nothing is in
//! flight. A stage finishes a record (every output acknowledged, every store written) in any
//! order; the committed offset only ever covers records that are all finished.
//!
//! A revoked partition's state is dropped and its generation bumped, so a record finished after
//! the revocation (its outputs are duplicates the new owner will repeat) never moves an offset.

use std::collections::{BTreeSet, HashMap};

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Proof that a record was begun, handed back to [`OffsetTracker::finish`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

#[derive(Debug)]
struct PartitionState {
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// One past the highest offset begun.
    next: i64,
    /// The offset last committed (the next offset to read), if any.
    committed: Option<i64>,
}

impl PartitionState {
    fn safe(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// Offsets in flight per partition (a pure state machine; the consumer wraps it in a mutex).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
    generation: u64,
}

impl OffsetTracker {
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    /// Records that `offset` of a partition is being worked on.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let generation = self.generation;
        let state = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_insert_with(|| PartitionState {
                generation,
                in_flight: BTreeSet::new(),
                next: offset,
                committed: None,
            });
        state.in_flight.insert(offset);
        state.next = state.next.max(offset + 1);
        Ticket {
            topic: topic.to_string(),
            partition,
            offset,
            generation: state.generation,
        }
    }

    /// Records that the ticket's record is done. Returns false for a ticket of a partition that
    /// was revoked since (it moves nothing).
    pub fn finish(&mut self, ticket: &Ticket) -> bool {
        match self
            .partitions
            .get_mut(&(ticket.topic.clone(), ticket.partition))
        {
            Some(state) if state.generation == ticket.generation => {
                state.in_flight.remove(&ticket.offset)
            }
            _ => false,
        }
    }

    /// Whether the ticket's record is still this member's to finish (its partition not revoked
    /// since, the record not finished).
    pub fn is_live(&self, ticket: &Ticket) -> bool {
        self.partitions
            .get(&(ticket.topic.clone(), ticket.partition))
            .is_some_and(|s| {
                s.generation == ticket.generation && s.in_flight.contains(&ticket.offset)
            })
    }

    /// The offset (next to read) that may be committed for a partition now.
    pub fn committable(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&(topic.to_string(), partition))
            .map(PartitionState::safe)
    }

    /// One past the highest offset begun in a partition (the consumer's position), if any.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&(topic.to_string(), partition))
            .map(|s| s.next)
    }

    /// Partitions whose safe offset moved past the last commit, with that offset.
    pub fn to_commit(&self) -> Vec<(TopicPartition, i64)> {
        let mut out: Vec<_> = self
            .partitions
            .iter()
            .filter(|(_, s)| s.committed != Some(s.safe()))
            .map(|(tp, s)| (tp.clone(), s.safe()))
            .collect();
        out.sort();
        out
    }

    /// Makes `offset` a partition's position, finished and not yet committed (so the next
    /// commit saves it), as if every record before it had been begun and finished here.
    pub fn resume_at(&mut self, topic: &str, partition: i32, offset: i64) {
        let generation = self.generation;
        self.partitions.insert(
            (topic.to_string(), partition),
            PartitionState {
                generation,
                in_flight: BTreeSet::new(),
                next: offset,
                committed: None,
            },
        );
    }

    /// Records a successful commit of `offset`.
    pub fn committed(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(state) = self.partitions.get_mut(&(topic.to_string(), partition)) {
            state.committed = Some(offset);
        }
    }

    /// Records in flight in the given partitions (all partitions when `None`).
    pub fn in_flight(&self, only: Option<&[TopicPartition]>) -> usize {
        self.partitions
            .iter()
            .filter(|(tp, _)| only.is_none_or(|list| list.contains(tp)))
            .map(|(_, s)| s.in_flight.len())
            .sum()
    }

    /// Forgets a partition (revoked); tickets begun before are stale from now on.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
        self.generation += 1;
    }

    /// The partitions with state.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        let mut out: Vec<_> = self.partitions.keys().cloned().collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_waits_for_the_oldest_unfinished_record() {
        let mut t = OffsetTracker::new();
        let a = t.begin("raw", 0, 10);
        let b = t.begin("raw", 0, 11);
        let c = t.begin("raw", 0, 12);
        assert_eq!(t.committable("raw", 0), Some(10));
        // Finishing out of order moves nothing until the oldest is done.
        assert!(t.finish(&c));
        assert!(t.finish(&b));
        assert_eq!(t.committable("raw", 0), Some(10));
        assert!(t.finish(&a));
        assert_eq!(t.committable("raw", 0), Some(13));
        assert_eq!(t.to_commit(), vec![(("raw".to_string(), 0), 13)]);
        t.committed("raw", 0, 13);
        assert!(t.to_commit().is_empty());
        assert_eq!(t.in_flight(None), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        let _slow = t.begin("raw", 0, 5);
        let fast = t.begin("raw", 1, 7);
        assert!(t.finish(&fast));
        assert_eq!(t.committable("raw", 0), Some(5));
        assert_eq!(t.committable("raw", 1), Some(8));
        assert_eq!(t.in_flight(Some(&[("raw".into(), 0)])), 1);
        assert_eq!(t.in_flight(Some(&[("raw".into(), 1)])), 0);
    }

    #[test]
    fn a_ticket_from_before_a_revocation_moves_nothing() {
        let mut t = OffsetTracker::new();
        let old = t.begin("raw", 0, 3);
        t.revoke("raw", 0);
        assert_eq!(t.committable("raw", 0), None);
        // Reassigned: the new owner starts again from the committed offset.
        let new = t.begin("raw", 0, 3);
        assert!(
            !t.finish(&old),
            "a stale ticket must not finish the new record"
        );
        assert_eq!(t.committable("raw", 0), Some(3));
        assert!(t.finish(&new));
        assert_eq!(t.committable("raw", 0), Some(4));
    }

    #[test]
    fn a_resumed_position_is_committed_next_and_records_go_on_from_it() {
        let mut tracker = OffsetTracker::new();
        tracker.resume_at("t", 0, 40);
        assert_eq!(tracker.to_commit(), vec![(("t".to_string(), 0), 40)]);
        tracker.committed("t", 0, 40);
        assert!(tracker.to_commit().is_empty());
        let ticket = tracker.begin("t", 0, 40);
        assert_eq!(tracker.committable("t", 0), Some(40));
        tracker.finish(&ticket);
        assert_eq!(tracker.to_commit(), vec![(("t".to_string(), 0), 41)]);
    }

    #[test]
    fn finishing_twice_is_harmless() {
        let mut t = OffsetTracker::new();
        let a = t.begin("raw", 0, 0);
        assert!(t.finish(&a));
        assert!(!t.finish(&a));
        assert_eq!(t.committable("raw", 0), Some(1));
    }
}
