//! Integration tests: the real server on port 0, real files, real HTTP.

mod authz;
mod bulk;
mod cli;
mod conversion;
mod crashes;
mod disk;
mod fairness;
mod helpers;
mod hostile;
mod http;
mod idempotency;
mod isolation;
mod lifecycle;
mod links;
mod live;
mod live_clients;
mod nodes;
mod ogc;
mod resumable;
mod retention;
mod retries;
mod security;
mod storage;
mod tiles;
mod webhook_receiver;
mod webhooks;
