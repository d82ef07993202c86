//! Fuzz target: the minisign public key and signature parsers and the trusted
//! comment parser on arbitrary bytes never panic, and what they accept stays
//! within their limits.

#![no_main]

use hninit::trust::comment::{Meta, MAX_VERSION_PARTS};
use hninit::trust::minisign::{PublicKey, Signature, MAX_TRUSTED_COMMENT, MAX_UNTRUSTED_COMMENT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = PublicKey::parse_file(data) {
        // The id prints as minisign prints it and reads back.
        let shown = k.id.to_string();
        assert_eq!(shown.parse::<hninit::trust::KeyId>().ok(), Some(k.id));
    }
    match Signature::parse(data) {
        Ok(s) => {
            assert!(s.trusted_comment.len() <= MAX_TRUSTED_COMMENT);
            assert!(s.untrusted_comment.len() <= 3 * MAX_UNTRUSTED_COMMENT);
            if let Ok(m) = Meta::parse(&s.trusted_comment) {
                assert!(m.version.as_ref().is_none_or(|v| v.0.len() <= MAX_VERSION_PARTS));
                let _ = m.summary();
            }
        }
        Err(e) => {
            assert!(e.line >= 1 && e.line <= 5);
            let _ = e.to_string();
        }
    }
    let _ = Meta::parse(data);
});
