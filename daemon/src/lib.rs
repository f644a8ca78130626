//! The in-appliance agent and its wire protocol (shared with the launcher).
//!
//! `protocol` is what the launcher links; `agent` is the request loop and
//! `system` the PID 1 chores (mounts, loopback, finding the port, power-off)
//! that the `supermin-daemon` binary strings together.

pub mod agent;
pub mod protocol;
pub mod system;
