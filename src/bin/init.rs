//! `/init` of the hninit initramfs. As PID 1 it runs the boot; started by the
//! kernel as `/sbin/modprobe` (a symlink to it) it loads a module on request;
//! run as `/shutdown` from /run/initramfs it unmounts the loop root cleanly.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().map(String::as_str).unwrap_or("");
    let pid1 = std::process::id() == 1;
    if !pid1 && argv0.ends_with("modprobe") {
        std::process::exit(hninit::modules::modprobe::main(&args));
    }
    std::panic::set_hook(Box::new(|info| {
        hninit::crit!("internal error: {info}; rebooting in 10 s");
        hninit::boot::failure::reboot(std::time::Duration::from_secs(10));
    }));
    if !pid1 {
        eprintln!("hninit: /init must run as PID 1 (it is the initramfs init); for the operator's tool see hnctl");
        std::process::exit(2);
    }
    if argv0.ends_with("shutdown") {
        hninit::boot::shutdown::main(&args)
    }
    hninit::boot::boot()
}
