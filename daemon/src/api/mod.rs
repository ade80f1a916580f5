//! The daemon's network surfaces: the validator-facing HTTP gateway ([`http`]), its authentication
//! ([`auth`]), Prometheus exposition ([`prom`]), the cluster's listener for its workers ([`workers`]),
//! what its HTTP listeners share ([`serve`]: connections,
//! bounded bodies, refused bodies) and the one mapping from internal errors to HTTP statuses and stable
//! reason strings ([`error`]).
//!
//! Handlers here parse and authenticate; the decisions themselves live in [`crate::service`], which the
//! admin plane shares.

pub mod auth;
pub mod error;
pub mod http;
pub mod prom;
pub mod serve;
pub mod workers;

pub use error::ApiError;
