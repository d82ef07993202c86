//! Issue 12's scenario on the factory Debian 13 images, `debian-stage-http`:
//! an upgrade pulled from a web server by the booted system itself. nginx
//! (Debian's, `tests/common/nginx.rs`: generated config, `daemon off;`, a temp
//! prefix, 127.0.0.1 on a free port, stopped on every exit path) serves the
//! second image and the block index the factory wrote next to it. Inside the
//! first image, over ssh: `hnctl stage http://10.0.2.2:PORT/…` (QEMU's user
//! network maps 10.0.2.2 to the host's loopback) must succeed and say what it
//! fetched; `hnctl status` must show `hn-root-new.img` staged; then
//! `systemctl reboot` (QEMU runs with `-no-reboot`: the reboot ends it, as a
//! poweroff does, and the next boot is a new QEMU on the same disk). After the
//! reboot the second image runs (`/etc/hn-image-id`), the first is kept as
//! `hn-root-old.img`, nothing is staged and the trial was ended by the image's
//! mark-good unit. nginx's access log must show the index and the image's
//! bytes fetched by the guest. The images are unsigned (the trixie pair is
//! shared with `debian-boot` and `debian-e2e`, which trust no keys): the
//! signature-first path of `hnctl stage URL` is host-tested in `tests/remote.rs`.

use super::*;

#[path = "../../../tests/common/nginx.rs"]
mod nginx;

/// `hnctl stage URL` of a 1.5 GiB sparse image under TCG, index included:
/// measured 400 s on the loaded 2-core test machine (re-hashing the running
/// image dominates; 70 MB fetched).
const STAGE_WAIT: Duration = Duration::from_secs(600);
/// The name the image is served as.
const SERVED: &str = "debian-second.img";

pub(super) fn scenario() -> Scenario {
    Scenario {
        name: "debian-stage-http",
        about: "factory Debian 13 image stages the next image from nginx on the host (hnctl stage http://10.0.2.2:PORT/…) and upgrades by reboot",
        run: debian_stage_http,
    }
}

/// `src` served as `www/name`: a hard link (same filesystem), else a copy.
fn serve(ngx: &nginx::Nginx, src: &Path, name: &str) -> Result<(), Failure> {
    let dst = ngx.www(name);
    let _ = std::fs::remove_file(&dst);
    if std::fs::hard_link(src, &dst).is_err() {
        std::fs::copy(src, &dst)
            .map_err(|e| Failure::new(format!("serving {}: {e}", src.display())))?;
    }
    Ok(())
}

/// `hnctl stage URL` over ssh: (exit status, stdout, stderr).
fn stage(m: &Machine, r: &Running, url: &str) -> Result<(std::process::ExitStatus, String, String), Failure> {
    let cmd = m.ssh_cmd(r, &m.imgs.root_key, "root", HostKey::Strict, &format!("hnctl stage {url}"));
    let out = run_limited(cmd, STAGE_WAIT).map_err(|e| vm_failure(&r.vm, format!("hnctl stage {url}: {e}")))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn debian_stage_http(ctx: &mut Ctx) -> Result<(), Failure> {
    let imgs = images(Suite::Trixie)?;
    for n in &imgs.notes {
        ctx.note(n);
    }
    let second = imgs.second()?;
    let bidx = PathBuf::from(format!("{}.bidx", second.display()));
    if !bidx.is_file() {
        return Err(Failure::new(format!(
            "the factory wrote no block index {}",
            bidx.display()
        )));
    }
    let ngx = nginx::Nginx::start(&ctx.dir().join("nginx"), "0", None)
        .map_err(|e| Failure::new(format!("nginx: {e}")))?;
    serve(&ngx, second, SERVED)?;
    serve(&ngx, &bidx, &format!("{SERVED}.bidx"))?;
    let url = format!("http://10.0.2.2:{}/{SERVED}", ngx.port);
    let m = Machine::new(ctx, imgs, None)?;

    // Boot 1: the first image stages the second from nginx.
    let r = m.boot(ctx, "boot 1")?;
    let report = m.root_ssh_ready(ctx, &r, "boot 1", HostKey::AcceptNew)?;
    check_root_report(ctx, imgs, &r, &report, "first")?;
    let t = Instant::now();
    let (st, so, se) = stage(&m, &r, &url)?;
    let said = format!("stdout:\n{so}\nstderr:\n{se}");
    if !st.success() {
        return Err(vm_failure(&r.vm, format!("hnctl stage {url}: {st}\n{said}")));
    }
    let image_len = std::fs::metadata(second)?.len();
    let expect = [
        format!("staged hn-root-new.img from {url}: {image_len} bytes"),
    ];
    if let Some(missing) = expect.iter().find(|e| !so.contains(e.as_str())) {
        return Err(vm_failure(
            &r.vm,
            format!("hnctl stage did not say {missing:?}:\n{said}"),
        ));
    }
    ctx.note(format!(
        "boot 1: hnctl stage {url}: {:.1} s; {}",
        t.elapsed().as_secs_f64(),
        so.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" / ")
    ));
    let status = m.ssh(&r, &imgs.root_key, "root", HostKey::Strict, "hnctl status")?;
    if !status
        .lines()
        .any(|l| l.split_whitespace().take(2).eq(["staged", "hn-root-new.img"]))
    {
        return Err(vm_failure(
            &r.vm,
            format!("hnctl status does not show hn-root-new.img staged:\n{status}"),
        ));
    }
    // What nginx sent: the index, then the image's bytes (whole or ranges).
    let index = ngx.log(&format!("{SERVED}.bidx"));
    let image = ngx.log(SERVED);
    let sent: u64 = image.iter().map(|l| l.1).sum();
    if index.is_empty()
        || image.is_empty()
        || image.iter().chain(&index).any(|l| l.0 != 200 && l.0 != 206)
        || sent > image_len
    {
        return Err(Failure::new(format!(
            "nginx's access log: expected the index and at most {image_len} bytes of the image, \
             all 200/206; index {index:?}, image requests {}, {sent} bytes",
            image.len()
        )));
    }
    ctx.note(format!(
        "nginx sent the index and {sent} image bytes in {} requests",
        image.len()
    ));
    m.shut_down(ctx, r, "boot 1", "reboot")?;

    // Boot 2: hninit rotated the staged image in.
    let r = boot_upgraded(ctx, &m)?;
    m.poweroff(ctx, r, "boot 2")
}
