//! Command-line interface (contract in docs/cli.md).

/// Entry point of the `whtunnel` binary.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
