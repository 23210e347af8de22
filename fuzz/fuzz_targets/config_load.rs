//! The configuration file (`config::Config::parse`): any text is either a
//! valid configuration or an error that names the file; it never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sessiongate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    // `upstream.ca_file` is read while validating: keep the fuzzer away from
    // device files that never end or block (/dev/zero, /dev/stdin).
    if ["/dev", "/proc", "/sys"].iter().any(|p| src.contains(p)) {
        return;
    }
    match Config::parse(src, Path::new("fuzz.yaml"), true) {
        Ok(config) => {
            let _ = config.to_redacted_yaml();
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("fuzz.yaml"),
                "error without the file: {message}"
            );
        }
    }
});
