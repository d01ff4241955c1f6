//! Frames: a 4-byte big-endian payload length, then a MessagePack payload.
//! The length is checked against the limit before a byte of payload is
//! buffered for it, and the buffer only grows by what the peer really sent.

use super::{MAGIC, Message, PROTOCOL_VERSION};
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
        rmp_serde::from_slice(&payload).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Incomplete(src.len())),
        }
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0);
        rmp_serde::encode::write(&mut dst.writer(), &message)
            .map_err(|e| ProtocolError::Malformed(format!("cannot encode: {e}")))?;
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

/// Send this side's preamble: magic, version, two reserved zero bytes.
pub async fn write_preamble<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    let mut preamble = [0u8; 8];
    preamble[..4].copy_from_slice(&MAGIC);
    preamble[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    w.write_all(&preamble).await
}

/// Read the peer's preamble; returns the protocol version it speaks.
pub async fn read_preamble<R: AsyncRead + Unpin>(r: &mut R) -> Result<u16, ProtocolError> {
    let mut preamble = [0u8; 8];
    r.read_exact(&mut preamble).await?;
    let magic: [u8; 4] = preamble[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(ProtocolError::NotSandglass(magic));
    }
    Ok(u16::from_be_bytes([preamble[4], preamble[5]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;
    use crate::report::{Cost, Level, MetricKind, Report, Sample, Status};
    use proptest::prelude::*;

    fn encode(message: &Message) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::new(DEFAULT_MAX_FRAME)
            .encode(message.clone(), &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn a_frame_split_anywhere_decodes_once_complete() {
        let message = Message::Ack { seq: 42 };
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
        let frame = encode(&Message::Ping { nonce: 7 });
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
            &encode(&Message::Ack { seq: 5 })[..],
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
            PROTOCOL_VERSION
        );
        let err = read_preamble(&mut &b"GET / HTTP/1.1\r\n"[..])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProtocolError::NotSandglass(m) if &m == b"GET "),
            "{err}"
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
            (any::<u64>(), proptest::collection::vec(entry(), 0..4))
                .prop_map(|(seq, entries)| Message::Reports(ReportBatch { seq, entries })),
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
                            grants: vec![crate::config::GrantName::Sys],
                            files: vec!["/var/log".into()],
                            limits: ServiceLimits {
                                fuel,
                                ..Default::default()
                            },
                        }],
                    })
                }),
            any::<u64>().prop_map(|seq| Message::Ack { seq }),
            any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
            any::<u64>().prop_map(|revision| Message::ScheduleRequest { revision }),
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
