//! Retry as a tower layer: the [retry engine](crate::retry) driven around a service, cloning
//! the request only when a retry can follow.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use service::RetryService;
