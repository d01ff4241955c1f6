//! An agent's clock offset, measured from round trips.
//!
//! The receiver corrects report times by how far the agent's clock is off.
//! A Hello's time alone cannot tell offset from delay (a Hello sent late,
//! behind a slow network or a receiver that hung, looks like a clock far
//! behind), so the receiver pings the agent right after Welcome and every
//! [`PING_EVERY`]: with its own send and receive times around the agent's
//! Pong time, the offset is known to within half the round trip. A
//! correction is applied only when it is larger than both that uncertainty
//! and [`MIN_CORRECTION_MS`]; it is measured again on every Pong, so an agent
//! whose clock steps while connected is corrected from its next Pong on.

use sandglass_protocol::{Message, Probe};
use std::time::Duration;

/// How often the receiver pings each agent.
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// A disagreement between an agent's Ping time and the applied offset
/// larger than this means the agent's clock stepped.
const STEP_MS: i64 = 1000;

/// Offsets below this are left alone: NTP keeps healthy hosts far closer,
/// and correcting a few ms of jitter would only move times around.
pub const MIN_CORRECTION_MS: i64 = 250;

/// The offset applied to one agent's times, and the ping in flight.
#[derive(Debug)]
pub struct Offset {
    applied_ms: i64,
    /// (nonce, when it was sent on the receiver's clock)
    in_flight: Option<(u64, u64)>,
    next_nonce: u64,
}

impl Offset {
    /// The first estimate, from the Hello: only a gross skew (more than a
    /// second, which a delay rarely explains) is applied until the first
    /// Pong measures it properly.
    pub fn from_hello(now_ms: u64, hello_ms: u64) -> Offset {
        let skew = difference(now_ms, hello_ms);
        Offset {
            applied_ms: if skew.abs() < 1000 { 0 } else { skew },
            in_flight: None,
            next_nonce: 1,
        }
    }

    /// Milliseconds to add to the agent's times.
    pub fn applied(&self) -> i64 {
        self.applied_ms
    }

    /// A Ping to send now.
    pub fn ping(&mut self, now_ms: u64) -> Message {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.in_flight = Some((nonce, now_ms));
        Message::Ping(Probe {
            nonce,
            time_ms: now_ms,
        })
    }

    /// Whether the clock reading an agent put in its own Ping disagrees
    /// with the applied offset by more than a second (one-way delay
    /// included): its clock stepped, so measure again now instead of at the
    /// next Ping. An agent pings at once when it sees its clock step.
    pub fn disagrees(&self, agent_ms: u64, now_ms: u64) -> bool {
        agent_ms != 0 && (difference(now_ms, agent_ms) - self.applied_ms).abs() > STEP_MS
    }

    /// Take the agent's Pong, received at `now_ms`; returns a description
    /// of the change when the applied offset changes.
    pub fn pong(&mut self, pong: Probe, now_ms: u64) -> Option<String> {
        let (nonce, sent_ms) = self.in_flight?;
        if pong.nonce != nonce || pong.time_ms == 0 || now_ms < sent_ms {
            return None;
        }
        self.in_flight = None;
        let round_trip = (now_ms - sent_ms) as i64;
        let midpoint = sent_ms + (now_ms - sent_ms) / 2;
        let measured = difference(midpoint, pong.time_ms);
        let uncertainty = round_trip / 2 + 1;
        let offset = if measured.abs() > uncertainty.max(MIN_CORRECTION_MS) {
            measured
        } else {
            0
        };
        // Keep the current correction while the new one is within the
        // measurement's uncertainty of it: no churn from jitter.
        if (offset - self.applied_ms).abs() <= uncertainty.max(MIN_CORRECTION_MS) {
            return None;
        }
        let old = std::mem::replace(&mut self.applied_ms, offset);
        Some(format!(
            "agent clock offset now {offset} ms (was {old} ms, round trip {round_trip} ms); correcting its report times"
        ))
    }
}

/// `a - b` in ms, saturating.
fn difference(a: u64, b: u64) -> i64 {
    (a as i128 - b as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pong(o: &mut Offset, sent: u64, agent: u64, received: u64) -> Option<String> {
        let Message::Ping(ping) = o.ping(sent) else {
            panic!("a ping")
        };
        o.pong(
            Probe {
                nonce: ping.nonce,
                time_ms: agent,
            },
            received,
        )
    }

    #[test]
    fn a_late_hello_is_not_taken_for_skew_once_a_round_trip_is_measured() {
        // The Hello was stamped 29.8 s before it arrived (a hung receiver).
        let mut o = Offset::from_hello(1_000_000, 970_200);
        assert_eq!(o.applied(), 29_800);
        // The agent's clock is in fact right.
        assert!(pong(&mut o, 1_000_010, 1_000_012, 1_000_014).is_some());
        assert_eq!(o.applied(), 0);
    }

    #[test]
    fn a_clock_step_while_connected_is_corrected_at_the_next_pong() {
        const T: u64 = 1_700_000_000_000;
        let mut o = Offset::from_hello(T, T);
        assert_eq!(pong(&mut o, T, T + 1, T + 2), None);
        // The agent's clock steps one hour back.
        assert!(pong(&mut o, T + 10_000, T + 10_001 - 3_600_000, T + 10_002).is_some());
        assert_eq!(o.applied(), 3_600_000);
        // Jitter around the same offset changes nothing.
        assert_eq!(
            pong(&mut o, T + 20_000, T + 20_040 - 3_600_000, T + 20_004),
            None
        );
        assert_eq!(o.applied(), 3_600_000);
    }

    #[test]
    fn a_correction_smaller_than_the_round_trip_is_not_applied() {
        let mut o = Offset::from_hello(0, 0);
        // 800 ms off, but measured over a 4 s round trip: unknowable.
        assert_eq!(pong(&mut o, 10_000, 11_200, 14_000), None);
        assert_eq!(o.applied(), 0);
    }

    #[test]
    fn an_agent_ping_after_a_clock_step_asks_for_a_new_measurement() {
        const T: u64 = 1_700_000_000_000;
        let o = Offset::from_hello(T, T);
        assert!(!o.disagrees(T + 5, T + 10), "delay is not a step");
        assert!(o.disagrees(T - 3_600_000, T + 10));
        assert!(!o.disagrees(0, T), "no time given");
    }

    #[test]
    fn stray_and_empty_pongs_are_ignored() {
        let mut o = Offset::from_hello(0, 0);
        let _ = o.ping(100);
        assert_eq!(
            o.pong(
                Probe {
                    nonce: 99,
                    time_ms: 5
                },
                120
            ),
            None
        );
        assert_eq!(
            o.pong(
                Probe {
                    nonce: 1,
                    time_ms: 0
                },
                120
            ),
            None
        );
        assert_eq!(o.applied(), 0);
    }
}
