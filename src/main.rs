//! The `whtunnel` binary: everything lives in the library; see [`whtunnel::cli`].

fn main() -> std::process::ExitCode {
    whtunnel::cli::main()
}

// Off by default: see docs/benchmarks.md ("Allocator") for the measurement.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
