//! End-to-end test harness (clusters arrive with issue #6).
