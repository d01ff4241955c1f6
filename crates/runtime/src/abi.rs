//! Host bindings of `wit/collector.wit`, and the ABI version check.
//!
//! Generated from the `lean-collector` world, which holds everything the
//! host implements: `log` and `types` for every collector, `host` for lean
//! ones. A WASI collector (world `collector`) exports the same `plugin`
//! interface, so one `CollectorPre` calls both kinds.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "lean-collector",
});

pub use self::LeanCollectorPre as CollectorPre;
pub use self::sandglass::collector::host as lean_host;
pub use self::sandglass::collector::log::LogLevel;
pub use self::sandglass::collector::types as wit;

/// The ABI version this host speaks, and the check of a component's
/// imports and exports against it (in core: the receiver checks plugins too).
pub use sandglass_core::plugin_abi::{
    ABI_VERSION, Exported, check_exports, check_imports, is_lean,
};
