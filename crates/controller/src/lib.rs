//! The rk3s controller manager.
//!
//! Not built yet: this crate is a placeholder for the component that issue #5 delivers.
//! See `ARCHITECTURE.md` for where it fits.

/// Name of the component, as its binary and log lines call it.
pub const COMPONENT: &str = "rk3s-controller";
