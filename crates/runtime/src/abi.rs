//! Host bindings of `wit/collector.wit`, and the ABI version check.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "collector",
});

pub use self::sandglass::collector::log::LogLevel;
pub use self::sandglass::collector::types as wit;

/// The ABI version this host speaks, and the check of a component's
/// exports against it (in core: the receiver checks plugins too).
pub use sandglass_core::plugin_abi::{ABI_VERSION, Exported, check_exports};
