//! A whole [`Pipeline`](crate::pipeline::Pipeline) as one tower layer, or an instance's
//! [`LivePipeline`](crate::config::LivePipeline) from a configuration, following every reload.

mod attempt;
mod layer;
mod service;

pub use layer::PipelineLayer;
pub use service::PipelineService;
