fn main() -> std::process::ExitCode {
    whtunnel::cli::main()
}
