pub mod batch;
pub mod batch_sampler;
pub mod block_manager;
// DESIGN.md's layout names the file after the concept; the module name repeating its parent is deliberate.
#[allow(clippy::module_inception)]
pub mod engine;
pub mod gauges;
pub mod generate;
pub mod handle;
pub mod loaded;
pub mod logprobs;
pub mod penalties;
pub mod perplexity;
pub mod request;
pub mod row_sampling;
pub mod runner;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod stop;
pub mod text_delta;
