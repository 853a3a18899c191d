//! The `rastercast` binary; all behaviour lives in the library.

fn main() -> std::process::ExitCode {
    rastercast::cli::main()
}
