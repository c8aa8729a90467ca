//! The window state machine of one clean-topic partition (see the crate docs).
//!
//! Event time: `msgtime`. Each corp of the partition has its own watermark, the largest msgtime
//! seen of that corp: a partition mixes corps, and a corp onboarded with days of archive to catch
//! up (or one whose raw partition lags) must not be judged late against another corp's clock.
//! A window `[start, end)` (always one corp's) closes (its final record is emitted, revision 0)
//! once its corp's watermark reaches `end + grace`; while the corp is idle, closing also counts
//! the wall-clock time since its last event, so windows still close without new input. A closed window is kept for `lateness`: an event
//! for it in that time is counted and, if its msgid is new, the window is re-emitted at the next
//! `close_due` as a correction (revision + 1, still final; several new msgids between two calls
//! make one correction, since only the latest record of a key counts). Once the watermark passes
//! `end + grace + lateness` the window is dropped and an event for it is late: it is not counted
//! and the caller parks it.
//!
//! A corp that goes quiet would otherwise keep its last windows (and with them the partition's
//! committed offset, every later record held behind it, and the restart's replay) for as long
//! as it stays quiet: hours, days, for ever. So idle time drops windows as it closes them: once
//! the corp's closing watermark (event time plus the wall-clock time it has been idle) passes a
//! closed window's `end + grace + lateness`, the window is dropped, and its key is kept as
//! dropped (`idle_dropped`) until the corp's own event time passes it: an event for that window
//! is then late (or a duplicate), never the start of a partial count, while an event for a
//! window that never existed (a corp whose feed lagged and catches up) is counted as usual. The
//! idle clocks and the idle-dropped keys are in the [`Checkpoint`], so a replay after a restart
//! decides every event the same way.
//!
//! A msgid counted in a window that was since dropped and then delivered again (a producer's
//! resend, a redrive, a second pull) is a duplicate, not a late event: the store remembers the
//! identities of the last [`WindowSpec::remembered`] msgids of dropped windows (a 64-bit hash
//! each, about 40 bytes with the set and the eviction queue: 4 MB per partition at the default
//! 100,000). A redelivery older than that, or one after a restart for a window dropped before
//! it, is parked as late.
//!
//! Restart ([`Checkpoint`]): the stage commits, with each partition's offset, the corps'
//! watermarks and the last offset observed. A store resumed from it replays from the committed offset with that
//! watermark: the windows retained at the checkpoint are rebuilt whole (none is late against
//! it), records of windows dropped before it and events parked as late before it are recognised
//! as late again and skipped silently (they were handled), and no window closes until the
//! replay has passed the checkpoint, so no partial count is emitted.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use wx_codec::{ChatMessage, GroupWindowCount};

/// How 1:1 conversations are grouped (rooms are always grouped by room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectGrouping {
    /// One group per conversation (`single:<a>:<b>`).
    Conversation,
    /// One group per sender.
    Sender,
}

/// Window settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window sizes in ms (e.g. 60,000 and 3,600,000).
    pub sizes_ms: Vec<i64>,
    pub grace_ms: i64,
    /// How long after closing a window still takes corrections.
    pub lateness_ms: i64,
    pub direct: DirectGrouping,
    /// How many msgids of dropped windows are remembered, so their redelivery is a duplicate.
    pub remembered: usize,
}

/// An event too late for its window (beyond grace + lateness): park it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Late {
    pub msgid: String,
    pub window_size_ms: i64,
    pub window_start: i64,
}

/// What observing one message produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// True when the message added a msgid to a closed window (a correction is due).
    pub corrected: bool,
    /// Windows the message was too late for.
    pub late: Vec<Late>,
    /// True when the msgid was already counted in every window it falls in.
    pub duplicate: bool,
    /// True when a replayed record was recognised as handled before the restart.
    pub replayed: bool,
}

/// What a restarted store needs to replay exactly (committed with the partition's offset).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Each corp's watermark (largest msgtime) when it was taken: every retained window ends
    /// (with grace and lateness) after its corp's, every dropped window and parked late event
    /// before it.
    #[serde(default)]
    pub watermarks: BTreeMap<String, i64>,
    /// The partition's single watermark of a checkpoint written before watermarks were kept per
    /// corp: a corp the replay meets that `watermarks` does not name starts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<i64>,
    /// The last offset observed: records up to here were counted or parked already.
    pub through: i64,
    /// Each corp's wall-clock time (ms) of the last event that moved its watermark: a resumed
    /// store judges idleness as the one before it did (absent in older checkpoints: from the
    /// resume).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub idle_since: BTreeMap<String, i64>,
    /// Windows dropped for their corp's idleness that its event time has not passed yet
    /// (corp, group, size, start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_dropped: Vec<(String, String, i64, i64)>,
}

/// One corp's event-time clock on a partition.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// The largest msgtime seen.
    watermark: i64,
    /// Wall-clock time of the last event that moved the watermark (for idle advancement).
    last_event_wall: Option<i64>,
}

/// The identities of msgids counted in windows since dropped (bounded, oldest forgotten first).
#[derive(Debug, Default)]
struct Remembered {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Remembered {
    fn hash(corp: &str, msgid: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (corp, msgid).hash(&mut h);
        h.finish()
    }

    fn insert(&mut self, id: u64, capacity: usize) {
        if capacity == 0 || !self.set.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

type Key = (String, String, i64, i64); // corp, group, size, start

#[derive(Debug)]
struct Window {
    group_kind: String,
    msgids: HashSet<String>,
    by_msgtype: BTreeMap<String, i64>,
    first_offset: i64,
    closed: bool,
    revision: i32,
    /// Closed, and a msgid was added since its last record.
    corrected: bool,
}

/// The group of a message: (group id, group kind), or None for records that are not chat
/// messages (switch records).
pub fn group_of(m: &ChatMessage, direct: DirectGrouping) -> Option<(String, &'static str)> {
    if m.action == "switch" {
        return None;
    }
    if !m.roomid.is_empty() {
        return Some((m.roomid.clone(), "room"));
    }
    Some(match direct {
        DirectGrouping::Conversation => (m.conversation_id.clone(), "conversation"),
        DirectGrouping::Sender => (format!("sender:{}", m.from), "sender"),
    })
}

/// The windows of one partition.
#[derive(Debug)]
pub struct WindowStore {
    spec: WindowSpec,
    windows: BTreeMap<Key, Window>,
    /// The windows' first offsets, each with how many windows start there: the smallest is
    /// [`WindowStore::safe_offset`] in O(log n) per record, however many windows are open.
    first_offsets: BTreeMap<i64, usize>,
    /// Each corp's event-time clock.
    clocks: BTreeMap<String, Clock>,
    /// Where a corp first met while replaying a checkpoint of one partition-wide watermark
    /// starts (None otherwise).
    legacy_floor: Option<i64>,
    /// msgids of dropped windows.
    remembered: Remembered,
    /// Windows dropped for idleness before their corp's watermark passed them.
    idle_dropped: std::collections::BTreeSet<Key>,
    /// The last offset observed.
    last_offset: i64,
    /// A resumed store replays until it has observed this offset.
    replay_through: i64,
    /// Windows dropped so far.
    dropped: u64,
}

/// Takes one window starting at `offset` out of the multiset of first offsets.
fn forget_offset(first_offsets: &mut BTreeMap<i64, usize>, offset: i64) {
    if let std::collections::btree_map::Entry::Occupied(mut count) = first_offsets.entry(offset) {
        *count.get_mut() -= 1;
        if *count.get() == 0 {
            count.remove();
        }
    }
}

impl WindowStore {
    pub fn new(spec: WindowSpec) -> WindowStore {
        WindowStore {
            spec,
            windows: BTreeMap::new(),
            first_offsets: BTreeMap::new(),
            clocks: BTreeMap::new(),
            legacy_floor: None,
            remembered: Remembered::default(),
            idle_dropped: std::collections::BTreeSet::new(),
            last_offset: -1,
            replay_through: -1,
            dropped: 0,
        }
    }

    /// A store resumed after a restart from `checkpoint`, reading again from offset `from` (the
    /// committed offset: the first record it will be given).
    pub fn resume(
        spec: WindowSpec,
        checkpoint: Checkpoint,
        from: i64,
        now_wall: i64,
    ) -> WindowStore {
        let mut store = WindowStore::new(spec);
        let idle_since = checkpoint.idle_since;
        store.clocks = checkpoint
            .watermarks
            .into_iter()
            .map(|(corp, watermark)| {
                let clock = Clock {
                    watermark,
                    last_event_wall: Some(idle_since.get(&corp).copied().unwrap_or(now_wall)),
                };
                (corp, clock)
            })
            .collect();
        store.idle_dropped = checkpoint.idle_dropped.into_iter().collect();
        store.legacy_floor = checkpoint.watermark;
        store.last_offset = from - 1;
        store.replay_through = checkpoint.through;
        store
    }

    /// True while a resumed store has not yet replayed up to its checkpoint.
    pub fn replaying(&self) -> bool {
        self.last_offset < self.replay_through
    }

    /// The checkpoint to commit with the partition's offset, taken right after `close_due`
    /// (None while replaying: the previous checkpoint still holds).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        (!self.replaying()).then(|| Checkpoint {
            watermarks: self
                .clocks
                .iter()
                .map(|(corp, c)| (corp.clone(), c.watermark))
                .collect(),
            watermark: None,
            through: self.last_offset,
            idle_since: self
                .clocks
                .iter()
                .filter_map(|(corp, c)| Some((corp.clone(), c.last_event_wall?)))
                .collect(),
            idle_dropped: self.idle_dropped.iter().cloned().collect(),
        })
    }

    /// The partition's most advanced watermark (the largest msgtime seen of any corp;
    /// `i64::MIN` before any).
    pub fn watermark(&self) -> i64 {
        self.clocks
            .values()
            .map(|c| c.watermark)
            .max()
            .unwrap_or(i64::MIN)
    }

    /// A corp's watermark (`i64::MIN` before its first event).
    fn corp_watermark(&self, corp: &str) -> i64 {
        self.clocks.get(corp).map_or(i64::MIN, |c| c.watermark)
    }

    /// The watermark a corp's windows close against at wall-clock `now`: its event-time
    /// watermark plus the time the corp has been idle (not while replaying).
    fn closing_watermark(&self, corp: &str, now_wall: i64) -> i64 {
        match self.clocks.get(corp) {
            Some(Clock {
                watermark,
                last_event_wall: Some(last),
            }) if *watermark > i64::MIN && !self.replaying() => {
                watermark.saturating_add((now_wall - last).max(0))
            }
            _ => self.corp_watermark(corp),
        }
    }

    fn record(key: &Key, w: &Window, is_final: bool, now_wall: i64) -> GroupWindowCount {
        GroupWindowCount {
            corp_id: key.0.clone(),
            group_id: key.1.clone(),
            group_kind: w.group_kind.clone(),
            window_size_ms: key.2,
            window_start: key.3,
            window_end: key.3 + key.2,
            total: i64::try_from(w.msgids.len()).unwrap_or(i64::MAX),
            by_msgtype: w.by_msgtype.clone(),
            is_final,
            revision: w.revision,
            emitted_at: now_wall,
        }
    }

    /// Counts one message read at `offset`. Switch records are ignored (nothing returned).
    pub fn observe(&mut self, m: &ChatMessage, offset: i64, now_wall: i64) -> Observed {
        let mut out = Observed::default();
        let Some((group, kind)) = group_of(m, self.spec.direct) else {
            return out;
        };
        let watermark = match self.clocks.get(&m.corp_id) {
            Some(clock) => clock.watermark,
            // A corp first met while replaying a checkpoint of one partition-wide watermark.
            None if offset <= self.replay_through => self.legacy_floor.unwrap_or(i64::MIN),
            None => i64::MIN,
        };
        let mut counted_somewhere = false;
        for &size in &self.spec.sizes_ms {
            let start = m.msgtime.div_euclid(size) * size;
            let end = start + size;
            let key: Key = (m.corp_id.clone(), group.clone(), size, start);
            // Past its lateness the window is over, whether or not `close_due` has removed it
            // yet (by event time), or its corp's idleness dropped it.
            if end + self.spec.grace_ms + self.spec.lateness_ms <= watermark
                || self.idle_dropped.contains(&key)
            {
                let identity = Remembered::hash(&m.corp_id, &m.msgid);
                if self
                    .windows
                    .get(&key)
                    .is_some_and(|w| w.msgids.contains(&m.msgid))
                    || self.remembered.set.contains(&identity)
                {
                    continue; // a redelivered duplicate of a counted msgid
                }
                if offset <= self.replay_through {
                    // Counted in a window since dropped, or parked, before the restart: either
                    // way handled, so a later redelivery is a duplicate too.
                    self.remembered.insert(identity, self.spec.remembered);
                    out.replayed = true;
                    continue;
                }
                out.late.push(Late {
                    msgid: m.msgid.clone(),
                    window_size_ms: size,
                    window_start: start,
                });
                continue;
            }
            let w = match self.windows.entry(key) {
                std::collections::btree_map::Entry::Occupied(found) => {
                    let w = found.into_mut();
                    if offset < w.first_offset {
                        forget_offset(&mut self.first_offsets, w.first_offset);
                        *self.first_offsets.entry(offset).or_default() += 1;
                        w.first_offset = offset;
                    }
                    w
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    *self.first_offsets.entry(offset).or_default() += 1;
                    slot.insert(Window {
                        group_kind: kind.to_string(),
                        msgids: HashSet::new(),
                        by_msgtype: BTreeMap::new(),
                        first_offset: offset,
                        closed: false,
                        revision: 0,
                        corrected: false,
                    })
                }
            };
            if w.msgids.insert(m.msgid.clone()) {
                counted_somewhere = true;
                *w.by_msgtype.entry(m.msgtype.clone()).or_default() += 1;
                if w.closed {
                    w.corrected = true;
                    out.corrected = true;
                }
            }
        }
        out.duplicate = !counted_somewhere && out.late.is_empty();
        let clock = self.clocks.entry(m.corp_id.clone()).or_insert(Clock {
            watermark,
            last_event_wall: None,
        });
        clock.watermark = watermark.max(m.msgtime);
        // (The watermark moves with events only; idle time only speeds up closing.) The idle
        // clock restarts only when event time moves on: a redelivered duplicate or an event
        // behind the watermark says nothing about the source still producing, and after a
        // broker crash the decrypt producer's resends trickled duplicates into a partition for
        // minutes, holding its last windows open for as long.
        if m.msgtime > watermark {
            clock.last_event_wall = Some(now_wall);
        }
        self.last_offset = self.last_offset.max(offset);
        out
    }

    /// The records due now: corrections of closed windows that gained msgids, and the final
    /// records of the windows the watermark has passed by their grace. Then drops closed
    /// windows past their lateness. Nothing is emitted or dropped while replaying.
    pub fn close_due(&mut self, now_wall: i64) -> Vec<GroupWindowCount> {
        if self.replaying() {
            return Vec::new();
        }
        // (corp -> (closing watermark, watermark)) for the corps with retained windows.
        let marks: BTreeMap<String, (i64, i64)> = self
            .clocks
            .keys()
            .map(|corp| {
                let marks = (
                    self.closing_watermark(corp, now_wall),
                    self.corp_watermark(corp),
                );
                (corp.clone(), marks)
            })
            .collect();
        let marks_of = |corp: &str| marks.get(corp).copied().unwrap_or((i64::MIN, i64::MIN));
        let (grace, lateness) = (self.spec.grace_ms, self.spec.lateness_ms);
        let mut finals = Vec::new();
        for (key, w) in self.windows.iter_mut() {
            let end = key.3 + key.2;
            let (closing, _) = marks_of(&key.0);
            if w.corrected {
                w.corrected = false;
                w.revision += 1;
                finals.push(Self::record(key, w, true, now_wall));
            } else if !w.closed && end + grace <= closing {
                w.closed = true;
                finals.push(Self::record(key, w, true, now_wall));
            }
        }
        let (before, capacity) = (self.windows.len(), self.spec.remembered);
        let remembered = &mut self.remembered;
        let idle_dropped = &mut self.idle_dropped;
        let first_offsets = &mut self.first_offsets;
        self.windows.retain(|key, w| {
            let over_at = key.3 + key.2 + grace + lateness;
            let (closing, watermark) = marks_of(&key.0);
            let over = w.closed && over_at <= closing;
            if over {
                if over_at > watermark {
                    // Dropped for idleness, ahead of the corp's event time.
                    idle_dropped.insert(key.clone());
                }
                for msgid in &w.msgids {
                    remembered.insert(Remembered::hash(&key.0, msgid), capacity);
                }
                forget_offset(first_offsets, w.first_offset);
            }
            !over
        });
        // Keys the corp's own event time has since passed are over by the usual rule.
        idle_dropped.retain(|key| key.3 + key.2 + grace + lateness > marks_of(&key.0).1);
        self.dropped += (before - self.windows.len()) as u64;
        finals
    }

    /// The offset that is safe to commit: the first record of the oldest retained window
    /// (None when no window is retained: everything read may be committed).
    pub fn safe_offset(&self) -> Option<i64> {
        self.first_offsets.keys().next().copied()
    }

    /// The last offset observed (-1 before any).
    pub fn last_offset(&self) -> i64 {
        self.last_offset
    }

    /// Windows dropped so far (past their lateness).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Windows not yet closed.
    pub fn open_windows(&self) -> usize {
        self.windows.values().filter(|w| !w.closed).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wx_codec::SourceCoordinates;

    const MIN: i64 = 60_000;

    fn msg(msgid: &str, room: &str, msgtime: i64, msgtype: &str) -> ChatMessage {
        ChatMessage {
            msgid: msgid.into(),
            corp_id: "ww1".into(),
            action: match msgtype {
                "revoke" => "recall",
                "switch" => "switch",
                _ => "send",
            }
            .into(),
            from: "a".into(),
            tolist: vec!["b".into()],
            roomid: room.into(),
            msgtime,
            msgtype: msgtype.into(),
            payload_json: "{}".into(),
            extra_json: None,
            text: None,
            recalled_msgid: None,
            conversation_id: if room.is_empty() {
                "single:a:b".into()
            } else {
                room.into()
            },
            is_external: false,
            publickey_ver: Some(1),
            source: SourceCoordinates {
                topic: "clean".into(),
                partition: 0,
                offset: 0,
                seq: None,
            },
            decrypted_at: 0,
        }
    }

    fn store() -> WindowStore {
        WindowStore::new(WindowSpec {
            sizes_ms: vec![MIN],
            grace_ms: 5_000,
            lateness_ms: 2 * MIN,
            direct: DirectGrouping::Conversation,
            remembered: 1_000,
        })
    }

    #[test]
    fn distinct_msgids_by_type_and_a_final_record_after_grace() {
        let mut s = store();
        let wall = 1_000_000;
        s.observe(&msg("m1", "wr1", 10 * MIN + 1, "text"), 0, wall);
        let dup = s.observe(&msg("m1", "wr1", 10 * MIN + 1, "text"), 1, wall);
        assert!(dup.duplicate, "a duplicate msgid is not counted twice");
        s.observe(&msg("m2", "wr1", 10 * MIN + 2, "revoke"), 2, wall);
        s.observe(&msg("sw", "", 10 * MIN + 3, "switch"), 3, wall);
        assert!(s.close_due(wall).is_empty(), "not before end + grace");
        // An event past end + grace closes the window.
        s.observe(&msg("m3", "wr1", 11 * MIN + 5_000, "text"), 4, wall);
        let finals = s.close_due(wall);
        assert_eq!(finals.len(), 1);
        let f = &finals[0];
        assert_eq!((f.total, f.revision, f.is_final), (2, 0, true));
        assert_eq!(
            f.by_msgtype,
            BTreeMap::from([("revoke".into(), 1), ("text".into(), 1)])
        );
        assert_eq!(
            (f.window_start, f.window_end, f.group_id.as_str()),
            (10 * MIN, 11 * MIN, "wr1")
        );
        assert_eq!(f.key(), format!("ww1/wr1/{MIN}/{}", 10 * MIN));
    }

    #[test]
    fn corrections_within_lateness_and_late_events_beyond_it() {
        let mut s = store();
        let wall = 0;
        s.observe(&msg("m1", "wr1", 10 * MIN, "text"), 0, wall);
        s.observe(&msg("m2", "wr1", 12 * MIN, "text"), 1, wall);
        assert_eq!(s.close_due(wall).len(), 1);
        // Within the lateness: a correction at the next call, revision 1, still final; two new
        // msgids in between make one correction.
        assert!(
            s.observe(&msg("m0", "wr1", 10 * MIN + 7, "text"), 2, wall)
                .corrected
        );
        assert!(
            s.observe(&msg("m00", "wr1", 10 * MIN + 8, "text"), 3, wall)
                .corrected
        );
        let c = s.close_due(wall);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].total, c[0].revision), (3, 1));
        assert!(c[0].is_final);
        // A replayed msgid is no correction.
        assert!(
            !s.observe(&msg("m0", "wr1", 10 * MIN + 7, "text"), 3, wall)
                .corrected
        );
        assert!(s.close_due(wall).is_empty());
        // Far past the lateness: the window is dropped, the event is late.
        s.observe(&msg("m9", "wr1", 20 * MIN, "text"), 4, wall);
        s.close_due(wall);
        let late = s.observe(&msg("mx", "wr1", 10 * MIN + 9, "text"), 5, wall);
        assert_eq!(late.late.len(), 1);
        assert!(!late.corrected);
    }

    #[test]
    fn lateness_does_not_depend_on_when_windows_are_removed() {
        let mut s = store();
        s.observe(&msg("m1", "wr1", 10 * MIN, "text"), 0, 0);
        // The watermark passes the window's end + grace + lateness; no `close_due` ran yet.
        s.observe(&msg("m2", "wr2", 20 * MIN, "text"), 1, 0);
        let late = s.observe(&msg("m3", "wr1", 10 * MIN + 1, "text"), 2, 0);
        assert_eq!(late.late.len(), 1, "over, even though not yet removed");
        let again = s.observe(&msg("m1", "wr1", 10 * MIN, "text"), 3, 0);
        assert!(
            again.late.is_empty(),
            "a redelivered counted msgid is a duplicate"
        );
        let finals = s.close_due(0);
        assert_eq!(
            finals.iter().find(|f| f.group_id == "wr1").map(|f| f.total),
            Some(1)
        );
    }

    fn of_corp(corp: &str, m: ChatMessage) -> ChatMessage {
        ChatMessage {
            corp_id: corp.into(),
            ..m
        }
    }

    #[test]
    fn a_corp_behind_another_on_one_partition_is_counted_not_late() {
        let mut s = store();
        // ww1 is live at minute 100; ww2 is onboarded with its archive from minute 85 on.
        s.observe(&msg("a1", "wr1", 100 * MIN, "text"), 0, 0);
        s.observe(&msg("a2", "wr1", 101 * MIN + 6_000, "text"), 1, 0);
        for i in 0..30 {
            let o = s.observe(
                &of_corp(
                    "ww2",
                    msg(&format!("b{i}"), "wr1", 85 * MIN + i * 30_000, "text"),
                ),
                2 + i,
                0,
            );
            assert!(o.late.is_empty(), "ww2's event {i} is not late: {o:?}");
        }
        let finals = s.close_due(0);
        let total = |corp: &str| -> i64 {
            finals
                .iter()
                .filter(|f| f.corp_id == corp)
                .map(|f| f.total)
                .sum()
        };
        assert_eq!(
            total("ww1"),
            1,
            "ww1's minute 100 closed on ww1's watermark"
        );
        // ww2's watermark is at 99.5 min: its minutes 85..=98 closed, each with 2 msgids.
        assert_eq!(total("ww2"), 28);
        assert_eq!(s.checkpoint().expect("checkpoint").watermarks.len(), 2);
    }

    #[test]
    fn a_counted_msgid_redelivered_after_its_window_was_dropped_is_a_duplicate() {
        let mut s = store();
        s.observe(&msg("m1", "wr1", 10 * MIN, "text"), 0, 0);
        s.observe(&msg("m2", "wr1", 20 * MIN, "text"), 1, 0);
        s.close_due(0);
        assert_eq!(s.dropped(), 1, "the 10-minute window is past its lateness");
        let again = s.observe(&msg("m1", "wr1", 10 * MIN, "text"), 2, 0);
        assert!(again.late.is_empty() && again.duplicate, "{again:?}");
        // A msgid never counted there is late; another corp's m1 is not ww1's.
        assert_eq!(
            s.observe(&msg("m0", "wr1", 10 * MIN, "text"), 3, 0)
                .late
                .len(),
            1
        );
        let other = s.observe(&of_corp("ww2", msg("m1", "wr1", 10 * MIN, "text")), 4, 0);
        assert!(
            other.late.is_empty() && !other.duplicate,
            "ww2's first event"
        );
        // The memory is bounded: the oldest msgids are forgotten first.
        let mut small = WindowStore::new(WindowSpec {
            remembered: 2,
            ..store().spec
        });
        for (i, id) in ["x1", "x2", "x3"].iter().enumerate() {
            small.observe(&msg(id, "wr1", 10 * MIN + i as i64, "text"), i as i64, 0);
        }
        small.observe(&msg("y", "wr1", 20 * MIN, "text"), 3, 0);
        small.close_due(0);
        let late = |s: &mut WindowStore, id: &str| {
            !s.observe(&msg(id, "wr1", 10 * MIN, "text"), 9, 0)
                .late
                .is_empty()
        };
        let forgotten = ["x1", "x2", "x3"]
            .iter()
            .filter(|id| late(&mut small, id))
            .count();
        assert_eq!(forgotten, 1, "two of three remembered");
    }

    #[test]
    fn a_checkpoint_with_one_partition_watermark_still_resumes() {
        let legacy: Checkpoint =
            serde_json::from_str(r#"{"watermark": 1200000, "through": 4}"#).expect("parse");
        assert_eq!(legacy.watermark, Some(20 * MIN));
        let mut s = WindowStore::resume(store().spec, legacy, 3, 0);
        // Replayed (offset <= through) for a window dropped against the old watermark: skipped.
        assert!(
            s.observe(&msg("m1", "wr1", 10 * MIN, "text"), 4, 0)
                .replayed
        );
        let written =
            serde_json::to_string(&s.checkpoint().expect("done replaying")).expect("json");
        assert!(!written.contains("\"watermark\""), "{written}");
    }

    #[test]
    fn an_idle_partition_closes_on_wall_clock_time() {
        let mut s = store();
        s.observe(&msg("m1", "wr1", 10 * MIN + 30_000, "text"), 0, 1_000);
        assert!(s.close_due(1_000).is_empty());
        // No input: the window [10, 11) min closes once 30 s + 5 s grace of wall time passed.
        assert!(s.close_due(1_000 + 34_000).is_empty());
        assert_eq!(s.close_due(1_000 + 35_000).len(), 1);
        assert_eq!(s.open_windows(), 0);
        // Within the lateness of idle time the window is kept: an event for it is a correction.
        let c = s.observe(
            &msg("m2", "wr1", 10 * MIN + 40_000, "text"),
            1,
            1_000 + 60_000,
        );
        assert!(c.corrected && c.late.is_empty());
        assert_eq!(s.close_due(1_000 + 60_000)[0].revision, 1);
        assert_eq!(s.safe_offset(), Some(0));
    }

    #[test]
    fn a_quiet_corp_lets_its_windows_go_after_their_lateness_of_idle_time() {
        // Corp ww1 sends at 10:30 and goes quiet; ww2 keeps the partition busy.
        let mut s = store();
        s.observe(&msg("a1", "wr1", 10 * MIN + 30_000, "text"), 0, 0);
        let other = |i: i64| ChatMessage {
            corp_id: "ww2".into(),
            ..msg(
                &format!("b{i}"),
                "wr9",
                10 * MIN + 30_000 + i * 1_000,
                "text",
            )
        };
        for i in 1..=100 {
            s.observe(&other(i), i, i * 1_000);
            s.close_due(i * 1_000);
        }
        // 100 s of wall time: ww1's window [10, 11) is closed but within its lateness.
        assert_eq!(s.safe_offset(), Some(0), "ww1's window still held");
        // Its end (11:00) + 5 s grace + 2 min lateness, less its watermark (10:30), of idle time:
        // 155 s after its last event. Then it goes, and ww1's offset no longer holds the
        // partition.
        for i in 101..=160 {
            s.observe(&other(i), i, i * 1_000);
            s.close_due(i * 1_000);
        }
        assert!(
            s.safe_offset().is_some_and(|o| o > 0),
            "ww1's window no longer pins the offset: {:?}",
            s.safe_offset()
        );
        // An event for the dropped window is late, not the start of a partial count; one of a
        // window that never existed (ww1's feed catching up) is counted.
        let late = s.observe(&msg("a2", "wr1", 10 * MIN + 50_000, "text"), 161, 161_000);
        assert_eq!(late.late.len(), 1, "{late:?}");
        let caught_up = s.observe(&msg("a3", "wr1", 11 * MIN + 10_000, "text"), 162, 162_000);
        assert!(
            caught_up.late.is_empty() && !caught_up.duplicate,
            "{caught_up:?}"
        );
        // A redelivery of the counted msgid is a duplicate.
        let again = s.observe(&msg("a1", "wr1", 10 * MIN + 30_000, "text"), 163, 163_000);
        assert!(again.duplicate && again.late.is_empty(), "{again:?}");
        // A store resumed from the checkpoint decides the same: the window is still dropped.
        let cp = s.checkpoint().expect("a checkpoint");
        assert_eq!(cp.idle_dropped.len(), 1, "{cp:?}");
        let mut resumed = WindowStore::resume(store().spec, cp, 164, 500_000);
        let late = resumed.observe(&msg("a4", "wr1", 10 * MIN + 55_000, "text"), 164, 500_000);
        assert_eq!(late.late.len(), 1, "{late:?}");
        // Once ww1's own event time passes the window, the key is no longer kept.
        resumed.observe(&msg("a5", "wr1", 14 * MIN, "text"), 165, 500_000);
        resumed.close_due(500_000);
        assert!(resumed.checkpoint().expect("cp").idle_dropped.is_empty());
    }

    #[test]
    fn redelivered_duplicates_do_not_hold_an_idle_partition_open() {
        let mut s = store();
        s.observe(&msg("m1", "wr1", 10 * MIN + 30_000, "text"), 0, 1_000);
        // A duplicate every 10 s of wall time (a producer's resends after a broker crash): the
        // watermark does not move, and neither may the idle clock's start.
        for i in 1..=5 {
            let d = s.observe(
                &msg("m1", "wr1", 10 * MIN + 30_000, "text"),
                i,
                1_000 + i * 10_000,
            );
            assert!(d.duplicate);
        }
        assert_eq!(
            s.close_due(1_000 + 35_000).len(),
            1,
            "closed 35 s after the last new event"
        );
    }

    #[test]
    fn the_safe_offset_never_passes_a_retained_window() {
        let mut s = store();
        s.observe(&msg("m1", "wr1", 10 * MIN, "text"), 7, 0);
        s.observe(&msg("m2", "wr2", 10 * MIN, "text"), 8, 0);
        s.observe(&msg("m3", "wr1", 11 * MIN + 5_000, "text"), 9, 0);
        s.close_due(0);
        // Closed but within lateness: still retained, so offset 7 is still needed.
        assert_eq!(s.safe_offset(), Some(7));
        s.observe(&msg("m4", "wr1", 13 * MIN + 6_000, "text"), 10, 0);
        s.close_due(0);
        assert_eq!(
            s.safe_offset(),
            Some(9),
            "older windows dropped, 11-min window still retained"
        );
    }

    /// What a run left on the compacted stats topic (latest total per key) and in the
    /// dead-letter topic (late events, by window).
    #[derive(Debug, Default)]
    struct Outcome {
        latest: BTreeMap<String, i64>,
        late: std::collections::BTreeSet<(String, i64, i64)>,
        /// Every total ever emitted per key (a partial count would show up here).
        emitted: BTreeMap<String, std::collections::BTreeSet<i64>>,
    }

    impl Outcome {
        fn emit(&mut self, r: &GroupWindowCount) {
            self.latest.insert(r.key(), r.total);
            self.emitted.entry(r.key()).or_default().insert(r.total);
        }
    }

    /// Drives a store over `events` (message, wall time) with a tick (close, checkpoint, commit)
    /// every wall-clock second; with `crash_after = Some(k)`, the process dies after event `k`
    /// and a new store resumes from the last committed offset and checkpoint, as the stage does.
    fn drive(
        spec: &WindowSpec,
        events: &[(ChatMessage, i64)],
        crash_after: Option<usize>,
    ) -> Outcome {
        let mut out = Outcome::default();
        let mut store = WindowStore::new(spec.clone());
        // The committed offset and the checkpoint last written, as the stage keeps them.
        let mut committed: (i64, Option<Checkpoint>) = (0, None);
        let mut written: Option<(i64, u64)> = None;
        let mut next_tick = events[0].1;
        let tick = |store: &mut WindowStore,
                    now: i64,
                    out: &mut Outcome,
                    committed: &mut (i64, Option<Checkpoint>),
                    written: &mut Option<(i64, u64)>| {
            for r in store.close_due(now) {
                out.emit(&r);
            }
            let offset = store.safe_offset().unwrap_or(store.last_offset() + 1);
            // A checkpoint is written when windows were dropped or the offset moved, then the
            // offset is committed.
            if let Some(cp) = store.checkpoint()
                && *written != Some((offset, store.dropped()))
            {
                committed.1 = Some(cp);
                *written = Some((offset, store.dropped()));
            }
            committed.0 = offset;
        };
        let observe = |store: &mut WindowStore, i: usize, now: i64, out: &mut Outcome| {
            let o = store.observe(&events[i].0, i as i64, now);
            for l in o.late {
                out.late.insert((l.msgid, l.window_size_ms, l.window_start));
            }
        };
        let mut i = 0;
        while i < events.len() {
            let wall = events[i].1;
            while next_tick <= wall {
                tick(
                    &mut store,
                    next_tick,
                    &mut out,
                    &mut committed,
                    &mut written,
                );
                next_tick += 1_000;
            }
            observe(&mut store, i, wall, &mut out);
            if crash_after == Some(i) {
                // kill -9: the state is gone; replay from the committed offset at once.
                let (from, checkpoint) = committed.clone();
                store = match checkpoint {
                    Some(cp) => WindowStore::resume(spec.clone(), cp, from, wall),
                    None => WindowStore::new(spec.clone()),
                };
                written = None;
                // The replay takes a while: the stage's ticks keep running meanwhile.
                for j in from as usize..=i {
                    observe(&mut store, j, wall, &mut out);
                    if j % 50 == 0 {
                        tick(&mut store, wall, &mut out, &mut committed, &mut written);
                    }
                }
            }
            i += 1;
        }
        let end = events[events.len() - 1].1 + 3 * 3_600_000;
        tick(&mut store, end, &mut out, &mut committed, &mut written);
        out
    }

    #[test]
    fn a_crash_at_any_moment_leaves_the_same_latest_counts_and_late_events() {
        let spec = WindowSpec {
            sizes_ms: vec![MIN, 60 * MIN],
            grace_ms: 10_000,
            lateness_ms: 10 * MIN,
            direct: DirectGrouping::Conversation,
            remembered: 100_000,
        };
        // 3,000 events 100 ms apart in wall time, 700 ms apart in event time, with duplicates,
        // small disorder (within grace), corrections (1-5 min behind) and late events (25 min
        // behind, past the 1-minute windows' lateness).
        let t0 = 100 * 60 * MIN;
        let mut events = Vec::new();
        for i in 0..3_000i64 {
            let mut t = t0 + i * 700;
            if i % 11 == 0 {
                t -= 3_000;
            }
            if i % 53 == 0 {
                t -= (1 + i % 5) * MIN;
            }
            if i % 97 == 0 && i > 2_500 {
                t -= 25 * MIN;
            }
            let room = ["wr1", "wr2", ""][(i % 3) as usize];
            let m = msg(
                &format!("m{i}"),
                room,
                t,
                if i % 13 == 0 { "revoke" } else { "text" },
            );
            events.push((m.clone(), 5_000_000 + i * 100));
            if i % 7 == 0 {
                events.push((m, 5_000_000 + i * 100 + 50));
            }
        }
        let clean = drive(&spec, &events, None);
        assert!(!clean.late.is_empty(), "the input has late events");
        // The run without a crash counts exactly the distinct msgids of each window, minus the
        // events parked as late for that window.
        let mut truth: BTreeMap<String, std::collections::BTreeSet<&str>> = BTreeMap::new();
        for (m, _) in &events {
            for &size in &spec.sizes_ms {
                let start = m.msgtime.div_euclid(size) * size;
                if !clean.late.contains(&(m.msgid.clone(), size, start)) {
                    let (group, _) = group_of(m, spec.direct).expect("group");
                    truth
                        .entry(format!("{}/{group}/{size}/{start}", m.corp_id))
                        .or_default()
                        .insert(&m.msgid);
                }
            }
        }
        let truth: BTreeMap<String, i64> = truth
            .into_iter()
            .map(|(k, v)| (k, v.len() as i64))
            .collect();
        assert_eq!(clean.latest, truth);
        for k in (40..events.len()).step_by(97) {
            let crashed = drive(&spec, &events, Some(k));
            assert_eq!(crashed.latest, clean.latest, "crash after event {k}");
            assert_eq!(crashed.late, clean.late, "crash after event {k}");
            // The replay never writes a count the run without a crash did not write (no partial
            // window is emitted while replaying).
            for (key, totals) in &crashed.emitted {
                assert!(
                    totals.is_subset(&clean.emitted[key]),
                    "crash after event {k}: {key}"
                );
            }
        }
    }

    #[test]
    fn direct_chats_group_by_conversation_or_sender() {
        let m = msg("m1", "", 0, "text");
        assert_eq!(
            group_of(&m, DirectGrouping::Conversation),
            Some(("single:a:b".into(), "conversation"))
        );
        assert_eq!(
            group_of(&m, DirectGrouping::Sender),
            Some(("sender:a".into(), "sender"))
        );
        assert_eq!(
            group_of(&msg("m", "wr9", 0, "text"), DirectGrouping::Sender),
            Some(("wr9".into(), "room"))
        );
    }
}
