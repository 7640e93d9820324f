//! Integration tests against real PostgreSQL clusters and a real S3-compatible server.

mod backup;
mod catchup;
mod check;
mod config;
mod conn_security;
mod faults;
mod fetch;
mod foreign_names;
mod harness;
#[cfg(feature = "failpoints")]
mod kills;
mod logs;
mod misbehaving;
mod patroni;
mod permissions;
mod promises;
mod prune;
mod push;
mod readahead;
mod receive;
mod serve;
mod server_auth;
mod status;
mod store;
mod timelines;
mod topology;
mod verify;
