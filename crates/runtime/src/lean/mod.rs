//! The lean sandbox (ABI 1.1, world `lean-collector`): a plugin that imports
//! only Sandglass interfaces, linked with nothing but them. No WASI context
//! is built and no directory is opened per run: a file is one host call,
//! opened beneath the view's directory handles. Fuel, the epoch deadline,
//! the memory cap and the output caps are the WASI sandbox's
//! ([`crate::limited`], [`crate::output`]).
//!
//! - [`files`]: `read-file`, `read-file-part`, `list-dir`;
//! - [`mounts`]: `fs-usage`, for mount points only;
//! - [`put`]: `put-samples`, samples packed in one buffer.

pub mod files;
pub mod mounts;
pub mod put;

use crate::abi::{self, lean_host};
use crate::account::Account;
use crate::limited::limited_store;
use crate::view::View;
use files::Refused;
use sandglass_core::limits::Limits;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store};

/// What a lean run's store holds.
pub struct LeanState {
    view: Arc<View>,
    /// Memory, log budget and refused opens.
    pub account: Account,
    /// The most one call hands back: the memory cap, at most
    /// [`files::READ_MAX`].
    read_max: u64,
    /// The agent's mount points, taken at the first `fs-usage` of the run.
    mounts: Option<Arc<Vec<String>>>,
    /// The run's caps, which `put-samples` counts against.
    limits: Limits,
    /// What `put-samples` handed over.
    pub put: put::PutSamples,
}

impl LeanState {
    /// Account for a refusal; what the plugin is told.
    fn refused(&mut self, refused: Refused) -> lean_host::FsError {
        match refused {
            Refused::Error(error) => error,
            Refused::Policy(denied) => {
                // Inside the agent's own process, hidden and absent look the same.
                let error = if denied.absent {
                    lean_host::FsError::NotFound
                } else {
                    lean_host::FsError::Denied(denied.rule.to_owned())
                };
                self.account.deny(denied);
                error
            }
        }
    }
}

impl abi::sandglass::collector::types::Host for LeanState {}

impl abi::sandglass::collector::log::Host for LeanState {
    fn log(&mut self, level: abi::LogLevel, message: String) {
        self.account.log(level, message);
    }
}

impl lean_host::Host for LeanState {
    fn read_file(&mut self, path: String) -> Result<Vec<u8>, lean_host::FsError> {
        files::read_file(&self.view, &path, self.read_max).map_err(|r| self.refused(r))
    }

    fn read_file_part(
        &mut self,
        path: String,
        offset: u64,
        max: u64,
    ) -> Result<lean_host::FilePart, lean_host::FsError> {
        files::read_file_part(&self.view, &path, offset, max, self.read_max)
            .map_err(|r| self.refused(r))
    }

    fn list_dir(&mut self, path: String) -> Result<Vec<String>, lean_host::FsError> {
        files::list_dir(&self.view, &path, self.read_max).map_err(|r| self.refused(r))
    }

    fn fs_usage(&mut self, mount_point: String) -> Result<lean_host::Usage, lean_host::FsError> {
        let points = match &self.mounts {
            Some(points) => points,
            None => self
                .mounts
                .insert(mounts::AGENT_MOUNTS.points().map_err(files::io_error)?),
        };
        mounts::usage(points, &mount_point)
    }

    fn put_samples(&mut self, packed: Vec<u8>) -> Result<(), String> {
        self.put.put(&packed, &self.limits)
    }

    fn now(&mut self) -> lean_host::Datetime {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        lean_host::Datetime {
            seconds: since.as_secs(),
            nanoseconds: since.subsec_nanos(),
        }
    }
}

/// The linker lean plugins are instantiated with: the Sandglass interfaces,
/// nothing else.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<LeanState>> {
    let mut linker = Linker::new(engine);
    abi::sandglass::collector::types::add_to_linker::<_, HasSelf<LeanState>>(&mut linker, |s| s)?;
    abi::sandglass::collector::log::add_to_linker::<_, HasSelf<LeanState>>(&mut linker, |s| s)?;
    lean_host::add_to_linker::<_, HasSelf<LeanState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// A fresh store for one lean run of `plugin` as `service` under `limits`.
pub fn new_store(
    engine: &Engine,
    view: &Arc<View>,
    limits: &Limits,
    plugin: &str,
    service: &str,
) -> anyhow::Result<Store<LeanState>> {
    let state = LeanState {
        view: view.clone(),
        account: Account::new(plugin, service, limits),
        read_max: limits.memory.0.min(files::READ_MAX),
        mounts: None,
        limits: limits.clone(),
        put: put::PutSamples::default(),
    };
    limited_store(engine, state, limits, |s| &mut s.account)
}
