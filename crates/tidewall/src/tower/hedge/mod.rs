//! Hedging as a tower layer, for idempotent requests.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::HedgeLayer;
pub use service::HedgeService;
