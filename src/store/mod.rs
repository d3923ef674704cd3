//! Where rooms' lines are kept. For now only the Redis log that several
//! servers share (`redis`); the store interface that the hub talks to, with
//! its memory and SQLite implementations, joins this folder with issue 12,
//! and the Redis log then sits behind it.

pub mod redis;
pub mod redis_node;
