//! Fuzz target: what `hnctl stage URL` reads that others wrote never panics: a
//! server's block index (`URL.bidx`), the resume record on the host partition
//! (`hn-root-new.img.part.json`) and the blob hash state inside it. What they
//! accept is written back to the same value, and an index's ranges stay inside
//! the image it describes.

#![no_main]

use hninit::remote::bidx::Index;
use hninit::remote::sha256_resume::Sha256State;
use hninit::remote::state;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = Index::parse(data) {
        assert_eq!(Index::parse(&idx.to_bytes()).expect("an index we wrote parses"), idx);
        for i in 0..idx.blocks.len() {
            let (s, e) = idx.range(i);
            assert!(s < e && e <= idx.size);
        }
    }
    if let Some(r) = state::parse(data) {
        assert_eq!(state::parse(&r.to_json()), Some(r));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(h) = Sha256State::from_hex(s) {
            assert_eq!(Sha256State::from_hex(&h.to_hex()), Some(h.clone()));
            let _ = h.finish();
        }
    }
});
