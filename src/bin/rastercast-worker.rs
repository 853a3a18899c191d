//! `rastercast-worker`: the process that runs conversions for the server and for
//! `rastercast convert`, speaking JSON lines on stdin/stdout (see `convert::worker`). It is the
//! only program that links GDAL.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(rastercast::convert::worker::main() as u8)
}
