//! The in-appliance agent and its wire protocol (shared with the launcher).
