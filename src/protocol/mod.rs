//! The replication client: connection parameters (libpq conventions), the connection
//! (startup, TLS, authentication, simple queries, CopyBoth), and the sans-IO framing of the
//! streaming replication messages.

pub mod channel_binding;
pub mod commands;
pub mod connection;
pub mod conninfo;
pub mod frame;
pub mod replication;
pub mod require_auth;
pub mod tls;
