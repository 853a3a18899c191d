//! rastercast: upload rasters, convert them to Cloud-Optimized GeoTIFFs in the background,
//! and follow the conversions live.
//!
//! Layers, bottom to top (a module imports only from layers below it): `domain` (the model,
//! no I/O) → `store` (SQL), `storage` (the bytes of files), `bus` (task events), `convert` (the GDAL
//! engine, run by child workers and the `convert` command) → `tasks` (the task service, the
//! only writer of task state, with its queue and child workers; `webhooks`, the dispatcher of
//! its durable deliveries) → `http` (one module per
//! resource, and `AppState`) → `app` and `cli` (wiring); `upload_client`, the `upload` command's
//! tus client, uses only `domain` and `time`. The README's architecture map names
//! the module for each behaviour.

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
pub mod storage;
pub mod store;
pub mod tasks;
pub mod time;
pub mod upload_client;
pub mod webhooks;
