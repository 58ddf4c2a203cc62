//! slipway: blue-green deploys of a Docker Compose application to Linux servers over SSH.

pub mod cli;
pub mod config;
pub mod deploy;
pub mod error;
pub mod fleet;
pub mod health;
pub mod history;
pub mod host;
pub mod image;
pub mod lock;
pub mod migrate;
pub mod node;
pub mod paths;
pub mod playbook;
pub mod redact;
pub mod render;
pub mod report;
pub mod restore;
pub mod secret_check;
pub mod snapshot;
pub mod snapshot_cmd;
pub mod status;
pub mod switch;
