//! Calendar months in UTC milliseconds: the MySQL partitions and the Elasticsearch indices are
//! monthly by msgtime. Pure (no clock, no time crate): civil-from-days arithmetic.

/// A calendar month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    /// 1..=12
    pub month: u32,
}

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let d = doy - (153 * mp + 2) / 5 + 1;
    (
        i32::try_from(y).unwrap_or(i32::MAX),
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (UTC), if it is one.
pub fn parse_day(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    let day = days_from_civil(y, m, d);
    // 2026-02-30 is not a date: it must come back as itself.
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

/// `YYYY-MM-DD` of a day count since 1970-01-01.
pub fn format_day(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Month {
    /// The month a UTC millisecond timestamp falls in.
    pub fn of_ms(ms: i64) -> Month {
        let (year, month, _) = civil_from_days(ms.div_euclid(DAY_MS));
        Month { year, month }
    }

    /// The first millisecond of the month.
    pub fn start_ms(self) -> i64 {
        days_from_civil(self.year, self.month, 1) * DAY_MS
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn prev(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// `pYYYYMM`, the MySQL partition name.
    pub fn partition_name(self) -> String {
        format!("p{:04}{:02}", self.year, self.month)
    }

    /// `YYYY.MM`, the index suffix.
    pub fn index_suffix(self) -> String {
        format!("{:04}.{:02}", self.year, self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_non_dates_are_refused() {
        // 2019-01-10T02:38:14.783Z is day 17,906.
        assert_eq!(1_547_087_894_783_i64.div_euclid(DAY_MS), 17_906);
        assert_eq!(format_day(17_906), "2019-01-10");
        assert_eq!(parse_day("2019-01-10"), Some(17_906));
        assert_eq!(parse_day("1970-01-01"), Some(0));
        for day in [-1, 0, 59, 365, 11_016, 20_000] {
            assert_eq!(parse_day(&format_day(day)), Some(day));
        }
        for bad in ["2026-02-30", "2026-13-01", "2026-1", "yesterday", ""] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn months_of_known_timestamps() {
        // 2019-01-10T02:38:14.783Z (the official text example's msgtime).
        let m = Month::of_ms(1_547_087_894_783);
        assert_eq!(
            m,
            Month {
                year: 2019,
                month: 1
            }
        );
        assert_eq!(m.start_ms(), 1_546_300_800_000); // 2019-01-01T00:00:00Z
        assert_eq!(m.next().start_ms(), 1_548_979_200_000); // 2019-02-01
        assert_eq!(
            Month {
                year: 2024,
                month: 12
            }
            .next(),
            Month {
                year: 2025,
                month: 1
            }
        );
        assert_eq!(
            Month {
                year: 2025,
                month: 1
            }
            .prev(),
            Month {
                year: 2024,
                month: 12
            }
        );
        // Leap day and the last millisecond of a month.
        assert_eq!(
            Month::of_ms(1_709_164_800_000),
            Month {
                year: 2024,
                month: 2
            }
        ); // 2024-02-29
        assert_eq!(
            Month::of_ms(1_709_251_199_999),
            Month {
                year: 2024,
                month: 2
            }
        );
        assert_eq!(
            Month::of_ms(1_709_251_200_000),
            Month {
                year: 2024,
                month: 3
            }
        );
        assert_eq!(
            Month::of_ms(-1),
            Month {
                year: 1969,
                month: 12
            }
        );
        assert_eq!(m.partition_name(), "p201901");
        assert_eq!(m.index_suffix(), "2019.01");
    }
}
