//! A `Reports` frame put together from entries that are already
//! MessagePack: the agent has just encoded them to write its spool, and
//! decoding them again only to encode them once more would cost a cycle
//! more than the rest of its sending. The bytes are those of
//! `Message::Reports` with the decoded entries (a test below holds the two
//! side by side), so a receiver cannot tell which way a frame was made.

use crate::codec::{FrameCodec, ProtocolError};
use bytes::BytesMut;
use std::io::Write;
use tokio_util::codec::Encoder;

/// One spool entry in its MessagePack form: the bytes `rmp_serde` makes of
/// a `Report` or of a `Gap` (what the agent's spool records hold).
#[derive(Clone, Debug, PartialEq)]
pub enum EncodedEntry {
    Report(Vec<u8>),
    Gap(Vec<u8>),
}

/// The `ReportBatch` of a `Reports` message, its entries already encoded.
/// The entries' bytes are copied into the frame as they are: they must be
/// what encoding an `Entry`'s content makes, which only its encoder knows.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedBatch {
    pub seq: u64,
    pub entries: Vec<EncodedEntry>,
    pub settled: u64,
}

impl EncodedBatch {
    /// The number of the batch's last entry (what the Ack carries).
    pub fn last_seq(&self) -> u64 {
        self.seq + (self.entries.len() as u64).saturating_sub(1)
    }
}

impl Encoder<EncodedBatch> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, batch: EncodedBatch, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.frame(dst, |w| write_batch(w, &batch).map_err(cannot_encode))
    }
}

/// `{"Reports": [seq, [{"Report"|"Gap": entry}, ...], settled]}`, as
/// rmp-serde writes the enum variant and the struct (docs/protocol.md).
fn write_batch(w: &mut impl Write, batch: &EncodedBatch) -> std::io::Result<()> {
    rmp::encode::write_map_len(w, 1).map_err(value_error)?;
    rmp::encode::write_str(w, "Reports").map_err(value_error)?;
    rmp::encode::write_array_len(w, 3).map_err(value_error)?;
    rmp::encode::write_uint(w, batch.seq).map_err(value_error)?;
    rmp::encode::write_array_len(w, batch.entries.len() as u32).map_err(value_error)?;
    for entry in &batch.entries {
        let (variant, bytes) = match entry {
            EncodedEntry::Report(bytes) => ("Report", bytes),
            EncodedEntry::Gap(bytes) => ("Gap", bytes),
        };
        rmp::encode::write_map_len(w, 1).map_err(value_error)?;
        rmp::encode::write_str(w, variant).map_err(value_error)?;
        w.write_all(bytes)?;
    }
    rmp::encode::write_uint(w, batch.settled).map_err(value_error)?;
    Ok(())
}

fn value_error(e: rmp::encode::ValueWriteError<std::io::Error>) -> std::io::Error {
    match e {
        rmp::encode::ValueWriteError::InvalidMarkerWrite(e)
        | rmp::encode::ValueWriteError::InvalidDataWrite(e) => e,
    }
}

fn cannot_encode(e: std::io::Error) -> ProtocolError {
    ProtocolError::Malformed(format!("cannot encode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_MAX_FRAME, Entry, Gap, Message, ReportBatch};
    use sandglass_core::report::{Cost, Level, MetricKind, Report, Sample, Status};
    use tokio_util::codec::Decoder;

    fn report(n: u64) -> Report {
        Report {
            service: format!("svc-{n}"),
            plugin: "cpu".into(),
            time_ms: 1_700_000_000_000 + n,
            status: Status {
                level: Level::Warn,
                text: "é".repeat(n as usize * 20),
            },
            samples: (0..n)
                .map(|i| Sample {
                    name: format!("m{i}"),
                    value: i as f64 * -0.5,
                    kind: MetricKind::Counter,
                    unit: "bytes".into(),
                    labels: vec![("dev".into(), format!("sd{i}"))],
                })
                .collect(),
            cost: Cost::default(),
        }
    }

    fn frame<I>(item: I) -> BytesMut
    where
        FrameCodec: Encoder<I, Error = ProtocolError>,
    {
        let mut buf = BytesMut::new();
        FrameCodec::new(DEFAULT_MAX_FRAME)
            .encode(item, &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn a_spliced_batch_is_byte_for_byte_the_encoded_message() {
        let gap = Gap {
            reports: 3,
            first_ms: 1,
            last_ms: u64::MAX,
            reason: "spool full".into(),
        };
        // Sizes across MessagePack's length and integer forms: fixarray and
        // array16 of entries, numbers of one to nine bytes.
        for (count, seq, settled) in [(0, 1, 0), (3, 200, 199), (20, 1 << 40, u64::MAX)] {
            let mut entries: Vec<Entry> = (1..=count).map(|n| Entry::Report(report(n))).collect();
            entries.push(Entry::Gap(gap.clone()));
            let encoded = entries
                .iter()
                .map(|e| match e {
                    Entry::Report(r) => EncodedEntry::Report(rmp_serde::to_vec(r).unwrap()),
                    Entry::Gap(g) => EncodedEntry::Gap(rmp_serde::to_vec(g).unwrap()),
                })
                .collect();
            let spliced = frame(EncodedBatch {
                seq,
                entries: encoded,
                settled,
            });
            let batch = ReportBatch {
                seq,
                entries,
                settled,
            };
            let message = Message::Reports(batch);
            assert_eq!(spliced, frame(message.clone()), "{count} reports");
            let decoded = FrameCodec::new(DEFAULT_MAX_FRAME)
                .decode(&mut spliced.clone())
                .unwrap();
            assert_eq!(decoded, Some(message));
        }
    }

    #[test]
    fn a_spliced_batch_over_the_frame_limit_is_refused_and_leaves_nothing() {
        let batch = EncodedBatch {
            seq: 1,
            entries: vec![EncodedEntry::Report(
                rmp_serde::to_vec(&report(50)).unwrap(),
            )],
            settled: 0,
        };
        let mut buf = BytesMut::from(&b"earlier"[..]);
        let err = FrameCodec::new(1024).encode(batch, &mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { .. }), "{err}");
        assert_eq!(&buf[..], b"earlier");
    }
}
