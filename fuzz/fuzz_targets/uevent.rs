//! Fuzz target: kernel uevent datagrams (`action@devpath\0KEY=value\0…`)
//! from the netlink socket never make the parser panic.

#![no_main]

use hninit::sys::devices::parse_uevent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(ev) = parse_uevent(data) {
        let _ = (ev.action.len(), ev.devpath.len(), ev.subsystem.len(), ev.devname, ev.modalias);
    }
});
