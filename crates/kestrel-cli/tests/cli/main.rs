//! End-to-end tests of the `kestrel` binary on the tiny test checkpoints: the happy paths of every
//! subcommand, and bad input (corrupt files, unknown types and architectures, nonsense flags), which
//! must give a one-line `error:` naming the cause and a non-zero exit, never a panic.

mod support;

mod bench_throughput;
mod errors_files;
mod errors_flags;
mod happy;
mod quantize;
mod serve;
