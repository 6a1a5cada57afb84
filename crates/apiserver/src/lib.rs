//! The Kubernetes REST API server of rk3s.
//!
//! Not built yet: this crate is a placeholder for the component that issue #3 delivers.
//! See `ARCHITECTURE.md` for where it fits.

/// Name of the component, as its binary and log lines call it.
pub const COMPONENT: &str = "rk3s-apiserver";
