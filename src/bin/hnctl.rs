//! `hnctl`, the operator's tool in the booted system: argument parsing (clap),
//! printing and exit codes. The logic is in `hninit::ctl` and `hninit::slots::stage`.

use clap::{CommandFactory, Parser, Subcommand};
use hninit::ctl::{self, CtlError, ErrorKind, Host, System};
use hninit::slots::stage::StageReport;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  the operation failed (e.g. the image to stage does not exist, an I/O error)
  2  usage error (bad command or arguments)
  3  refused (not enough free space, not a bootable image, sha256 mismatch, a corrupt
     zstd stream, a refused signature)
  4  a download was interrupted (network, stall, server errors after the retries);
     its .part is kept: the same `hnctl stage URL` resumes it

Errors are printed as `hnctl: <what was tried>: <what was found>`.

Examples:
  hnctl status
  hnctl stage /tmp/hn-root-2.img --sha256 9f86d08...   # then reboot to upgrade
  hnctl stage https://mirror.example.org/hn-root-2.img.zst   # resumable
  hnctl stage --ca /etc/ssl/mirror-ca.pem https://mirror.lan/hn-root-2.img
  hnctl revert                                         # the next boot reverts
  hnctl mark-good                                      # after boot-complete.target";

/// Operator's tool for hninit image-root systems: stage an image, revert, end a trial.
#[derive(Parser, Debug)]
#[command(
    name = "hnctl",
    version,
    long_about = "hnctl manages the root filesystem images on the host partition of a \
system booted by hninit: `hn-root.img` (current), `hn-root-new.img` (staged: rotated in \
at the next boot), `hn-root-old.img` (previous), the `system-revert` flag and the trial \
state of a freshly rotated image in `hn-state/`.",
    after_long_help = EXIT_CODES
)]
struct Cli {
    /// The host partition's mount point [default: /hostpart, else /run/hninit/hostpart]
    #[arg(long, global = true, value_name = "DIR")]
    hostpart: Option<PathBuf>,
    /// The image as a path on the host partition [default: real_root= of
    /// /proc/cmdline, else /hn-root.img]
    #[arg(long, global = true, value_name = "PATH", value_parser = parse_real_root)]
    real_root: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Which image booted, the images present, trial, revert flag, the end of boot.log
    Status {
        /// Machine-readable output (a stable JSON object)
        #[arg(long)]
        json: bool,
    },
    /// Copy an image next to the current one as hn-root-new.img; the next boot rotates it in
    #[command(long_about = "Copies IMAGE (a file, - for standard input, or an http:// or \
https:// URL) to hn-root-new.img.part, checks it (a filesystem, at least 1 MiB, a whole number of \
512-byte sectors, the sha256 when given), then renames it to hn-root-new.img, replacing \
an image staged before. The copy is a reflink when the filesystem allows it, else \
copy_file_range, else read/write. Needs the image's size + 1% + 16 MiB free. \
Refused (exit 3) leaves nothing behind. A URL is downloaded (zstd-compressed images \
are recognised by their magic number and decompressed on the fly; proxies from \
http_proxy, https_proxy, all_proxy and no_proxy); an interrupted download (exit 4) keeps \
its .part and a record, hn-root-new.img.part.json, and the next `hnctl stage` of the same \
URL resumes it with an HTTP Range request (If-Range: a file changed on the server \
restarts from its first byte).")]
    Stage {
        /// The image file, - to read it from standard input, an http(s):// URL or oci://REGISTRY/REPO:TAG
        #[arg(value_name = "IMAGE|-|URL")]
        image: String,
        /// Expected sha256 (64 hex digits); kept as hn-root-new.img.sha256 and checked again at boot
        #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
        sha256: Option<[u8; 32]>,
        /// Copy every byte by read/write, sharing no extents (no reflink, no copy_file_range)
        #[arg(long)]
        no_reflink: bool,
        /// The image's minisign signature [default: IMAGE.minisig if it exists]; kept as hn-root-new.img.minisig
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// The directory holding trusted.d/ and revoked.d/: with trusted keys, a valid signature is required
        #[arg(long, value_name = "DIR", default_value = hninit::trust::keystore::DEFAULT_ETC)]
        keys: PathBuf,
        /// Allow this signed image below the anti-rollback floor, once (recorded in hn-state/)
        #[arg(long)]
        allow_downgrade: bool,
        /// URL: download every byte, even when URL.bidx would allow fetching only changed blocks
        #[arg(long)]
        whole: bool,
        /// URL over https: trust only the CA certificates of this PEM file
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// URL: attempts after a failure without progress, waiting 1, 2, 4 … 30 s
        #[arg(long, value_name = "N", default_value_t = 5)]
        retries: u32,
        /// URL: seconds without a byte from the server before the attempt is given up
        #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        stall_timeout: u64,
        /// auto: a progress line on a terminal; json: one JSON object a second on
        /// standard error ({"phase","done","total","rate"}); none
        #[arg(long, value_name = "HOW", default_value = "auto")]
        progress: ProgressMode,
        /// oci://: registry credentials, JSON in the ~/.docker/config.json shape [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json if it exists]
        #[arg(long, value_name = "FILE")]
        auth: Option<PathBuf>,
    },
    /// Push an image to an OCI registry as an hninit artifact (with IMAGE.minisig and IMAGE.bidx when present)
    Publish {
        /// oci://REGISTRY/REPO:TAG (loopback registries over http, others over https)
        reference: String,
        image: PathBuf,
        /// The signature layer [default: IMAGE.minisig if it exists]
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// The block index layer [default: IMAGE.bidx if it exists]
        #[arg(long, value_name = "FILE")]
        index: Option<PathBuf>,
        /// Trust only the CA certificates of this PEM file
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Registry credentials (see stage --auth)
        #[arg(long, value_name = "FILE")]
        auth: Option<PathBuf>,
    },
    /// Check an image's minisign signature against the trusted keys, without staging it
    #[command(long_about = "Checks FILE as /init checks a staged image: its signature \
(FILE.minisig, or --signature) must be a valid minisign signature by a key in \
KEYS/trusted.d/*.pub that is not revoked (KEYS/revoked.d/<key id>), over the file and \
over the trusted comment, which must carry version=. Prints the key id, version, compat \
and the verdict. Exit 0: accepted (or no trusted keys installed: not verified, as /init \
would boot it); exit 3: refused, with the reason.")]
    Verify {
        /// The image file
        file: PathBuf,
        /// The signature file [default: FILE.minisig]
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// The directory holding trusted.d/ and revoked.d/
        #[arg(long, value_name = "DIR", default_value = hninit::trust::keystore::DEFAULT_ETC)]
        keys: PathBuf,
    },
    /// Write the block-hash index of an image (IMAGE.bidx, published next to it) to standard output
    #[command(long_about = "Writes the block-hash index of IMAGE (a raw image) to standard \
output: the sha256 of every block and of the whole image. Published as IMAGE.bidx next \
to the image, it lets `hnctl stage URL` fetch only the blocks the host does not have.")]
    Index {
        image: PathBuf,
        /// Block size in bytes (a power of two, 4096 to 16777216)
        #[arg(long, value_name = "BYTES", default_value_t = hninit::remote::bidx::DEFAULT_BLOCK)]
        block_size: u32,
    },
    /// Remove the staged image (and its digest)
    Unstage,
    /// Ask the next boot to go back to hn-root-old.img (creates the system-revert flag)
    Revert,
    /// End the current image's trial: it stays, the next boots do not count down
    MarkGood {
        /// Leave GRUB's boot counter on the EFI system partition alone
        #[arg(long)]
        no_grub: bool,
    },
    /// Print hn-state/boot.log
    Log {
        /// Only the last N lines
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
    },
    /// Host configurations (Gandi's JSON format plus hninit's keys)
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Instantiate an unpacked image root offline from a host configuration
    /// (identity kept in STATE_DIR, like hn-state/identity at boot)
    Firstboot {
        /// The host configuration (JSON)
        #[arg(long)]
        config: PathBuf,
        /// The unpacked image root to instantiate
        #[arg(long)]
        root: PathBuf,
        /// Where the host identity (ssh host key, machine-id) is kept [default: ROOT/../hn-state-identity]
        #[arg(long, value_name = "STATE_DIR")]
        state: Option<PathBuf>,
        /// Print the planned file changes; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Build an initramfs; keep /boot/kernel + /boot/initramfs on the newest kernel (hooks)
    Initramfs {
        #[command(subcommand)]
        cmd: hninit::image::cli::InitramfsCmd,
    },
    /// Put a bootable hninit layout (GPT, ESP with GRUB, hostpart with the image) on a disk
    Install(hninit::image::cli::InstallArgs),
    /// Make an image from the system you have (hnctl image create --from / --out FILE)
    Image {
        #[command(subcommand)]
        cmd: hninit::image::cli::ImageCmd,
    },
    /// The booted system's platform duties (data disks, swap disk, hotplug, sshd
    /// policy), as the shipped units call them; see docs/config.md
    Platform {
        #[command(subcommand)]
        cmd: PlatformCmd,
    },
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff)
    Man,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProgressMode {
    Auto,
    Json,
    None,
}

#[derive(Subcommand, Debug)]
enum PlatformCmd {
    /// The effective settings (/etc/hninit/runtime.host.json over /etc/hninit/runtime.json over the defaults)
    Show,
    /// Check and mount one block device (hninit-disk@DEV.service)
    Disk { device: String },
    /// Enable the swap/config disk as swap once its archive is wiped (hninit-swap.service)
    Swap,
    /// Bring offline CPUs and memory online (hninit-hotplug@DEV.service)
    Hotplug,
    /// Write or remove the sshd policy drop-in and root's management key (hninit-sshd.service)
    Sshd,
    /// Start a login prompt on the serial and hypervisor consoles (hninit-console.service)
    Console,
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Check a configuration file: every error names its JSON path; exit 3 if refused
    Validate { file: PathBuf },
}

fn parse_real_root(v: &str) -> Result<String, String> {
    hninit::cmdline::check_image_path(v)
}

fn parse_sha256(v: &str) -> Result<[u8; 32], String> {
    hninit::slots::stage::parse_sha256(v)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("hnctl: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn out(text: &str) -> Result<(), CtlError> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|_| o.flush())
        .map_err(|e| CtlError::failed("writing to standard output", e))
}

fn run(cli: Cli) -> Result<(), CtlError> {
    let sys = System::default();
    let host = || ctl::locate(cli.hostpart.as_deref(), cli.real_root.as_deref(), &sys);
    match &cli.cmd {
        Cmd::Status { json } => {
            let host = host()?;
            let st = ctl::status(&host, &sys)?;
            if *json {
                let text =
                    serde_json::to_string_pretty(&st).map_err(|e| CtlError::failed("rendering the status", e))?;
                out(&format!("{text}\n"))
            } else {
                out(&st.render_text(&host.names))
            }
        }
        Cmd::Stage {
            image,
            sha256,
            no_reflink,
            signature,
            keys,
            allow_downgrade,
            ca,
            retries,
            stall_timeout,
            progress,
            whole,
            auth,
        } => {
            let host = host()?;
            if hninit::remote::is_url(image) || image.starts_with("oci://") {
                let opts = hninit::remote::RemoteOptions {
                    sha256: *sha256,
                    ca: ca.clone(),
                    retries: *retries,
                    stall: Duration::from_secs(*stall_timeout),
                    adaptive: !whole,
                    ..Default::default()
                };
                stage_url(&host, image, opts, *progress, (signature.as_deref(), keys, *allow_downgrade, auth.as_deref()))
            } else {
                stage(&host, image, *sha256, !no_reflink, signature.as_deref(), keys, *allow_downgrade)
            }
        }
        Cmd::Publish { reference, image, signature, index, ca, auth } => {
            let p = hninit::remote::oci::push::publish(
                reference,
                image,
                signature.as_deref(),
                index.as_deref(),
                ca.as_deref(),
                auth.as_deref(),
                Duration::from_secs(30),
            )?;
            let mut s = String::new();
            for (mt, size, had) in &p.blobs {
                s += &format!("{mt}: {size} bytes{}\n", if *had { " (already in the registry)" } else { " uploaded" });
            }
            s += &format!("published {reference} (manifest {})\n", p.digest);
            out(&s)
        }
        Cmd::Verify { file, signature, keys } => {
            use hninit::trust::verify_cmd::{verify, VerifyError};
            let r = verify(file, signature.as_deref(), keys).map_err(|e| {
                let kind = match e {
                    VerifyError::KeyStore { .. } => ctl::ErrorKind::Refused,
                    VerifyError::Io { .. } => ctl::ErrorKind::Failed,
                };
                let s = e.to_string();
                let (what, found) = s.split_once(": ").unwrap_or((&s, ""));
                CtlError { what: what.to_string(), found: found.to_string(), kind }
            })?;
            out(&r.render_text())?;
            if r.is_refused() {
                return Err(CtlError {
                    what: format!("verifying {}", file.display()),
                    found: r.verdict.to_string(),
                    kind: ctl::ErrorKind::Refused,
                });
            }
            Ok(())
        }
        Cmd::Index { image, block_size } => {
            if !block_size.is_power_of_two() || !(4096..=16 << 20).contains(block_size) {
                return Err(CtlError {
                    what: "indexing".into(),
                    found: format!("--block-size {block_size} is not a power of two from 4096 to 16777216"),
                    kind: ErrorKind::Usage,
                });
            }
            let what = format!("indexing {}", image.display());
            let f = std::fs::File::open(image).map_err(|e| CtlError::failed(what.clone(), e))?;
            // A regular file's holes are not read.
            let idx = if f.metadata().is_ok_and(|m| m.is_file()) {
                hninit::remote::bidx::Index::build_file(&f, *block_size, true)
            } else {
                hninit::remote::bidx::Index::build(&mut std::io::BufReader::with_capacity(1 << 20, f), *block_size)
            }
            .map_err(|e| CtlError::failed(what.clone(), e))?;
            let mut o = std::io::stdout().lock();
            o.write_all(&idx.to_bytes())
                .and_then(|_| o.flush())
                .map_err(|e| CtlError::failed("writing to standard output", e))
        }
        Cmd::Initramfs { cmd } => {
            let text = hninit::image::cli::run(cmd).map_err(|e| CtlError::failed("hnctl initramfs", format!("{e:#}")))?;
            out(&text)
        }
        Cmd::Install(a) => {
            let text = hninit::image::cli::install(a).map_err(|e| CtlError {
                what: match (&a.disk, &a.esp, &a.hostpart_dev) {
                    (Some(d), _, _) => format!("installing on {}", d.display()),
                    (None, Some(e), Some(h)) => format!("installing on {} and {}", e.display(), h.display()),
                    _ => "installing".into(),
                },
                found: format!("{e:#}"),
                kind: if e.downcast_ref::<hninit::image::install::Refused>().is_some() { ErrorKind::Refused } else { ErrorKind::Failed },
            })?;
            out(&text)
        }
        Cmd::Image { cmd } => {
            let text = hninit::image::cli::image(cmd).map_err(|e| CtlError::failed("hnctl image", format!("{e:#}")))?;
            out(&text)
        }
        Cmd::Unstage => {
            let host = host()?;
            let r = ctl::unstage(&host)?;
            if r.removed.is_empty() {
                out(&format!(
                    "nothing staged: no {} in {}\n",
                    host.names.new,
                    host.images.display()
                ))
            } else {
                out(&format!("removed {}\n", r.removed.join(", ")))
            }
        }
        Cmd::Revert => {
            let host = host()?;
            let r = ctl::revert(&host)?;
            let n = &host.names;
            let mut s = if r.already_requested {
                format!("a revert was already requested ({} present)\n", n.revert_flag)
            } else {
                format!(
                    "revert requested: created {}\n",
                    host.image_path(&n.revert_flag).display()
                )
            };
            if r.old_present {
                s += &format!(
                    "the next boot reverts to {}; {} is kept as {}\n",
                    n.old, n.current, n.broken
                );
            } else {
                s += &format!(
                    "warning: there is no {}: the next boot only clears the flag and boots {} again\n",
                    n.old, n.current
                );
            }
            if r.staged_present {
                s += &format!(
                    "warning: {} is staged; the revert wins and moves it to {}\n",
                    n.new, n.rejected
                );
            }
            out(&s)
        }
        Cmd::MarkGood { no_grub } => {
            let host = host()?;
            let m = ctl::mark_good(&host, !no_grub)?;
            let cur = &host.names.current;
            let mut s = match m.trial {
                Some(t) => format!(
                    "{cur} marked good: its trial is over (it was on try {} of {})\n",
                    t.tries - t.tries_left,
                    t.tries
                ),
                None => format!("{cur} is not on trial: nothing to end\n"),
            };
            let grub_err = match m.grub {
                None => {
                    s += "GRUB's boot counter left alone (--no-grub)\n";
                    None
                }
                Some(Ok(true)) => {
                    s += "GRUB's boot counter cleared on the EFI system partition\n";
                    None
                }
                Some(Ok(false)) => {
                    s += "no grubenv of hninit's GRUB found on an EFI system partition: no boot counter to clear\n";
                    None
                }
                Some(Err(e)) => Some(e),
            };
            out(&s)?;
            match grub_err {
                Some(e) => Err(CtlError::failed("clearing GRUB's boot counter", e)),
                None => Ok(()),
            }
        }
        Cmd::Log { lines } => {
            let host = host()?;
            let log = ctl::boot_log(&host, *lines)?;
            let mut s = log.join("\n");
            if !s.is_empty() {
                s.push('\n');
            }
            out(&s)
        }
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "hnctl", &mut buf);
            out(&String::from_utf8_lossy(&buf))
        }
        Cmd::Man => out(&man_page()?),
        Cmd::Platform { cmd } => {
            use hninit::runtime::agent;
            let done = match cmd {
                PlatformCmd::Show => agent::load().map(|p| agent::show(&p)),
                PlatformCmd::Disk { device } => agent::disk(device),
                PlatformCmd::Swap => agent::swap(),
                PlatformCmd::Hotplug => agent::hotplug(),
                PlatformCmd::Sshd => agent::sshd(std::path::Path::new("/")),
                PlatformCmd::Console => agent::console(),
            };
            out(&done.map_err(|e| CtlError::failed("platform", e))?)
        }
        Cmd::Config { cmd: ConfigCmd::Validate { file } } => {
            let parsed = ctl::read_config_file(file).map_err(refused)?;
            let mut text = String::new();
            for w in &parsed.warnings {
                text.push_str(&format!("warning: {w}\n"));
            }
            text.push_str(&format!("{}: valid, host {} (digest {})\n", file.display(), parsed.config.vm_hostname, parsed.digest));
            out(&text)
        }
        Cmd::Firstboot { config, root, state, dry_run } => {
            let parsed = ctl::read_config_file(config).map_err(refused)?;
            let mut state_dir = state.clone().unwrap_or_else(|| root.join("..").join("hn-state-identity"));
            let mut throwaway = None;
            if *dry_run && !state_dir.is_dir() {
                // Nothing may be written: plan against an empty, throwaway identity
                // directory, private (0700, unpredictable name, made by mkdir).
                let t = ctl::PrivateTempDir::new("hnctl-dry-run").map_err(|e| CtlError::failed("creating a temporary directory", e))?;
                state_dir = t.path().to_path_buf();
                throwaway = Some(t);
            } else {
                // The identity (a private host key) lives there: 0700.
                ctl::create_private_dir(&state_dir).map_err(|e| CtlError::failed(format!("creating {}", state_dir.display()), e))?;
            }
            let dir = hninit::slots::dir::RealDir::open(&state_dir, !*dry_run)
                .map_err(|e| CtlError::failed(format!("opening {}", state_dir.display()), e))?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let report = hninit::firstboot::instantiate(root, &dir, &parsed.config, &parsed.digest, &hninit::firstboot::Options { dry_run: *dry_run, now })
                .map_err(|e| CtlError::failed(format!("instantiating {}", root.display()), e))?;
            drop(throwaway);
            out(&report.summary())
        }
    }
}

fn refused(e: impl std::fmt::Display) -> CtlError {
    CtlError { what: "checking the configuration".into(), found: e.to_string(), kind: hninit::ctl::ErrorKind::Refused }
}

/// The roff page, its `.TH` line first (clap_mangen puts a string definition before it).
fn man_page() -> Result<String, CtlError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| CtlError::failed("rendering the manual page", e))?;
    let text = String::from_utf8_lossy(&buf);
    let (th, rest): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.starts_with(".TH "));
    let mut page = String::new();
    for l in th.iter().chain(rest.iter()) {
        page.push_str(l);
        page.push('\n');
    }
    Ok(page)
}

fn stage(
    host: &Host,
    image: &str,
    sha256: Option<[u8; 32]>,
    reflink: bool,
    signature: Option<&std::path::Path>,
    keys: &std::path::Path,
    allow_downgrade: bool,
) -> Result<(), CtlError> {
    let start = Instant::now();
    let mut line = Progress::new(std::io::stderr().is_terminal());
    let res = ctl::stage(host, image, sha256, reflink, signature, keys, allow_downgrade, &mut |done, total| {
        line.update(done, total)
    });
    line.clear();
    let r = res?;
    let secs = start.elapsed().as_secs_f64();
    let from = if image == "-" { "standard input" } else { image };
    let mut s = summary(&r, from, secs);
    if ctl::revert_requested(host) {
        s += &format!(
            "warning: a revert is requested ({}): the next boot reverts and moves {} to {}\n",
            host.names.revert_flag, host.names.new, host.names.rejected
        );
    } else {
        s += &format!(
            "the next boot checks it and rotates it in; {} becomes {}\n",
            host.names.current, host.names.old
        );
    }
    out(&s)
}

/// `hnctl stage URL`.
fn stage_url(
    host: &Host,
    url: &str,
    mut opts: hninit::remote::RemoteOptions,
    mode: ProgressMode,
    (signature, keys, allow_downgrade, auth): (Option<&std::path::Path>, &std::path::Path, bool, Option<&std::path::Path>),
) -> Result<(), CtlError> {
    use hninit::remote::Phase;
    let start = Instant::now();
    let images = hninit::slots::dir::RealDir::open(&host.images, false)
        .map_err(|e| CtlError::failed(format!("opening {}", host.images.display()), e))?;
    opts.free_bytes = hninit::slots::stage::free_bytes(&host.images)
        .map_err(|e| CtlError::failed(format!("measuring the free space in {}", host.images.display()), e))?;
    let tty = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr_with_hz(10));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:9} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    });
    let mut json = JsonProgress::new(mode == ProgressMode::Json);
    let mut pinned = None;
    let mut on_progress = |p: hninit::remote::Progress| {
        json.update(p.phase, p.done, p.total);
        if let Some(b) = &bar {
            let phase = match p.phase {
                Phase::Rehash => "rehash",
                Phase::Download => "download",
                Phase::Retry => "retrying",
                Phase::Check => "checking",
            };
            if b.message() != phase {
                b.set_message(phase);
            }
            b.set_length(p.total.unwrap_or(p.done));
            b.set_position(p.done);
        }
    };
    let res = if url.starts_with("oci://") {
        hninit::remote::oci::pull::stage(host, &images, url, opts, signature, keys, allow_downgrade, auth, &mut on_progress).map(|p| {
            pinned = Some(p.manifest);
            (p.report, p.verdict)
        })
    } else {
        hninit::remote::signed::stage_on_host(host, &images, url, &opts, signature, keys, allow_downgrade, &mut on_progress)
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    json.finish();
    let (r, verdict) = res?;
    let mut s = summary(&r.stage, url, start.elapsed().as_secs_f64());
    if let Some(v) = verdict {
        s += &format!("signature: {v}\n");
    }
    if let Some(d) = pinned {
        s += &format!("manifest {d}\n");
    }
    if let Some(d) = &r.delta {
        s += &format!(
            "adaptive: {} bytes fetched in {} range requests (+ {} bytes of index), {} bytes reused from local images ({} local indexes from hn-state/bidx-cache)\n",
            d.fetched, d.requests, d.index_bytes, d.reused, d.cached_indexes
        );
        if let Some(at) = d.resumed_at {
            s += &format!("adaptive: resumed the interrupted download at byte {at}\n");
        }
    }
    if let Some(why) = &r.fell_back {
        s += &format!("warning: the adaptive download did not check out ({why}): downloaded whole\n");
    }
    if r.restarts > 0 {
        s += "the file changed on the server since the interrupted download: downloaded from its first byte\n";
    }
    s += &next_boot(host);
    out(&s)
}

fn next_boot(host: &Host) -> String {
    if ctl::revert_requested(host) {
        format!(
            "warning: a revert is requested ({}): the next boot reverts and moves {} to {}\n",
            host.names.revert_flag, host.names.new, host.names.rejected
        )
    } else {
        format!(
            "the next boot checks it and rotates it in; {} becomes {}\n",
            host.names.current, host.names.old
        )
    }
}

/// `--progress=json`: one object a second on standard error, and one at each phase change.
struct JsonProgress {
    on: bool,
    start: Instant,
    last: Option<(Instant, hninit::remote::Phase, u64)>,
    pending: Option<(hninit::remote::Phase, u64, Option<u64>)>,
}

impl JsonProgress {
    fn new(on: bool) -> JsonProgress {
        JsonProgress { on, start: Instant::now(), last: None, pending: None }
    }

    fn update(&mut self, phase: hninit::remote::Phase, done: u64, total: Option<u64>) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        self.pending = Some((phase, done, total));
        let due = match self.last {
            None => true,
            Some((t, p, _)) => p != phase || now.duration_since(t) >= Duration::from_secs(1),
        };
        if due {
            self.emit(now);
        }
    }

    fn emit(&mut self, now: Instant) {
        let Some((phase, done, total)) = self.pending.take() else { return };
        let (t0, d0) = match self.last {
            Some((t, _, d)) if done >= d => (t, d),
            _ => (self.start, 0),
        };
        let secs = now.duration_since(t0).as_secs_f64();
        let rate = if secs > 0.0 { ((done - d0) as f64 / secs) as u64 } else { 0 };
        let obj = serde_json::json!({
            "phase": phase,
            "done": done,
            "total": total,
            "rate": rate,
            "elapsed": now.duration_since(self.start).as_secs_f64(),
        });
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{obj}");
        self.last = Some((now, phase, done));
    }

    fn finish(&mut self) {
        if self.on {
            self.emit(Instant::now());
        }
    }
}

fn summary(r: &StageReport, image: &str, secs: f64) -> String {
    let rate = if secs > 0.0 { r.bytes as f64 / 1e6 / secs } else { 0.0 };
    let how = match r.method {
        hninit::slots::dir::CopyMethod::Reflink => "reflinked",
        hninit::slots::dir::CopyMethod::CopyFileRange => "copied (copy_file_range)",
        hninit::slots::dir::CopyMethod::ReadWrite => "copied (read/write)",
        hninit::slots::dir::CopyMethod::Download => "downloaded",
    };
    let mut s = format!(
        "staged {} from {image}: {} bytes in {secs:.2} s ({rate:.1} MB/s), {how}, {}{}\n",
        r.name,
        r.bytes,
        r.fstype,
        if r.replaced {
            ", replacing the image staged before"
        } else {
            ""
        }
    );
    s += &match (&r.sha256, &r.digest_file) {
        (Some(d), Some(f)) => format!("sha256 {d} (verified, kept in {f})\n"),
        (Some(d), None) => format!("sha256 {d}\n"),
        _ => "sha256 not computed (give --sha256 HEX to verify the copy)\n".to_string(),
    };
    s
}

/// The progress line on a terminal: at most 10 updates a second.
struct Progress {
    tty: bool,
    start: Instant,
    last: Option<Instant>,
    shown: bool,
}

impl Progress {
    fn new(tty: bool) -> Progress {
        Progress {
            tty,
            start: Instant::now(),
            last: None,
            shown: false,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_millis(100))
            && done != total
        {
            return;
        }
        self.last = Some(now);
        let secs = now.duration_since(self.start).as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / 1e6 / secs } else { 0.0 };
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let line = if total > 0 {
            format!(
                "staging: {:.0} of {:.0} MiB ({:.0}%), {rate:.0} MB/s",
                mib(done),
                mib(total),
                done as f64 * 100.0 / total as f64
            )
        } else {
            format!("staging: {:.0} MiB, {rate:.0} MB/s", mib(done))
        };
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[K{line}");
        let _ = e.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[K");
            let _ = e.flush();
            self.shown = false;
        }
    }
}
