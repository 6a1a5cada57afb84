//! Code shared by rk3s' components, kept small on purpose: only what two components would
//! otherwise each carry a copy of. Today that is [`leader`], Lease-based leader election, used
//! by the scheduler and the controller manager (feature `leader`, on by default), and what
//! every binary does the same way around its process: [`signal`] (SIGTERM/SIGINT) and
//! [`notify`] (systemd's readiness protocol), and, for the component binaries, [`cli`]
//! (logging and configuration from flags, file and environment; feature `cli`); and
//! [`volume`] (feature `volume`), the PersistentVolume ↔ claim matching of the scheduler's
//! VolumeBinding and the PV binder; and, for the scheduler and the controller manager, their
//! secure port (feature `health`): [`health`] checks, a [`metrics`] registry, and [`serving`]
//! (HTTPS with a self-signed certificate, and the insecure probe the apiserver's
//! componentstatuses asks them with).
//!
//! Invariant: this crate knows the Kubernetes API only as a client (kube-rs); it depends on no
//! rk3s component (only on the shared `rk3s-quota`, for quantities, with `volume`), so any
//! component may use it without pulling another component in.

// Unit tests may unwrap.
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "health")]
pub mod health;
#[cfg(feature = "leader")]
pub mod leader;
#[cfg(feature = "health")]
pub mod metrics;
pub mod notify;
#[cfg(feature = "health")]
pub mod serving;
pub mod signal;
#[cfg(feature = "volume")]
pub mod volume;
