//! Which entry numbers of each agent stream are stored, exactly.
//!
//! Deduplication must never acknowledge a number that is not stored. A
//! single "highest stored" mark per stream cannot promise that: a batch whose
//! commit failed (disk full) sits below a later batch that committed, and an
//! agent that skips numbers (a damaged spool, a batch sent to another
//! receiver before a failover) leaves holes that a mark would jump. So the
//! store keeps the stored numbers as a set of closed ranges per
//! (host, stream); with a well-behaved agent that is one range.
//!
//! Holes that will never be filled are forgotten when the agent says so:
//! a batch's `settled` number promises that nothing at or below it is ever
//! sent again, so everything up to it can be treated as stored. If an agent
//! never says so, at most [`MAX_RANGES`] ranges are kept per stream and the
//! two lowest merge (a number that old is not sent again in practice).

use rusqlite::{Connection, params};
use std::collections::BTreeMap;

/// Ranges kept per stream before the lowest holes are forgotten.
pub const MAX_RANGES: usize = 256;

/// Stored numbers as disjoint, non-adjacent closed ranges: first -> last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, last)| *last >= seq)
    }

    /// Add `first..=last`, merging with overlapping and adjacent ranges.
    pub fn insert(&mut self, first: u64, last: u64) {
        debug_assert!(first <= last);
        let (mut first, mut last) = (first, last);
        // The range starting at or before `first` may reach into it.
        if let Some((&f, &l)) = self.ranges.range(..=first).next_back()
            && l.saturating_add(1) >= first
        {
            first = f;
            last = last.max(l);
        }
        // Ranges starting inside (or right after) the new one are absorbed.
        let absorbed: Vec<(u64, u64)> = self
            .ranges
            .range(first..=last.saturating_add(1))
            .map(|(f, l)| (*f, *l))
            .collect();
        for (f, l) in absorbed {
            self.ranges.remove(&f);
            last = last.max(l);
        }
        self.ranges.insert(first, last);
        while self.ranges.len() > MAX_RANGES {
            let (f0, _) = self.ranges.pop_first().expect("more than MAX_RANGES");
            let (_, l1) = self.ranges.pop_first().expect("more than MAX_RANGES");
            self.ranges.insert(f0, l1);
        }
    }

    /// The ranges, lowest first.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(f, l)| (*f, *l))
    }

    /// The highest stored number (0: none).
    pub fn high(&self) -> u64 {
        self.ranges.values().next_back().copied().unwrap_or(0)
    }
}

/// The ranges of (host, stream) as stored in the database.
pub fn load(tx: &Connection, host: &str, stream: u64) -> rusqlite::Result<RangeSet> {
    let mut set = RangeSet::default();
    let mut stmt = tx.prepare_cached(
        "SELECT first_seq, last_seq FROM stored_ranges WHERE host = ?1 AND stream = ?2",
    )?;
    for row in stmt.query_map(params![host, stream as i64], |r| {
        Ok((r.get::<_, u64>(0)?, r.get::<_, u64>(1)?))
    })? {
        let (first, last) = row?;
        set.insert(first, last);
    }
    Ok(set)
}

/// Write the change from `old` to `new` of the ranges of (host, stream):
/// in the common case (a batch extends the one range) one row is updated.
pub fn save(
    tx: &Connection,
    host: &str,
    stream: u64,
    old: &RangeSet,
    new: &RangeSet,
) -> rusqlite::Result<()> {
    let mut delete = tx.prepare_cached(
        "DELETE FROM stored_ranges WHERE host = ?1 AND stream = ?2 AND first_seq = ?3",
    )?;
    for (first, _) in old.ranges().filter(|(f, _)| !new.ranges.contains_key(f)) {
        delete.execute(params![host, stream as i64, first])?;
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO stored_ranges (host, stream, first_seq, last_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (host, stream, first_seq) DO UPDATE SET last_seq = excluded.last_seq",
    )?;
    for (first, last) in new.ranges().filter(|(f, l)| old.ranges.get(f) != Some(l)) {
        upsert.execute(params![host, stream as i64, first, last])?;
    }
    Ok(())
}

/// The schema, and the migration from the single mark per stream that
/// earlier versions kept (everything up to it counts as stored, as it did).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stored_ranges (
    host TEXT NOT NULL,
    -- The agent's u64 stream id, stored bit for bit as SQLite's i64.
    stream INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (host, stream, first_seq)
);
CREATE TABLE IF NOT EXISTS streams (host TEXT, stream INTEGER, high_seq INTEGER);
INSERT OR IGNORE INTO stored_ranges (host, stream, first_seq, last_seq)
    SELECT host, stream, 1, high_seq FROM streams WHERE high_seq > 0;
DROP TABLE streams;
";

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::default();
        for (f, l) in ranges {
            s.insert(*f, *l);
        }
        s
    }

    #[test]
    fn adjacent_and_overlapping_ranges_merge() {
        let s = set(&[(1, 5), (6, 9), (20, 30), (8, 21)]);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(1, 30)]);
        assert_eq!(s.high(), 30);
    }

    #[test]
    fn a_hole_stays_a_hole_until_it_is_filled() {
        let mut s = set(&[(1, 10), (21, 30)]);
        for seq in 11..=20 {
            assert!(!s.contains(seq), "{seq} is not stored");
        }
        assert!(s.contains(10) && s.contains(21) && !s.contains(31) && !s.contains(0));
        s.insert(11, 20);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(1, 30)]);
    }

    #[test]
    fn a_range_inside_another_changes_nothing() {
        let s = set(&[(1, 100), (40, 50)]);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(1, 100)]);
    }

    #[test]
    fn past_the_cap_the_lowest_holes_are_forgotten() {
        let mut s = RangeSet::default();
        for i in 0..(MAX_RANGES as u64 + 10) {
            s.insert(i * 10 + 1, i * 10 + 5);
        }
        assert_eq!(s.ranges().count(), MAX_RANGES);
        // The newest holes are still exact.
        let top = (MAX_RANGES as u64 + 9) * 10;
        assert!(!s.contains(top - 2) && s.contains(top + 1));
    }

    #[test]
    fn ranges_round_trip_through_the_database() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let s = set(&[(1, 10), (15, 15), (1 << 62, (1 << 62) + 3)]);
        save(&conn, "h", u64::MAX, &RangeSet::default(), &s).unwrap();
        assert_eq!(load(&conn, "h", u64::MAX).unwrap(), s);
        // A change writes only what changed, and the result is the same.
        let mut grown = s.clone();
        grown.insert(11, 14);
        grown.insert(1 << 40, 1 << 40);
        save(&conn, "h", u64::MAX, &s, &grown).unwrap();
        assert_eq!(load(&conn, "h", u64::MAX).unwrap(), grown);
        assert_eq!(load(&conn, "h", 1).unwrap(), RangeSet::default());
    }
}
