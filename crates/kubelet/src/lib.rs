//! The rk3s node agent: runs pods through CRI.
//!
//! Not built yet: this crate is a placeholder for a node-side component;
//! its issue follows the control-plane issues (#2–#6).
//! See `ARCHITECTURE.md` for where it fits.

/// Name of the component, as its binary and log lines call it.
pub const COMPONENT: &str = "rk3s-kubelet";
