//! Integration tests against real PostgreSQL clusters and a real S3-compatible server.

mod backup;
mod catchup;
mod fetch;
mod foreign_names;
mod harness;
mod permissions;
mod promises;
mod prune;
mod push;
mod readahead;
mod receive;
mod serve;
mod store;
mod timelines;
mod verify;
