//! Deployment assets of rk3s: systemd units, the install script and the add-on manifests that a
//! server deploys on start.
//!
//! Not built yet: the systemd units arrive with issue #6, the bundled manifests with the node side.
