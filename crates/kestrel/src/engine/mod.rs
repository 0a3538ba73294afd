pub mod batch;
pub mod generate;
pub mod loaded;
pub mod sampling;
pub mod stop;
