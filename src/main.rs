//! The `keygate` binary. Flags, configuration and commands live in `keygate::cli`, so
//! they are documented and tested with the library.
fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
