//! `rastercast-worker`: the process that runs conversions for the server and for
//! `rastercast convert`, speaking JSON lines on stdin/stdout (see `convert::worker`). It is the
//! only program that links GDAL.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(rastercast::convert::worker::main() as u8)
}

/// Here, not in the library's unit tests: that process also forks stand-in workers, and once
/// PROJ has opened its database there, every forked child closes it first, taking a SQLite lock
/// another test's thread may hold at that moment (a child stuck forever, seen once). This
/// program never forks; the server, which forks workers, does not link PROJ at all.
#[cfg(test)]
mod tests {
    /// A well-formed code GDAL does not know is refused; a known one is described.
    #[test]
    fn crs_codes_are_looked_up() {
        use rastercast::convert::worker::check_crs;
        assert!(check_crs("EPSG:99999999").is_err());
        assert!(check_crs("EPSG:3857").is_ok());
    }
}
