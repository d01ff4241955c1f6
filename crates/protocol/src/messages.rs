//! The typed messages. Structs travel as MessagePack arrays of their fields
//! in declaration order (rmp-serde's compact form); enums as a one-entry map
//! `{variant-name: payload}` or, without payload, the variant name. Fields may
//! only ever be appended, with a default, so older peers keep decoding.

use crate::plugins::{PluginChunk, PluginRequest, PluginUnavailable};
use sandglass_core::report::Report;
use sandglass_core::wire_struct;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Every message either side can send after the preamble.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Agent -> receiver, first frame: who I am and what I have.
    Hello(Hello),
    /// Receiver -> agent: the Hello was accepted.
    Welcome(Welcome),
    /// Receiver -> agent: the services to run. Sent after Welcome when the
    /// agent's cached revision differs, pushed when the configuration changes,
    /// and as the answer to a `ScheduleRequest` for another revision.
    Schedule(Schedule),
    /// Agent -> receiver: "I run revision N; send the schedule if it changed".
    ScheduleRequest(Revision),
    /// Receiver -> agent: the agent's revision is current.
    Unchanged(Revision),
    /// Agent -> receiver: spool entries, numbered per agent stream.
    Reports(ReportBatch),
    /// Receiver -> agent: every entry of the batch ending at `seq`, and of
    /// the batches sent before it on this connection, is durably stored or
    /// was `Rejected` (a cumulative acknowledgement, in the order batches
    /// were sent).
    Ack(Ack),
    /// Receiver -> agent: the receiver will never store entries
    /// `seq..=last_seq` (they are well-formed frames it must refuse). The
    /// agent counts them as lost, with the reason, and goes on; the
    /// connection stays open.
    Rejected(Rejected),
    /// Either side: something is wrong; the sender closes the connection
    /// after it.
    Error(Fault),
    /// Either side: are you there? Answered at once with `Pong` carrying the
    /// nonce and the answerer's clock.
    Ping(Probe),
    Pong(Probe),
    /// Agent -> receiver (1.1): send part of the plugin file with this
    /// sha256. Sent only to a receiver whose preamble says minor >= 1.
    PluginRequest(PluginRequest),
    /// Receiver -> agent (1.1): one chunk of a plugin file, the answer to a
    /// `PluginRequest`.
    PluginChunk(PluginChunk),
    /// Receiver -> agent (1.1): the answer to a `PluginRequest` the
    /// receiver cannot serve.
    PluginUnavailable(PluginUnavailable),
}

wire_struct! {
    /// The body of `ScheduleRequest` and `Unchanged`.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Revision {
        pub revision: u64,
    }
}

wire_struct! {
    /// The body of `Ack`.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Ack {
        pub seq: u64,
    }
}

wire_struct! {
    /// The body of `Rejected`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Rejected {
        pub seq: u64,
        pub last_seq: u64,
        /// Why, for the operator; the agent records it in its gap entry.
        pub reason: String,
    }
}

wire_struct! {
    /// The body of `Ping` and `Pong`.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Probe {
        pub nonce: u64,
    }
    added {
        /// The sender's clock, Unix ms, when it sent the frame (0: not
        /// given). The receiver measures an agent's clock offset from the
        /// round trip of its own Ping and the agent's Pong.
        pub time_ms: u64 = 0,
    }
}

wire_struct! {
    /// The agent's introduction.
    #[derive(Clone, PartialEq)]
    pub struct Hello {
        pub host_id: String,
        /// The host's credential, as configured on both sides.
        pub token: String,
        /// Agent version, e.g. "0.1.0".
        pub agent_version: String,
        /// The plugin ABI the agent runs, e.g. "1.0.0".
        pub abi_version: String,
        /// Agent's clock, Unix ms, so the receiver can correct report times
        /// for clock skew.
        pub time_ms: u64,
        /// Revision of the schedule the agent has cached; 0 for none.
        pub schedule_revision: u64,
        /// Plugins installed on the host.
        pub plugins: Vec<InstalledPlugin>,
        /// The agent's spool identity: entry numbers are unique within it. A
        /// new spool (state directory wiped) starts a new stream at 1.
        pub stream: u64,
    }
}

/// Hello without the token: the token must never reach a log.
impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("host_id", &self.host_id)
            .field("token", &"<redacted>")
            .field("agent_version", &self.agent_version)
            .field("abi_version", &self.abi_version)
            .field("time_ms", &self.time_ms)
            .field("schedule_revision", &self.schedule_revision)
            .field("plugins", &self.plugins.len())
            .field("stream", &self.stream)
            .finish()
    }
}

wire_struct! {
    /// A plugin file present on the agent's host.
    #[derive(Clone, Debug, PartialEq)]
    pub struct InstalledPlugin {
        /// File name without `.wasm`.
        pub name: String,
        /// Lowercase hex sha256 of the file.
        pub sha256: String,
    }
}

wire_struct! {
    /// The receiver's answer to an accepted Hello.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Welcome {
        pub receiver_version: String,
        /// Receiver's clock, Unix ms.
        pub time_ms: u64,
        /// How often the agent should send a `ScheduleRequest` (ms).
        pub refresh_ms: u64,
    }
    added {
        /// The largest frame this receiver accepts after the handshake, in
        /// bytes (its `max_frame`): the agent keeps every batch below it.
        /// Absent (a receiver before it was added): 8 MiB.
        pub max_frame: u64 = super::DEFAULT_MAX_FRAME as u64,
    }
}

wire_struct! {
    /// What one host runs.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Schedule {
        /// Changes whenever the content changes; equal content, equal revision
        /// (a hash), so a receiver restart does not resend an unchanged schedule.
        pub revision: u64,
        pub services: Vec<ScheduledService>,
    }
}

/// A grant a service holds beyond the default `/proc` view: written in
/// both configurations and carried in the schedule (as its lower-case name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantName {
    Sys,
    Files,
}

wire_struct! {
    /// One service of a schedule.
    #[derive(Clone, Debug, PartialEq)]
    pub struct ScheduledService {
        pub name: String,
        /// Plugin name: the agent runs `<plugin_dir>/<plugin>.wasm`.
        pub plugin: String,
        /// If set, the agent refuses a plugin file with another sha256.
        pub sha256: Option<String>,
        pub interval_ms: u64,
        pub params: Vec<(String, String)>,
        /// Grants the service asks for; the agent gives only those its own
        /// configuration allows.
        pub grants: Vec<GrantName>,
        /// Directories for the `files` grant.
        pub files: Vec<String>,
        pub limits: ServiceLimits,
    }
}

wire_struct! {
    /// Limit overrides for a service, plain numbers; unset keeps the agent's.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct ServiceLimits {
        pub fuel: Option<u64>,
        pub deadline_ms: Option<u64>,
        pub memory: Option<u64>,
        pub max_samples: Option<u64>,
        pub max_output_bytes: Option<u64>,
        pub max_stdio_bytes: Option<u64>,
        pub max_state_bytes: Option<u64>,
    }
}

wire_struct! {
    /// Consecutive entries of the agent's spool: the first is number `seq`,
    /// the next `seq + 1`, and so on. The receiver stores each (stream, number)
    /// once and acknowledges the batch with its last number.
    #[derive(Clone, Debug, PartialEq)]
    pub struct ReportBatch {
        pub seq: u64,
        pub entries: Vec<Entry>,
    }
    added {
        /// The agent will never send any number up to this one again (it
        /// was acknowledged, by this receiver or another, or counted lost in
        /// a gap entry): the receiver may forget what it knows below it.
        /// 0: nothing said.
        pub settled: u64 = 0,
    }
}

impl ReportBatch {
    /// The number of the batch's last entry (what the Ack carries).
    pub fn last_seq(&self) -> u64 {
        self.seq + (self.entries.len() as u64).saturating_sub(1)
    }
}

/// One spool entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// A plugin run's report.
    Report(Report),
    /// Reports the agent had to drop: counted, so nothing vanishes silently.
    Gap(Gap),
}

wire_struct! {
    /// Reports the agent dropped before they could be delivered.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Gap {
        pub reports: u64,
        /// Times of the oldest and newest dropped report (agent clock, Unix ms).
        pub first_ms: u64,
        pub last_ms: u64,
        /// Why, for the operator: e.g. the spool was full.
        pub reason: String,
    }
}

wire_struct! {
    /// An error sent to the peer.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Fault {
        pub code: FaultCode,
        /// One line for the operator: what is wrong and how to fix it.
        pub text: String,
    }
}

/// Error classes, so the peer can react without parsing text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultCode {
    /// The peer speaks another protocol version.
    Version,
    /// Unknown host or wrong token.
    Auth,
    /// A frame that does not decode.
    Malformed,
    /// A frame over the size limit.
    TooLarge,
    /// Nothing arrived in time.
    Timeout,
    /// The receiver is at its connection limit; try again later.
    Busy,
    /// A well-formed message at the wrong time (e.g. Reports before Hello).
    Protocol,
    /// Another connection authenticated as the same host.
    Replaced,
    /// The receiver could not do its part (e.g. the store failed); the
    /// batch was not stored and should be sent again.
    Internal,
    /// Agent -> receiver: the agent leaves this receiver for another one of
    /// its list (failback); the receiver shows the host as moved, not
    /// unreachable.
    Moved,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.text)
    }
}
