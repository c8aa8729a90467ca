//! A safety net under the group protocol for brokers that do not evict a crashed member (tansu
//! 0.6.0 keeps it in the group, so its partitions stay assigned to a dead process; Apache Kafka
//! evicts it after `session.timeout.ms` and this net then never acts).
//!
//! Every worker heartbeats its group-assigned and adopted checkpoint partitions to a small
//! compacted topic. A partition that no live worker claims for a whole session timeout is an
//! orphan; the live workers, sorted by id, adopt orphans round-robin, all computing the same
//! answer from the same heartbeats. An adopter releases a partition as soon as a live worker's
//! group assignment covers it. Views can differ briefly, so two workers may pull one corp for a
//! moment: duplicates, never gaps, because a cursor only moves after its batch is acknowledged.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The heartbeat record (key = worker id), JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker: String,
    pub assigned: BTreeSet<i32>,
    pub adopted: BTreeSet<i32>,
    pub at_ms: i64,
    /// Sent once on a clean shutdown: the worker is gone now, not after a timeout.
    #[serde(default)]
    pub leaving: bool,
}

/// What this worker last heard from another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Local time the heartbeat arrived (not the sender's clock).
    pub at_ms: i64,
    pub assigned: BTreeSet<i32>,
    pub adopted: BTreeSet<i32>,
}

/// This worker's own state.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    pub id: &'a str,
    /// Partitions the group assigned it.
    pub assigned: &'a BTreeSet<i32>,
    /// Partitions it adopted earlier.
    pub adopted: &'a BTreeSet<i32>,
    /// False until it has run for a session timeout (it has heard everyone by then); before
    /// that it adopts nothing new.
    pub ready: bool,
}

/// The partitions `me` should hold adopted now, given the heartbeats it has seen.
pub fn adopt(
    me: Me<'_>,
    now_ms: i64,
    seen: &BTreeMap<String, Seen>,
    partitions: i32,
    session_ms: i64,
) -> BTreeSet<i32> {
    let Me {
        id: me,
        assigned: my_assigned,
        adopted: my_adopted,
        ready,
    } = me;
    let others: BTreeMap<&String, &Seen> = seen
        .iter()
        .filter(|(id, s)| id.as_str() != me && now_ms - s.at_ms <= session_ms)
        .collect();
    let mut live: Vec<&str> = others
        .keys()
        .map(|s| s.as_str())
        .chain(std::iter::once(me))
        .collect();
    live.sort_unstable();
    let others_assigned: BTreeSet<i32> = others
        .values()
        .flat_map(|s| s.assigned.iter().copied())
        .collect();
    // Keep what was adopted until a live worker's group assignment covers it, or a live worker
    // that sorts before this one adopted it too (a tie from briefly different views).
    let mut keep: BTreeSet<i32> = my_adopted
        .iter()
        .copied()
        .filter(|p| !others_assigned.contains(p))
        .filter(|p| {
            !others
                .iter()
                .any(|(id, s)| id.as_str() < me && s.adopted.contains(p))
        })
        .collect();
    if !ready {
        return keep;
    }
    let claimed: BTreeSet<i32> = others
        .values()
        .flat_map(|s| s.assigned.iter().chain(s.adopted.iter()).copied())
        .chain(my_assigned.iter().copied())
        .collect();
    for p in 0..partitions {
        if claimed.contains(&p) || keep.contains(&p) {
            continue;
        }
        let index = usize::try_from(p).unwrap_or(0) % live.len();
        if live[index] == me {
            keep.insert(p);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[i32]) -> BTreeSet<i32> {
        v.iter().copied().collect()
    }

    fn seen(at_ms: i64, assigned: &[i32], adopted: &[i32]) -> Seen {
        Seen {
            at_ms,
            assigned: set(assigned),
            adopted: set(adopted),
        }
    }

    /// `adopt` for worker `id` at t = 10 s, 6 partitions, a 6 s session.
    fn run(
        id: &str,
        seen: &BTreeMap<String, Seen>,
        assigned: &[i32],
        adopted: &[i32],
        ready: bool,
    ) -> BTreeSet<i32> {
        let (assigned, adopted) = (set(assigned), set(adopted));
        adopt(
            Me {
                id,
                assigned: &assigned,
                adopted: &adopted,
                ready,
            },
            10_000,
            seen,
            6,
            6_000,
        )
    }

    #[test]
    fn nothing_is_adopted_while_every_partition_has_a_live_owner() {
        let mut others = BTreeMap::new();
        others.insert("b".to_string(), seen(9_000, &[1, 3, 5], &[]));
        assert!(run("a", &others, &[0, 2, 4], &[], true).is_empty());
    }

    #[test]
    fn a_dead_workers_partitions_go_to_the_live_ones() {
        // c is silent for longer than the session: its partitions 1, 3, 5 are orphans. The live
        // workers are [a, b]; orphan p goes to live[p % 2], so b takes all three.
        let mut from_a = BTreeMap::new();
        from_a.insert("c".to_string(), seen(1_000, &[1, 3, 5], &[]));
        from_a.insert("b".to_string(), seen(9_500, &[2], &[]));
        assert!(run("a", &from_a, &[0, 4], &[], true).is_empty());
        let mut from_b = BTreeMap::new();
        from_b.insert("c".to_string(), seen(1_000, &[1, 3, 5], &[]));
        from_b.insert("a".to_string(), seen(9_500, &[0, 4], &[]));
        assert_eq!(run("b", &from_b, &[2], &[], true), set(&[1, 3, 5]));
        // Not before this worker has heard a full session of heartbeats.
        assert!(run("b", &from_b, &[2], &[], false).is_empty());
    }

    #[test]
    fn adopted_partitions_are_released_to_a_group_assignment_or_an_earlier_adopter() {
        let mut others = BTreeMap::new();
        others.insert("a".to_string(), seen(9_000, &[0, 1], &[4]));
        // b had adopted 0 (now group-assigned to a) and 4 (adopted by a, which sorts first).
        assert!(run("b", &others, &[2, 3, 5], &[0, 4], true).is_empty());
    }

    #[test]
    fn a_worker_alone_adopts_every_unclaimed_partition() {
        let mut others = BTreeMap::new();
        others.insert("dead".to_string(), seen(0, &[0, 1, 2, 3, 4, 5], &[]));
        assert_eq!(run("me", &others, &[], &[], true), set(&[0, 1, 2, 3, 4, 5]));
    }
}
