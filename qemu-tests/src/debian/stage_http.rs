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
//! bytes fetched by the guest.
//!
//! Signed: the test makes two minisign key pairs with the real `minisign`
//! tool and signs the served image with each (`version=`, `size=` in the
//! trusted comment) under two names; the guest trusts one (`--keys DIR`, the
//! public key copied in over ssh: the factory pair is shared with `debian-boot`
//! and `debian-e2e`, which trust no keys). The image signed by the other key is
//! refused (exit 3) after nginx sent its `.minisig` and not one byte of the
//! image or its index; the trusted one is accepted, its signature fetched
//! before any image byte and kept as `hn-root-new.img.minisig`.

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

/// The name the image signed by an untrusted key is served as.
const SERVED_OTHER: &str = "debian-second-other.img";
/// Where the guest keeps the trusted key (`--keys`: `DIR/trusted.d/*.pub`).
const GUEST_KEYS: &str = "/root/stage-keys";

/// The real `minisign` in `dir`.
fn minisign(dir: &Path, args: &[&str]) -> Result<(), Failure> {
    let o = Command::new("minisign")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::new(format!("minisign (Debian package minisign) is needed: {e}")))?;
    if !o.status.success() {
        return Err(Failure::new(format!(
            "minisign {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    Ok(())
}

/// A key pair `NAME.pub`/`NAME.key` in `dir`; `IMG` signed by it as `to`.
fn sign(dir: &Path, name: &str, img: &Path, comment: &str, to: &Path) -> Result<(), Failure> {
    let (p, k) = (format!("{name}.pub"), format!("{name}.key"));
    if !dir.join(&k).exists() {
        minisign(dir, &["-G", "-W", "-p", &p, "-s", &k])?;
    }
    let (img, to) = (img.display().to_string(), to.display().to_string());
    minisign(dir, &["-S", "-s", &k, "-m", &img, "-x", &to, "-t", comment])
}

/// `hnctl stage URL` over ssh: (exit status, stdout, stderr).
fn stage(m: &Machine, r: &Running, url: &str) -> Result<(std::process::ExitStatus, String, String), Failure> {
    let cmd = m.ssh_cmd(r, &m.imgs.root_key, "root", HostKey::Strict, &format!("hnctl stage {url} --keys {GUEST_KEYS}"));
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
    serve(&ngx, second, SERVED_OTHER)?;
    serve(&ngx, &bidx, &format!("{SERVED_OTHER}.bidx"))?;
    let image_len = std::fs::metadata(second)?.len();
    let keys = ctx.dir().join("keys");
    std::fs::create_dir_all(&keys)?;
    let comment = format!("version=2 size={image_len}");
    sign(&keys, "fleet", second, &comment, &ngx.www(&format!("{SERVED}.minisig")))?;
    sign(&keys, "other", second, &comment, &ngx.www(&format!("{SERVED_OTHER}.minisig")))?;
    let public = std::fs::read_to_string(keys.join("fleet.pub"))?;
    let url = format!("http://10.0.2.2:{}/{SERVED}", ngx.port);
    let other_url = format!("http://10.0.2.2:{}/{SERVED_OTHER}", ngx.port);
    let m = Machine::new(ctx, imgs, None)?;

    // Boot 1: the first image stages the second from nginx.
    let r = m.boot(ctx, "boot 1")?;
    let report = m.root_ssh_ready(ctx, &r, "boot 1", HostKey::AcceptNew)?;
    check_root_report(ctx, imgs, &r, &report, "first")?;
    // The fleet's public key (two lines of base64 and comments: no shell quoting needed).
    let lines: Vec<String> = public.lines().map(|l| format!("'{l}'")).collect();
    m.ssh(
        &r,
        &imgs.root_key,
        "root",
        HostKey::Strict,
        &format!("mkdir -p {GUEST_KEYS}/trusted.d && printf '%s\\n' {} > {GUEST_KEYS}/trusted.d/fleet.pub", lines.join(" ")),
    )?;
    // Signed by a key the guest does not trust: refused on the signature alone.
    let (st, so, se) = stage(&m, &r, &other_url)?;
    if st.code() != Some(3) || !se.contains("unknown-key") {
        return Err(vm_failure(
            &r.vm,
            format!("hnctl stage {other_url} (an untrusted key): expected exit 3 and a refusal, got {st}\nstdout:\n{so}\nstderr:\n{se}"),
        ));
    }
    let sent_other: Vec<_> = ngx.log(SERVED_OTHER).into_iter().chain(ngx.log(&format!("{SERVED_OTHER}.bidx"))).collect();
    if ngx.log(&format!("{SERVED_OTHER}.minisig")).len() != 1 || !sent_other.is_empty() {
        return Err(Failure::new(format!(
            "nginx's access log: the refused stage must fetch its .minisig once and no image or index byte, got {sent_other:?}"
        )));
    }
    ctx.note(format!("boot 1: {other_url} refused on its signature: {}", se.lines().last().unwrap_or("").trim()));
    let t = Instant::now();
    let (st, so, se) = stage(&m, &r, &url)?;
    let said = format!("stdout:\n{so}\nstderr:\n{se}");
    if !st.success() {
        return Err(vm_failure(&r.vm, format!("hnctl stage {url}: {st}\n{said}")));
    }
    let expect = [
        format!("staged hn-root-new.img from {url}: {image_len} bytes"),
        "signature: accepted".to_string(),
        "version=2".to_string(),
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
    m.ssh(&r, &imgs.root_key, "root", HostKey::Strict, "test -s /hostpart/hn-root-new.img.minisig")
        .map_err(|e| vm_failure(&r.vm, format!("the accepted signature was not kept as hn-root-new.img.minisig: {e}")))?;
    // The signature was the first thing asked for (the access log is in order).
    let order = ngx.log_paths();
    let first_of = |name: &str| order.iter().position(|p| p == &format!("/{name}"));
    match (first_of(&format!("{SERVED}.minisig")), first_of(SERVED), first_of(&format!("{SERVED}.bidx"))) {
        (Some(sig), Some(img), Some(idx)) if sig < img && sig < idx => {}
        _ => {
            return Err(Failure::new(format!(
                "nginx's access log: the .minisig must come before the index and the image: {order:?}"
            )))
        }
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
