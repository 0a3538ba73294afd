pub mod batch;
pub mod block_manager;
pub mod generate;
pub mod loaded;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod stop;
