//! The `hookwarden` binary: the command line is the library's ([`hookwarden::cli`]).

fn main() -> std::process::ExitCode {
    hookwarden::cli::main()
}
