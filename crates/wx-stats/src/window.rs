//! The window state machine of one clean-topic partition (see the crate docs).
//!
//! Event time: `msgtime`. The watermark is the largest msgtime seen; while the partition is idle
//! it also advances with wall-clock time, so windows still close. A window `[start, end)` closes
//! (its final record is emitted, revision 0) once the watermark reaches `end + grace`. It is then
//! kept for `lateness`: an event for it in that time is counted and, if its msgid is new, emits
//! a correction (revision + 1, still final). After `end + grace + lateness` the window is
//! dropped and an event for it is late: it is not counted and the caller parks it.

use std::collections::{BTreeMap, HashSet};

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
    /// Corrections of closed windows (new msgids within the lateness).
    pub corrections: Vec<GroupWindowCount>,
    /// Windows the message was too late for.
    pub late: Vec<Late>,
    /// True when the msgid was already counted in every window it falls in.
    pub duplicate: bool,
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
    watermark: i64,
    /// Wall-clock time of the last event (for idle advancement).
    last_event_wall: Option<i64>,
}

impl WindowStore {
    pub fn new(spec: WindowSpec) -> WindowStore {
        WindowStore {
            spec,
            windows: BTreeMap::new(),
            watermark: i64::MIN,
            last_event_wall: None,
        }
    }

    /// The event-time watermark at wall-clock `now` (advancing with the wall clock while idle).
    pub fn watermark(&self, now_wall: i64) -> i64 {
        match self.last_event_wall {
            Some(last) if self.watermark > i64::MIN => {
                self.watermark.saturating_add((now_wall - last).max(0))
            }
            _ => self.watermark,
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
        let watermark = self.watermark(now_wall);
        let mut counted_somewhere = false;
        for &size in &self.spec.sizes_ms {
            let start = m.msgtime.div_euclid(size) * size;
            let end = start + size;
            let key: Key = (m.corp_id.clone(), group.clone(), size, start);
            if !self.windows.contains_key(&key) {
                if end + self.spec.grace_ms + self.spec.lateness_ms <= watermark {
                    out.late.push(Late {
                        msgid: m.msgid.clone(),
                        window_size_ms: size,
                        window_start: start,
                    });
                    continue;
                }
                self.windows.insert(
                    key.clone(),
                    Window {
                        group_kind: kind.to_string(),
                        msgids: HashSet::new(),
                        by_msgtype: BTreeMap::new(),
                        first_offset: offset,
                        closed: false,
                        revision: 0,
                    },
                );
            }
            let Some(w) = self.windows.get_mut(&key) else {
                continue;
            };
            w.first_offset = w.first_offset.min(offset);
            if w.msgids.insert(m.msgid.clone()) {
                counted_somewhere = true;
                *w.by_msgtype.entry(m.msgtype.clone()).or_default() += 1;
                if w.closed {
                    w.revision += 1;
                    out.corrections.push(Self::record(&key, w, true, now_wall));
                }
            }
        }
        out.duplicate = !counted_somewhere && out.late.is_empty();
        self.watermark = self.watermark.max(m.msgtime);
        self.last_event_wall = Some(now_wall);
        out
    }

    /// Closes the windows the watermark has passed by their grace (their final records), and
    /// drops closed windows past their lateness.
    pub fn close_due(&mut self, now_wall: i64) -> Vec<GroupWindowCount> {
        let watermark = self.watermark(now_wall);
        let (grace, lateness) = (self.spec.grace_ms, self.spec.lateness_ms);
        let mut finals = Vec::new();
        for (key, w) in self.windows.iter_mut() {
            let end = key.3 + key.2;
            if !w.closed && end + grace <= watermark {
                w.closed = true;
                finals.push(Self::record(key, w, true, now_wall));
            }
        }
        self.windows
            .retain(|key, w| !(w.closed && key.3 + key.2 + grace + lateness <= watermark));
        finals
    }

    /// The offset that is safe to commit: the first record of the oldest retained window
    /// (None when no window is retained: everything read may be committed).
    pub fn safe_offset(&self) -> Option<i64> {
        self.windows.values().map(|w| w.first_offset).min()
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
        // Within the lateness: a correction, revision 1, still final.
        let c = s.observe(&msg("m0", "wr1", 10 * MIN + 7, "text"), 2, wall);
        assert_eq!(c.corrections.len(), 1);
        assert_eq!((c.corrections[0].total, c.corrections[0].revision), (2, 1));
        assert!(c.corrections[0].is_final);
        // A replayed msgid is no correction.
        assert!(
            s.observe(&msg("m0", "wr1", 10 * MIN + 7, "text"), 3, wall)
                .corrections
                .is_empty()
        );
        // Far past the lateness: the window is dropped, the event is late.
        s.observe(&msg("m9", "wr1", 20 * MIN, "text"), 4, wall);
        s.close_due(wall);
        let late = s.observe(&msg("mx", "wr1", 10 * MIN + 9, "text"), 5, wall);
        assert_eq!(late.late.len(), 1);
        assert!(late.corrections.is_empty());
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
