//! GRUB: rendering the `grub/grub.cfg.in` menu template, building the
//! standalone EFI GRUB (`BOOTX64.EFI`) that finds `/EFI/hninit/grub.cfg`, and
//! the i386-pc `core.img` (BIOS) that finds the same menu (see `biosboot`).

use super::tools::{self as util, cmd};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// The menu template shipped in `grub/grub.cfg.in`.
pub const GRUB_CFG_TEMPLATE: &str = include_str!("../../grub/grub.cfg.in");

/// Where the standalone GRUB looks for the menu on the ESP.
pub const ESP_GRUB_CFG: &str = "/EFI/hninit/grub.cfg";

/// Modules preloaded into the standalone GRUB image (every other module is
/// in its memdisk too, loadable with `insmod`).
pub const GRUB_MODULES: &str =
    "part_gpt part_msdos fat ext2 btrfs xfs loopback search search_label \
search_fs_uuid search_fs_file linux gzio xzio zstd normal echo serial terminal test configfile \
efi_gop all_video loadenv sleep halt reboot ls cat";

/// Config embedded in the standalone GRUB: find the ESP holding our menu.
pub const EMBEDDED_CFG: &str = "search --no-floppy --set=hnesp --file /EFI/hninit/grub.cfg
if [ -n \"$hnesp\" ]; then
    set root=$hnesp
    configfile ($hnesp)/EFI/hninit/grub.cfg
fi
echo \"hninit: no disk holds /EFI/hninit/grub.cfg\"
";

/// Values for the template variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubVars {
    /// `@TIMEOUT@`, seconds.
    pub timeout: u32,
    /// `@HOSTPART_LABEL@`.
    pub hostpart_label: String,
    /// `@IMAGE_DIR@`: `""` or `/dir` (normalised: leading `/`, no trailing `/`).
    pub image_dir: String,
    /// `@CMDLINE@`.
    pub cmdline: String,
}

impl Default for GrubVars {
    fn default() -> Self {
        GrubVars {
            timeout: 3,
            hostpart_label: "hostpart".into(),
            image_dir: String::new(),
            cmdline: "console=ttyS0 rw".into(),
        }
    }
}

impl GrubVars {
    /// The `(name, value)` pairs for [`render_grub_cfg`].
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TIMEOUT", self.timeout.to_string()),
            ("HOSTPART_LABEL", self.hostpart_label.clone()),
            ("IMAGE_DIR", normalize_image_dir(&self.image_dir)),
            ("CMDLINE", self.cmdline.clone()),
        ]
    }

    /// The shipped template rendered with these values.
    pub fn render(&self) -> String {
        let pairs = self.pairs();
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        render_grub_cfg(GRUB_CFG_TEMPLATE, &refs)
    }
}

/// `images/` → `/images`, `/` → ``.
pub fn normalize_image_dir(d: &str) -> String {
    let t = d.trim_matches('/');
    if t.is_empty() {
        String::new()
    } else {
        format!("/{t}")
    }
}

/// Replaces each `@NAME@` of `vars` in `template`. Unknown `@NAME@`s are left
/// as they are ([`unrendered_vars`] finds them).
pub fn render_grub_cfg(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    s
}

/// `@NAME@` placeholders (upper case, digits, `_`) still present in `text`.
pub fn unrendered_vars(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in text.split('@').enumerate() {
        if i % 2 == 1
            && !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            out.push(part.to_string());
        }
    }
    out
}

/// Where built GRUB images are cached: `$XDG_CACHE_HOME/hninit/grub`, else
/// `~/.cache/hninit/grub`, else `/var/cache/hninit/grub`.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("hninit/grub");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache/hninit/grub"),
        None => PathBuf::from("/var/cache/hninit/grub"),
    }
}

/// Builds (or reuses from [`cache_dir`]) the standalone x86_64 EFI
/// GRUB and copies it to `out`; returns `out`. The image carries all GRUB
/// modules in its memdisk and an embedded config that searches for
/// `/EFI/hninit/grub.cfg` and runs it.
pub fn grub_efi(out: &Path) -> Result<PathBuf> {
    let cached = cached_grub_efi()?;
    if let Some(d) = out.parent() {
        fs::create_dir_all(d)?;
    }
    fs::copy(&cached, out)
        .with_context(|| format!("copying {} to {}", cached.display(), out.display()))?;
    Ok(out.to_path_buf())
}

/// The cached standalone GRUB, built on first use (keyed by GRUB version,
/// module list and embedded config).
pub fn cached_grub_efi() -> Result<PathBuf> {
    let mkstandalone = util::program("grub-mkstandalone")?;
    let version = util::run_stdout(std::process::Command::new(&mkstandalone).arg("--version"))?;
    let key = util::fnv64(format!("{version}\n{GRUB_MODULES}\n{EMBEDDED_CFG}").as_bytes());
    let dir = cache_dir();
    let path = dir.join(format!("BOOTX64-{key:016x}.EFI"));
    if path.is_file() {
        return Ok(path);
    }
    if !Path::new("/usr/lib/grub/x86_64-efi/loopback.mod").exists() {
        bail!("GRUB EFI modules missing in /usr/lib/grub/x86_64-efi (install grub-efi-amd64-bin)");
    }
    fs::create_dir_all(&dir)?;
    let cfg = dir.join(format!("embedded-{}.cfg", util::unique_suffix()));
    fs::write(&cfg, EMBEDDED_CFG)?;
    let tmp = util::tmp_sibling(&path);
    let res = util::run(
        cmd("grub-mkstandalone")
            .args(["-O", "x86_64-efi", "--locales=", "--fonts=", "--themes="])
            .arg(format!("--modules={GRUB_MODULES}"))
            .arg("-o")
            .arg(&tmp)
            .arg(format!("boot/grub/grub.cfg={}", cfg.display())),
    );
    fs::remove_file(&cfg).ok();
    res.context("building the standalone EFI GRUB")?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// GRUB's i386-pc modules (Debian package `grub-pc-bin`).
pub const I386_PC_DIR: &str = "/usr/lib/grub/i386-pc";

/// Modules built into the BIOS `core.img`: it has no module directory to load
/// from, so everything the menu `insmod`s is in it.
pub const GRUB_BIOS_MODULES: &str =
    "biosdisk part_gpt part_msdos fat ext2 btrfs xfs loopback search search_label \
search_fs_uuid search_fs_file linux gzio xzio zstd normal echo serial terminal test configfile \
loadenv sleep halt reboot ls cat";

/// Config embedded in `core.img`. GRUB runs it with its rescue parser (one
/// command per line, no `if`): find the partition holding our menu, make it
/// the prefix; normal mode then reads `$prefix/grub.cfg` and sets
/// `$config_directory`, where the menu finds the grubenv.
const EMBEDDED_BIOS_CFG: &str = "search --no-floppy --set=root --file /EFI/hninit/grub.cfg
set prefix=($root)/EFI/hninit
";

/// The i386-pc `core.img` (cached in [`cache_dir`], keyed by GRUB version,
/// modules and embedded config), made with `grub-mkimage -O i386-pc`.
pub fn cached_grub_bios() -> Result<PathBuf> {
    let mkimage = util::program("grub-mkimage")?;
    let version = util::run_stdout(std::process::Command::new(&mkimage).arg("--version"))?;
    let key = util::fnv64(format!("{version}\n{GRUB_BIOS_MODULES}\n{EMBEDDED_BIOS_CFG}").as_bytes());
    let dir = cache_dir();
    let path = dir.join(format!("core-i386-pc-{key:016x}.img"));
    if path.is_file() {
        return Ok(path);
    }
    if !Path::new(I386_PC_DIR).join("boot.img").exists() {
        bail!("GRUB i386-pc images missing in {I386_PC_DIR} (install grub-pc-bin)");
    }
    fs::create_dir_all(&dir)?;
    let cfg = dir.join(format!("embedded-bios-{}.cfg", util::unique_suffix()));
    fs::write(&cfg, EMBEDDED_BIOS_CFG)?;
    let tmp = util::tmp_sibling(&path);
    let res = util::run(
        cmd("grub-mkimage")
            .args(["-O", "i386-pc", "-d", I386_PC_DIR, "-p", "/EFI/hninit", "-c"])
            .arg(&cfg)
            .arg("-o")
            .arg(&tmp)
            .args(GRUB_BIOS_MODULES.split_whitespace()),
    );
    fs::remove_file(&cfg).ok();
    res.context("building the i386-pc GRUB core.img")?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_renders_fully() {
        let v = GrubVars {
            timeout: 0,
            image_dir: "images/".into(),
            cmdline: "console=ttyS0 rw quiet".into(),
            ..Default::default()
        };
        let cfg = v.render();
        assert!(
            unrendered_vars(&cfg).is_empty(),
            "{:?}",
            unrendered_vars(&cfg)
        );
        assert!(cfg.contains("set timeout=0"));
        assert!(cfg.contains("loopback loop ($hostpart)/images/hn-root.img"));
        assert!(cfg.contains(
            "linux (loop)/boot/kernel real_root=/images/hn-root.img loopdev_hostpart=LABEL=hostpart console=ttyS0 rw quiet"
        ));
        assert!(cfg.contains("real_root=/images/hn-root-old.img"));
        assert!(cfg.contains("real_root=/images/hn-root.img hn.revert=1"));
        assert!(cfg.contains("search --no-floppy --label hostpart --set=hostpart"));
        // current, previous, revert, and the automatic revert (defined only
        // when a trial ran out of tries; see grub/README.md).
        assert_eq!(cfg.matches("menuentry ").count(), 4);
    }

    #[test]
    fn rendered_menu_and_embedded_config_parse() {
        let Some(check) = util::find_program("grub-script-check") else {
            eprintln!("grub-script-check missing; skipping");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("menu.cfg", GrubVars::default().render()),
            ("embedded.cfg", EMBEDDED_CFG.to_string()),
            ("embedded-bios.cfg", EMBEDDED_BIOS_CFG.to_string()),
        ] {
            let p = d.path().join(name);
            fs::write(&p, text).unwrap();
            util::run(std::process::Command::new(&check).arg(&p)).unwrap();
        }
    }

    #[test]
    fn root_dir_images() {
        let cfg = GrubVars::default().render();
        assert!(cfg.contains("loopback loop ($hostpart)/hn-root.img"));
        assert!(cfg.contains("real_root=/hn-root.img loopdev"));
    }

    #[test]
    fn finds_placeholders() {
        assert_eq!(unrendered_vars("a @X_1@ b user@example.org @@"), ["X_1"]);
        assert_eq!(
            render_grub_cfg("@A@-@B@-@C@", &[("A", "1"), ("B", "2")]),
            "1-2-@C@"
        );
        assert_eq!(normalize_image_dir("/"), "");
        assert_eq!(normalize_image_dir("images"), "/images");
    }
}
