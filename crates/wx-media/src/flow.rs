//! The media flow's decisions, apart from its I/O (`archive.rs` carries them out): where a
//! download begins, and what follows each attempt (record it, park the item and why, or begin
//! again). Pure, with table tests: every way a download can end is one row.

use crate::archive::{MEDIA_EXPIRED, MEDIA_MD5, MEDIA_UNAVAILABLE, STORE_REJECTED};

/// WeCom's codes for a file gone for good: GetMediaData's expired or deleted file, and
/// media/get's invalid `MediaId` (past its 3 days).
pub(crate) const WECOM_FILE_EXPIRED: [i64; 2] = [10010, 40007];

/// Downloads of one item begun from zero because its upload broke (the store lost it, or would
/// not make the object of its parts), before it is parked as the store's refusal of the item.
pub(crate) const RESTART_LIMIT: u32 = 3;

/// Sends of one part the store refused as damaged (`BadDigest`) before the download begins
/// again from zero.
pub(crate) const PART_SENDS: u32 = 3;

/// Where a download begins, from the item's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// From the checkpointed part on.
    Resume,
    /// From zero, after aborting the checkpoint's upload (its checkpoint does not read).
    AbortThenFresh,
    /// From zero (no checkpoint).
    Fresh,
}

/// `checkpoint`: None without one, Some(readable) with one.
pub(crate) fn begin(checkpoint: Option<bool>) -> Begin {
    match checkpoint {
        Some(true) => Begin::Resume,
        Some(false) => Begin::AbortThenFresh,
        None => Begin::Fresh,
    }
}

/// How one attempt ended, as far as deciding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every byte stored, the MD5 as stated.
    Done,
    /// The bytes' MD5 is not the stated one.
    Md5Mismatch,
    /// WeCom refuses the file, with its code.
    Gone { code: i64 },
    /// The upload broke (gone, or its parts refused as a whole).
    UploadBroke,
    /// A store refuses the item as such (MySQL its row, the object store its key or size).
    Refused,
}

/// The attempts so far of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tries {
    /// Downloads begun from zero, this one included.
    pub downloads: u32,
    /// Of those, begun again because the upload broke.
    pub restarts: u32,
    /// This attempt continued a checkpoint.
    pub resumed: bool,
    /// `md5_attempts` of the settings.
    pub md5_attempts: u32,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Write the item's row as stored.
    Record,
    /// Park the item with this class.
    Park(&'static str),
    /// Begin again from zero.
    Again,
    /// Begin again from zero unless another worker stored the object meanwhile (a record
    /// redelivered during a rebalance resumes the same checkpoint): look first.
    LookThenAgain,
}

pub(crate) fn after(ended: Ended, tries: Tries) -> Next {
    match ended {
        Ended::Done => Next::Record,
        Ended::Md5Mismatch if tries.downloads >= tries.md5_attempts => Next::Park(MEDIA_MD5),
        Ended::Md5Mismatch => Next::Again,
        Ended::UploadBroke if tries.restarts >= RESTART_LIMIT => Next::Park(STORE_REJECTED),
        Ended::UploadBroke => Next::LookThenAgain,
        Ended::Refused => Next::Park(STORE_REJECTED),
        // The checkpointed index buffer may be what WeCom refuses: once from zero.
        Ended::Gone { .. } if tries.resumed => Next::Again,
        Ended::Gone { code } if WECOM_FILE_EXPIRED.contains(&code) => Next::Park(MEDIA_EXPIRED),
        Ended::Gone { .. } => Next::Park(MEDIA_UNAVAILABLE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_begins_where_its_row_says() {
        assert_eq!(begin(Some(true)), Begin::Resume);
        assert_eq!(begin(Some(false)), Begin::AbortThenFresh);
        assert_eq!(begin(None), Begin::Fresh);
    }

    #[test]
    fn every_way_an_attempt_ends_has_one_next_step() {
        let tries = |downloads, restarts, resumed| Tries {
            downloads,
            restarts,
            resumed,
            md5_attempts: 3,
        };
        let gone = Ended::Gone { code: 10010 };
        let refused_by_wecom = Ended::Gone { code: 10001 };
        for (ended, tried, next) in [
            (Ended::Done, tries(1, 0, false), Next::Record),
            (Ended::Done, tries(1, 0, true), Next::Record),
            (Ended::Md5Mismatch, tries(1, 0, false), Next::Again),
            (Ended::Md5Mismatch, tries(2, 0, true), Next::Again),
            (
                Ended::Md5Mismatch,
                tries(3, 0, false),
                Next::Park(MEDIA_MD5),
            ),
            (Ended::UploadBroke, tries(1, 0, true), Next::LookThenAgain),
            (Ended::UploadBroke, tries(3, 2, false), Next::LookThenAgain),
            (
                Ended::UploadBroke,
                tries(4, RESTART_LIMIT, false),
                Next::Park(STORE_REJECTED),
            ),
            (
                Ended::Refused,
                tries(1, 0, false),
                Next::Park(STORE_REJECTED),
            ),
            (gone, tries(1, 0, true), Next::Again),
            (gone, tries(1, 0, false), Next::Park(MEDIA_EXPIRED)),
            (
                Ended::Gone { code: 40007 },
                tries(1, 0, false),
                Next::Park(MEDIA_EXPIRED),
            ),
            (refused_by_wecom, tries(1, 0, true), Next::Again),
            (
                refused_by_wecom,
                tries(2, 0, false),
                Next::Park(MEDIA_UNAVAILABLE),
            ),
        ] {
            assert_eq!(after(ended, tried), next, "{ended:?} after {tried:?}");
        }
    }
}
