//! The `hookwarden` binary: the command line is the library's ([`hookwarden::cli`]).

// See Cargo.toml: glibc's malloc was a fifth of a delivery's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hookwarden::cli::main()
}
