//! Resource quantities: `rk3s_quota::quantity`, shared with the controller's quota accounting.

pub(crate) use rk3s_quota::quantity::Quantity;
