//! rastercast: upload rasters, convert them to Cloud-Optimized GeoTIFFs in the background,
//! and follow the conversions live.
//!
//! Layout: `config` (settings) → `app` (builds the state, binds, runs until shutdown) →
//! `http` (one module per resource) over `auth`, `store` (SQLite), `tree` (bytes on disk),
//! `tasks` (queue, state machine, child workers) and `bus` (task events). `convert` is the
//! GDAL engine, shared by the server's child workers and the `convert` command.

pub mod app;
pub mod bus;
pub mod cli;
pub mod config;
pub mod convert;
pub mod disk;
pub mod domain;
pub mod error;
pub mod http;
pub mod limits;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod revocation;
pub mod store;
pub mod tasks;
pub mod time;
pub mod tree;
