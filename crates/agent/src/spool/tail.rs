//! The newest entries as they were just written, still encoded, until the
//! link sends them: a cycle's batch is made from these bytes ([`Spool::take_unsent`])
//! instead of reading the records back from the segment and decoding them
//! to encode them again. Only what is not in memory — entries sent once
//! already and sent again after a reconnect, a backlog larger than the
//! bound, entries from before a restart — is read from the files
//! ([`Spool::read`]); both make the same frame.

use super::record::{KIND_GAP, Record, oversized};
use super::{Budget, Spool, batch_len};
use sandglass_protocol::{EncodedBatch, EncodedEntry};
use std::collections::VecDeque;

/// Payload bytes the tail holds at most: hundreds of cycles of a typical
/// host; beyond, the oldest are left to the files (a receiver away for
/// long does not grow the agent's memory).
const MAX_TAIL_BYTES: usize = 256 << 10;

/// Entries with consecutive numbers ending at the spool's newest one.
#[derive(Default)]
pub(super) struct Tail {
    entries: VecDeque<(Record, Vec<u8>)>,
    bytes: usize,
}

impl Tail {
    /// A record just written, with its payload.
    pub(super) fn push(&mut self, record: Record, payload: Vec<u8>) {
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.seq + 1 == record.seq);
        if !follows {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += payload.len();
        self.entries.push_back((record, payload));
        while self.bytes > MAX_TAIL_BYTES {
            self.pop();
        }
    }

    fn pop(&mut self) -> Option<(Record, Vec<u8>)> {
        let (record, payload) = self.entries.pop_front()?;
        self.bytes -= payload.len();
        Some((record, payload))
    }

    fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|(r, _)| r.seq)
    }
}

impl Spool {
    /// The batch [`Spool::read`] would make from `from` on, within `budget`,
    /// made from the entries held in memory since they were written (no
    /// file read, no decoding), with its `settled` number. `None` if memory
    /// does not hold the entry `from` (or the oldest one held): then the
    /// batch is read from the files.
    pub fn take_unsent(
        &mut self,
        from: u64,
        budget: Budget,
    ) -> anyhow::Result<Option<EncodedBatch>> {
        let from = from.max(self.acked + 1);
        // Sent already, or acknowledged: a second sending reads the files.
        while self.tail.first_seq().is_some_and(|seq| seq < from) {
            self.tail.pop();
        }
        if self.tail.first_seq() != Some(from) {
            return Ok(None);
        }
        let count = batch_len(self.tail.entries.iter().map(|(r, _)| r), budget);
        let mut entries = Vec::with_capacity(count);
        for (record, payload) in (0..count).filter_map(|_| self.tail.pop()) {
            entries.push(if record.cost() > budget.bytes {
                EncodedEntry::Gap(rmp_serde::to_vec(&oversized(&record, budget.bytes))?)
            } else if record.kind == KIND_GAP {
                EncodedEntry::Gap(payload)
            } else {
                EncodedEntry::Report(payload)
            });
        }
        Ok(Some(EncodedBatch {
            seq: from,
            entries,
            settled: self.acked,
        }))
    }
}
