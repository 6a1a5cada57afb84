//! Code shared by rk3s' API clients, kept small on purpose: only what two components would
//! otherwise each carry a copy of. Today that is [`leader`], Lease-based leader election, used
//! by the scheduler and the controller manager.
//!
//! Invariant: this crate knows the Kubernetes API only as a client (kube-rs); it depends on no
//! rk3s crate, so any component may use it without pulling another component in.

// Unit tests may unwrap.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod leader;
