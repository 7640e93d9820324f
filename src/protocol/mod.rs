//! The replication client: connection parameters (libpq conventions), the connection
//! (startup, TLS, authentication, simple queries, CopyBoth), and the sans-IO framing of the
//! streaming replication messages; and [`sql`], an ordinary SQL connection from the same
//! settings, for what only SQL can ask.

pub mod attempts;
pub mod auth_guard;
pub mod channel_binding;
pub mod commands;
pub mod connection;
pub mod conninfo;
pub mod frame;
pub mod replication;
pub mod require_auth;
pub mod sql;
pub mod tls;
