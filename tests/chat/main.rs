//! Integration tests: a real server on 127.0.0.1:0, in-process, driven by
//! real WebSocket clients. Every await is bounded by a timeout so that a hang
//! fails fast instead of stalling CI.

mod support;

mod browser;
mod client;
mod core;
mod door;
mod durable;
mod features;
mod guard;
mod nodes;
mod presence;
mod redis;
mod redis_server;
mod tls;
mod web;
