//! End-to-end tests: the real binary against real nodes (sshd + Docker in containers), real
//! PostgreSQL and real nginx. One test binary; the nodes are shared, each test has its own
//! environment (own compose projects, state directory and nginx port).

mod support;

mod bench_db;
mod bench_fleet;
mod cleanup;
mod compat;
mod deploy;
mod down;
mod field_cases;
mod fleet;
mod host_keys;
mod invalid;
mod load;
mod local;
mod lock;
mod migrations;
mod notifications;
mod receiver;
mod rollback;
mod secrets;
mod shared_database;
mod snapshot_commands;
mod snapshots;
mod ssh_access;
mod zero_downtime;
