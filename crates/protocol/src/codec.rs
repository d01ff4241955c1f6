//! Frames: a 4-byte big-endian payload length, then a MessagePack payload.
//! The length is checked against the limit before a byte of payload is
//! buffered for it, and the buffer only grows by what the peer really sent.

use super::{MAGIC, Message, PROTOCOL_MINOR, PROTOCOL_VERSION};
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

/// What can go wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    // Not `#[from]`: that would make the io::Error the source too, and
    // chained error messages would say it twice.
    #[error("connection error: {0}")]
    Io(std::io::Error),
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Incomplete(usize),
    #[error("the peer is not a Sandglass agent or receiver (first bytes {0:02x?})")]
    NotSandglass([u8; 4]),
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        ProtocolError::Io(e)
    }
}

/// Encodes and decodes [`Message`] frames.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    pub fn new(max_frame: usize) -> FrameCodec {
        FrameCodec { max_frame }
    }

    /// Change the limit (raised once the peer has authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        let Some(header) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Err(ProtocolError::Malformed("empty frame".into()));
        }
        if len > self.max_frame {
            return Err(ProtocolError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if src.len() < 4 + len {
            return Ok(None);
        }
        src.advance(4);
        let payload = src.split_to(len);
        decode_payload(&payload).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Incomplete(src.len())),
        }
    }
}

/// A frame's payload is exactly one message: bytes after it are refused
/// rather than ignored, so a framing mistake cannot go unnoticed.
fn decode_payload(payload: &[u8]) -> Result<Message, ProtocolError> {
    let mut reader = payload;
    let mut de = rmp_serde::Deserializer::new(&mut reader);
    let message = serde::Deserialize::deserialize(&mut de)
        .map_err(|e: rmp_serde::decode::Error| ProtocolError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} bytes after the message in its frame",
            reader.len()
        )));
    }
    Ok(message)
}

impl Encoder<Message> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.frame(dst, |payload| {
            rmp_serde::encode::write(payload, &message)
                .map_err(|e| ProtocolError::Malformed(format!("cannot encode: {e}")))
        })
    }
}

impl FrameCodec {
    /// Append one frame to `dst`: its length, then the payload `write`
    /// puts after it; nothing if the payload is over the limit.
    pub(crate) fn frame(
        &self,
        dst: &mut BytesMut,
        write: impl FnOnce(&mut bytes::buf::Writer<&mut BytesMut>) -> Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(e) = write(&mut dst.writer()) {
            dst.truncate(start);
            return Err(e);
        }
        let len = dst.len() - start - 4;
        if len > self.max_frame {
            dst.truncate(start);
            return Err(ProtocolError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// The versions a peer's preamble names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// Peers of different versions do not talk.
    pub version: u16,
    /// What the peer added within the version; 0 from peers that predate
    /// minor versions (they sent the bytes as reserved zeros).
    pub minor: u16,
}

/// Send this side's preamble: magic, version, minor version.
pub async fn write_preamble<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    let mut preamble = [0u8; 8];
    preamble[..4].copy_from_slice(&MAGIC);
    preamble[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    preamble[6..8].copy_from_slice(&PROTOCOL_MINOR.to_be_bytes());
    w.write_all(&preamble).await
}

/// Read the peer's preamble; returns the versions it speaks.
pub async fn read_preamble<R: AsyncRead + Unpin>(r: &mut R) -> Result<Preamble, ProtocolError> {
    let mut preamble = [0u8; 8];
    r.read_exact(&mut preamble).await?;
    let magic: [u8; 4] = preamble[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(ProtocolError::NotSandglass(magic));
    }
    Ok(Preamble {
        version: u16::from_be_bytes([preamble[4], preamble[5]]),
        minor: u16::from_be_bytes([preamble[6], preamble[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use proptest::prelude::*;
    use sandglass_core::report::{Cost, Level, MetricKind, Report, Sample, Status};

    fn encode(message: &Message) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::new(DEFAULT_MAX_FRAME)
            .encode(message.clone(), &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn a_frame_split_anywhere_decodes_once_complete() {
        let message = Message::Ack(Ack { seq: 42 });
        let frame = encode(&message);
        for cut in 0..frame.len() {
            let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
            let mut buf = BytesMut::from(&frame[..cut]);
            assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
            buf.extend_from_slice(&frame[cut..]);
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(message.clone()));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn an_incomplete_frame_at_eof_is_an_error() {
        let frame = encode(&Message::Ping(Probe {
            nonce: 7,
            time_ms: 0,
        }));
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        let err = FrameCodec::new(DEFAULT_MAX_FRAME)
            .decode_eof(&mut buf)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Incomplete(_)), "{err}");
    }

    #[test]
    fn an_oversized_length_is_refused_from_the_header_alone() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let err = FrameCodec::new(1024).decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ProtocolError::TooLarge { len, max: 1024 } if len == u32::MAX as usize),
            "{err}"
        );
        assert!(
            buf.capacity() < 1024,
            "nothing reserved for the claimed size"
        );
    }

    #[test]
    fn encoding_over_the_limit_is_refused_and_leaves_the_buffer_as_it_was() {
        let big = Message::Error(Fault {
            code: FaultCode::Internal,
            text: "x".repeat(2000),
        });
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = FrameCodec::new(1000).encode(big, &mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { .. }), "{err}");
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn bytes_after_the_message_in_a_frame_are_malformed() {
        let mut frame = encode(&Message::Ack(Ack { seq: 5 }));
        frame.extend_from_slice(&[0xc0]);
        let len = frame.len() as u32 - 4;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let err = FrameCodec::new(DEFAULT_MAX_FRAME)
            .decode(&mut frame)
            .unwrap_err();
        assert!(
            err.to_string().contains("1 bytes after the message"),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_empty_frames_are_malformed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1][..]);
        let err = FrameCodec::new(DEFAULT_MAX_FRAME)
            .decode(&mut buf)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        let err = FrameCodec::new(DEFAULT_MAX_FRAME)
            .decode(&mut buf)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
    }

    /// The bytes docs/protocol.md shows as its example; a change here is a
    /// protocol change and needs a new version.
    #[test]
    fn encoding_matches_the_documented_bytes() {
        assert_eq!(
            &encode(&Message::Ack(Ack { seq: 5 }))[..],
            &[0, 0, 0, 7, 0x81, 0xa3, b'A', b'c', b'k', 0x91, 0x05]
        );
        let fault = Message::Error(Fault {
            code: FaultCode::Auth,
            text: "no".into(),
        });
        assert_eq!(
            &encode(&fault)[..],
            &[
                0, 0, 0, 16, 0x81, 0xa5, b'E', b'r', b'r', b'o', b'r', 0x92, 0xa4, b'A', b'u',
                b't', b'h', 0xa2, b'n', b'o'
            ]
        );
    }

    #[tokio::test]
    async fn preamble_round_trip_and_foreign_peer() {
        let mut buf = Vec::new();
        write_preamble(&mut buf).await.unwrap();
        assert_eq!(
            read_preamble(&mut &buf[..]).await.unwrap(),
            Preamble {
                version: PROTOCOL_VERSION,
                minor: PROTOCOL_MINOR
            }
        );
        // A 1.0 peer sent bytes 6-7 as reserved zeros: minor 0.
        buf[6..8].copy_from_slice(&[0, 0]);
        assert_eq!(read_preamble(&mut &buf[..]).await.unwrap().minor, 0);
        let err = read_preamble(&mut &b"GET / HTTP/1.1\r\n"[..])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProtocolError::NotSandglass(m) if &m == b"GET "),
            "{err}"
        );
    }

    /// docs/protocol.md: a decoder accepts a struct longer than it knows.
    /// Each message below is written as a newer peer would write it: every
    /// struct, at every level, carries one more field at its end.
    #[test]
    fn every_message_with_an_extra_field_in_every_struct_decodes() {
        use std::collections::BTreeMap;
        const X: &str = "a field from the future";
        fn tagged<T: serde::Serialize>(tag: &str, body: T) -> Vec<u8> {
            rmp_serde::to_vec(&BTreeMap::from([(tag, body)])).unwrap()
        }
        fn decode(bytes: Vec<u8>) -> Message {
            let mut frame = BytesMut::new();
            frame.put_u32(bytes.len() as u32);
            frame.extend_from_slice(&bytes);
            FrameCodec::new(DEFAULT_MAX_FRAME)
                .decode(&mut frame)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap()
        }
        let plugin = ("cpu", "ab", X);
        let hello = decode(tagged(
            "Hello",
            ("h", "t", "0.9", "1.0.0", 5u64, 2u64, vec![plugin], 7u64, X),
        ));
        assert!(
            matches!(hello, Message::Hello(h) if h.host_id == "h" && h.plugins[0].name == "cpu")
        );
        let welcome = decode(tagged("Welcome", ("9.9", 5u64, 1000u64, 4096u64, X)));
        assert!(matches!(welcome, Message::Welcome(w) if w.max_frame == 4096));
        let limits = (
            Some(5u64),
            None::<u64>,
            None::<u64>,
            None::<u64>,
            None::<u64>,
            None::<u64>,
            None::<u64>,
            X,
        );
        let service = (
            "cpu",
            "cpu",
            None::<String>,
            1000u64,
            vec![("k", "v")],
            vec!["sys"],
            Vec::<String>::new(),
            limits,
            X,
        );
        let schedule = decode(tagged("Schedule", (3u64, vec![service], X)));
        assert!(matches!(schedule, Message::Schedule(s) if s.services[0].limits.fuel == Some(5)));
        let sample = ("load1", 0.5f64, "gauge", "", vec![("cpu", "0")], X);
        let report = (
            "cpu",
            "cpu",
            9u64,
            ("OK", "fine", X),
            vec![sample],
            (1u64, 2u64, 3u64, X),
            X,
        );
        let gap = (3u64, 1u64, 2u64, "spool full", X);
        let entries = (
            BTreeMap::from([("Report", report)]),
            BTreeMap::from([("Gap", gap)]),
        );
        let reports = decode(tagged("Reports", (4u64, entries, 3u64, X)));
        let Message::Reports(batch) = reports else {
            panic!("Reports")
        };
        assert_eq!((batch.seq, batch.entries.len(), batch.settled), (4, 2, 3));
        assert!(matches!(&batch.entries[0], Entry::Report(r) if r.samples[0].labels[0].1 == "0"));
        for (tag, expect) in [
            (
                "ScheduleRequest",
                Message::ScheduleRequest(Revision { revision: 8 }),
            ),
            ("Unchanged", Message::Unchanged(Revision { revision: 8 })),
            ("Ack", Message::Ack(Ack { seq: 8 })),
        ] {
            assert_eq!(decode(tagged(tag, (8u64, X))), expect);
        }
        assert_eq!(
            decode(tagged("Ping", (8u64, 9u64, X))),
            Message::Ping(Probe {
                nonce: 8,
                time_ms: 9
            })
        );
        assert_eq!(
            decode(tagged("Rejected", (1u64, 2u64, "why", X))),
            Message::Rejected(Rejected {
                seq: 1,
                last_seq: 2,
                reason: "why".into()
            })
        );
        assert!(matches!(
            decode(tagged("Error", ("Busy", "later", X))),
            Message::Error(f) if f.code == FaultCode::Busy
        ));
        assert_eq!(
            decode(tagged("PluginRequest", ("ab", 5u64, X))),
            Message::PluginRequest(PluginRequest {
                sha256: "ab".into(),
                offset: 5
            })
        );
        assert!(matches!(
            decode(tagged("PluginUnavailable", ("ab", "gone", X))),
            Message::PluginUnavailable(u) if u.reason == "gone"
        ));
    }

    /// docs/protocol.md's example of a chunk: its bytes travel as one
    /// MessagePack `bin`, not an array of numbers.
    #[test]
    fn a_plugin_chunk_carries_its_bytes_as_bin() {
        let chunk = Message::PluginChunk(PluginChunk {
            sha256: "ab".into(),
            offset: 0,
            size: 3,
            bytes: Bytes(vec![1, 2, 3]),
        });
        let frame = encode(&chunk);
        let mut expected = vec![0, 0, 0, 24, 0x81, 0xab];
        expected.extend_from_slice(b"PluginChunk");
        expected.extend_from_slice(&[0x94, 0xa2, b'a', b'b', 0x00, 0x03, 0xc4, 3, 1, 2, 3]);
        assert_eq!(&frame[..], &expected[..]);
        let mut buf = frame;
        assert_eq!(
            FrameCodec::new(DEFAULT_MAX_FRAME).decode(&mut buf).unwrap(),
            Some(chunk)
        );
    }

    /// And a struct from an older peer, without the fields added since,
    /// takes their documented defaults.
    #[test]
    fn fields_added_since_protocol_1_may_be_absent() {
        use std::collections::BTreeMap;
        let welcome =
            rmp_serde::to_vec(&BTreeMap::from([("Welcome", ("0.1.0", 5u64, 1000u64))])).unwrap();
        let mut frame = BytesMut::new();
        frame.put_u32(welcome.len() as u32);
        frame.extend_from_slice(&welcome);
        let decoded = FrameCodec::new(DEFAULT_MAX_FRAME)
            .decode(&mut frame)
            .unwrap();
        assert!(
            matches!(decoded, Some(Message::Welcome(w)) if w.max_frame == DEFAULT_MAX_FRAME as u64)
        );
        let ping = rmp_serde::to_vec(&BTreeMap::from([("Ping", (3u64,))])).unwrap();
        let mut frame = BytesMut::new();
        frame.put_u32(ping.len() as u32);
        frame.extend_from_slice(&ping);
        let decoded = FrameCodec::new(DEFAULT_MAX_FRAME)
            .decode(&mut frame)
            .unwrap();
        assert_eq!(
            decoded,
            Some(Message::Ping(Probe {
                nonce: 3,
                time_ms: 0
            }))
        );
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9_ .é]{0,12}"
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (
            text(),
            any::<f64>().prop_filter("NaN never equals itself", |v| !v.is_nan()),
            any::<bool>(),
            text(),
            proptest::collection::vec((text(), text()), 0..3),
        )
            .prop_map(|(name, value, counter, unit, labels)| Sample {
                name,
                value,
                kind: if counter {
                    MetricKind::Counter
                } else {
                    MetricKind::Gauge
                },
                unit,
                labels,
            })
    }

    fn report() -> impl Strategy<Value = Report> {
        (
            text(),
            any::<u64>(),
            0..4u8,
            text(),
            proptest::collection::vec(sample(), 0..5),
            any::<(u64, u64, u64)>(),
        )
            .prop_map(|(service, time_ms, level, status, samples, cost)| Report {
                plugin: service.clone(),
                service,
                time_ms,
                status: Status {
                    level: [Level::Ok, Level::Warn, Level::Crit, Level::Unknown][level as usize],
                    text: status,
                },
                samples,
                cost: Cost {
                    wall_micros: cost.0,
                    fuel: cost.1,
                    peak_memory: cost.2,
                },
            })
    }

    fn entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            report().prop_map(Entry::Report),
            (any::<u64>(), any::<u64>(), any::<u64>(), text()).prop_map(
                |(reports, first_ms, last_ms, reason)| Entry::Gap(Gap {
                    reports,
                    first_ms,
                    last_ms,
                    reason
                })
            ),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                text(),
                text(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec((text(), text()), 0..3),
                any::<u64>(),
            )
                .prop_map(
                    |(host_id, token, time_ms, schedule_revision, plugins, stream)| {
                        Message::Hello(Hello {
                            host_id,
                            token,
                            agent_version: "0.1.0".into(),
                            abi_version: "1.0.0".into(),
                            time_ms,
                            schedule_revision,
                            plugins: plugins
                                .into_iter()
                                .map(|(name, sha256)| InstalledPlugin { name, sha256 })
                                .collect(),
                            stream,
                        })
                    }
                ),
            (any::<u64>(), proptest::collection::vec(entry(), 0..4)).prop_map(|(seq, entries)| {
                Message::Reports(ReportBatch {
                    seq,
                    entries,
                    settled: seq.saturating_sub(1),
                })
            }),
            (
                any::<u64>(),
                text(),
                any::<u64>(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(text())
            )
                .prop_map(|(revision, name, interval_ms, fuel, sha256)| {
                    Message::Schedule(Schedule {
                        revision,
                        services: vec![ScheduledService {
                            plugin: name.clone(),
                            name,
                            sha256,
                            interval_ms,
                            params: vec![("warn".into(), "90".into())],
                            grants: vec![crate::GrantName::Sys],
                            files: vec!["/var/log".into()],
                            limits: ServiceLimits {
                                fuel,
                                ..Default::default()
                            },
                        }],
                    })
                }),
            any::<u64>().prop_map(|seq| Message::Ack(Ack { seq })),
            any::<u64>().prop_map(|nonce| Message::Ping(Probe { nonce, time_ms: 0 })),
            any::<u64>().prop_map(|revision| Message::ScheduleRequest(Revision { revision })),
            text().prop_map(|text| Message::Error(Fault {
                code: FaultCode::Malformed,
                text
            })),
        ]
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(messages in proptest::collection::vec(message(), 1..4)) {
            let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
            let mut buf = BytesMut::new();
            for m in &messages {
                codec.encode(m.clone(), &mut buf).unwrap();
            }
            for m in &messages {
                let decoded = codec.decode(&mut buf).unwrap();
                prop_assert_eq!(decoded.as_ref(), Some(m));
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut codec = FrameCodec::new(1 << 10);
            // Either a message, a need for more bytes or an error: never a panic.
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
