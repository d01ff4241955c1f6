//! # Sandglass plugin SDK
//!
//! Write a Sandglass collector in Rust: implement [`Collector`], call
//! [`export_collector!`] once, and build for
//! - `wasm32-unknown-unknown`, then make the module a component
//!   (`sandglass-componentize`, see `scripts/build-plugins.sh`): a **lean
//!   collector** (ABI 1.1, world `lean-collector`) that imports no WASI, reads
//!   through [`host`] with one call per file and enters the sandbox several
//!   times faster; or
//! - `wasm32-wasip2`: a WASI collector (world `collector`), which may use the
//!   standard library's files and clocks.
//!
//! The same source builds for both. The SDK hides the WIT ABI
//! (`wit/collector.wit`) behind plain Rust types.
//!
//! Layout:
//! - [`Collector`], [`Context`]: the trait a plugin implements and what a run sees;
//! - [`Description`]: what `agent plugin info` shows;
//! - [`proc`]: fast readers and parsers for the `/proc` text formats;
//! - [`host`]: files, directory listings, filesystem usage and the time;
//! - [`state`]: a compact encoding for counters carried between runs;
//! - [`log`]: logging into the agent's log;
//! - [`Error`]: the error type a collection returns.
//!
//! ```no_run
//! use sandglass_plugin_sdk::{Collector, Context, Description, Result, proc};
//!
//! struct Load;
//!
//! impl Collector for Load {
//!     fn describe() -> Description {
//!         Description::new("load", "1.0.0").interval_seconds(30)
//!     }
//!
//!     fn collect(ctx: &mut Context) -> Result<()> {
//!         let text = proc::read("/proc/loadavg")?;
//!         let first: f64 = proc::field(&text, 0, "load1")?;
//!         ctx.gauge("load1", first);
//!         ctx.ok(format!("load {first}"));
//!         Ok(())
//!     }
//! }
//!
//! sandglass_plugin_sdk::export_collector!(Load);
//! ```

mod collector;
mod error;
pub mod host;
pub mod log;
pub mod proc;
pub mod state;

pub use collector::{Collector, Context, Description, Level, Metric, SampleBuilder};
pub use error::{Error, Result};

/// The ABI version this SDK speaks (the WIT package version).
pub use sandglass_abi::ABI_VERSION;

/// Generated bindings of `wit/collector.wit`. Not part of the stable API:
/// use [`Collector`] and [`export_collector!`] instead.
/// A lean build (`wasm32-unknown-unknown`) imports the `host` interface and no
/// WASI; every other build the WASI world, whose `plugin` export is the same.
#[doc(hidden)]
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "collector",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "sandglass_plugin_sdk::bindings",
    });
}

#[doc(hidden)]
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "lean-collector",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "sandglass_plugin_sdk::bindings",
    });
}

/// Export a [`Collector`] implementation as the plugin's entry points.
/// Call it once, at the crate root of a `cdylib` built for `wasm32-wasip2` or
/// `wasm32-unknown-unknown`.
/// On other targets it expands to nothing, so a plugin crate also builds
/// natively for its unit tests (component export names are not valid native
/// symbol names).
#[macro_export]
macro_rules! export_collector {
    ($collector:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct SandglassExport;
            impl $crate::bindings::exports::sandglass::collector::plugin::Guest for SandglassExport {
                fn describe() -> $crate::bindings::sandglass::collector::types::Description {
                    $crate::__private::describe::<$collector>()
                }
                fn collect(
                    params: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                    state: ::std::option::Option<::std::vec::Vec<u8>>,
                ) -> ::std::result::Result<
                    $crate::bindings::sandglass::collector::types::Collection,
                    ::std::string::String,
                > {
                    $crate::__private::collect::<$collector>(params, state)
                }
            }
            $crate::bindings::export_bindings!(SandglassExport with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::collector::{collect, describe};
}
