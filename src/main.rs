//! The `whtunnel` binary: everything lives in the library; see [`whtunnel::cli`].

fn main() -> std::process::ExitCode {
    whtunnel::cli::main()
}
