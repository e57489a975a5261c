//! Test support: the loopback fault server.

pub mod fault_server;
