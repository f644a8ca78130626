//! The in-appliance agent: `agent` is the request loop and `system` the PID 1
//! chores (mounts, loopback, finding the port, power-off) that the
//! `supermin-daemon` binary strings together. The wire protocol is the
//! `supermin-protocol` crate, which the launcher links instead of this one.

pub mod agent;
pub mod system;
