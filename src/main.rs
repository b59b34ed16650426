//! The `keygate` binary. Flags, configuration and commands live in `keygate::cli`, so
//! they are documented and tested with the library.
/// mimalloc, not glibc's malloc: see Cargo.toml (and README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
