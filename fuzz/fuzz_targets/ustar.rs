//! Fuzz target: the tar reader on arbitrary bytes never panics, and what it
//! returns stays within the input and its limits.

#![no_main]

use hninit::config::tar::{looks_like_header, read_archive, BLOCK, MAX_ARCHIVE, MAX_MEMBER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_header(data);
    match read_archive(data, &["gandi/config", "./config"]) {
        Ok(a) => {
            assert!(a.len <= data.len().min(MAX_ARCHIVE));
            assert_eq!(a.len % BLOCK, 0);
            if let Some(m) = a.member {
                assert!(m.data.len() <= MAX_MEMBER);
                assert!(m.offset + BLOCK + m.data.len() <= a.len);
                assert!(m.name == "gandi/config" || m.name == "config");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
