//! Fuzz target: `modules.dep`, `modules.alias` and `modules.builtin` of an
//! initramfs never make the index panic or loop, whatever they say (cycles,
//! missing modules, odd globs).

#![no_main]

use hninit::modules::index::ModIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let dep = parts.next().unwrap_or("");
    let alias = parts.next().unwrap_or("");
    let builtin = parts.next().unwrap_or("");
    let idx = ModIndex::parse(dep, alias, builtin);
    let names: Vec<String> = idx.module_names().take(8).map(str::to_string).collect();
    for n in &names {
        let _ = idx.deps_of(n);
        let _ = idx.path_of(n);
    }
    let _ = idx.load_order(&names);
    for probe in ["virtio:d00000002v00001AF4", "pci:v00008086d00002922sv*", "ext4", "fs-btrfs"] {
        let _ = idx.resolve(probe);
    }
    for n in parts {
        let _ = idx.resolve(n);
    }
});
