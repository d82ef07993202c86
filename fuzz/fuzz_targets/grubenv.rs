//! Fuzz target: the grubenv block parser never panics; a block it accepts is
//! written back to a block that parses to the same variables.

#![no_main]

use hninit::slots::grubenv::{parse, BLOCK_SIZE, SIGNATURE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    // Most inputs fail the signature/size check: also try them as the body of a block.
    let mut block = SIGNATURE.to_vec();
    block.extend_from_slice(data);
    block.resize(BLOCK_SIZE, b'#');
    if let Ok(env) = parse(&block) {
        if let Ok(out) = env.to_block() {
            assert_eq!(out.len(), BLOCK_SIZE);
            let again = parse(&out).expect("a block we wrote parses");
            assert_eq!(again.iter().collect::<Vec<_>>(), env.iter().collect::<Vec<_>>());
        }
    }
});
