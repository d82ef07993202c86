//! Signing images for hninit's trust policy with the real `minisign` tool: the
//! trusted comment (`version=`, `compat=`, `size=`) is built and checked here
//! with the parser `/init` uses, then `minisign -S` writes `IMAGE.minisig`. The
//! secret key must be unencrypted (`minisign -G -W`) for unattended builds; an
//! encrypted one makes minisign ask for its password on the terminal.

use anyhow::{bail, Context, Result};
use hninit::trust::{Meta, Signature, Version};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What to sign an image with.
#[derive(Debug, Clone)]
pub struct SignSpec {
    /// minisign secret key file.
    pub key: PathBuf,
    /// `version=`: dot-separated numbers, e.g. `2026.12.5`.
    pub version: String,
    /// `compat=`, when the images of a class must only replace each other.
    pub compat: Option<String>,
}

/// The trusted comment for `spec` and an image of `size` bytes, checked.
pub fn trusted_comment(spec: &SignSpec, size: u64) -> Result<String> {
    Version::parse(&spec.version).map_err(|e| anyhow::anyhow!("--version: {e}"))?;
    let mut c = format!("version={}", spec.version);
    if let Some(compat) = &spec.compat {
        c.push_str(&format!(" compat={compat}"));
    }
    c.push_str(&format!(" size={size}"));
    let m = Meta::parse(c.as_bytes()).map_err(|e| anyhow::anyhow!("trusted comment {c:?}: {e}"))?;
    if m.compat != spec.compat || m.size != Some(size) {
        bail!("--compat {:?} must be one token without spaces", spec.compat.as_deref().unwrap_or(""));
    }
    Ok(c)
}

/// Signs `image` with `minisign -S` into `IMAGE.minisig` (replaced); returns
/// its path and the trusted comment.
pub fn sign_image(image: &Path, spec: &SignSpec) -> Result<(PathBuf, String)> {
    let size = std::fs::metadata(image)
        .with_context(|| format!("signing {}", image.display()))?
        .len();
    let comment = trusted_comment(spec, size)?;
    let sig = PathBuf::from(format!("{}{}", image.display(), hninit::trust::SIG_SUFFIX));
    let out = Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(&spec.key)
        .arg("-m")
        .arg(image)
        .arg("-x")
        .arg(&sig)
        .arg("-t")
        .arg(&comment)
        .stdin(Stdio::null())
        .output()
        .context("running minisign (Debian package minisign)")?;
    if !out.status.success() {
        bail!(
            "minisign -S -s {} -m {}: {}{}",
            spec.key.display(),
            image.display(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = std::fs::read(&sig).with_context(|| format!("reading {}", sig.display()))?;
    Signature::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", sig.display()))?;
    Ok((sig, comment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hninit::trust::policy::{decide, Context as PolicyContext};
    use hninit::trust::{KeyStore, PublicKey};

    /// A temporary directory holding `k.pub`/`k.key`, made by the real `minisign -G`.
    fn dir_with_key() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("minisign")
            .args(["-G", "-W", "-p", "k.pub", "-s", "k.key"])
            .current_dir(d.path())
            .stdout(Stdio::null())
            .status()
            .expect("minisign (Debian package minisign) is needed");
        assert!(st.success());
        d
    }

    #[test]
    fn signs_what_init_accepts() {
        let d = dir_with_key();
        let img = d.path().join("hn-root.img");
        std::fs::write(&img, vec![7u8; 70_000]).unwrap();
        let spec = SignSpec {
            key: d.path().join("k.key"),
            version: "2026.12.5".into(),
            compat: Some("web-amd64".into()),
        };
        let (sig, comment) = sign_image(&img, &spec).unwrap();
        assert_eq!(comment, "version=2026.12.5 compat=web-amd64 size=70000");
        let mut store = KeyStore::default();
        store
            .add(PublicKey::parse_file(&std::fs::read(d.path().join("k.pub")).unwrap()).unwrap(), "k.pub")
            .unwrap();
        let s = Signature::parse(&std::fs::read(&sig).unwrap()).unwrap();
        let v = decide(&store, Some(&s), &PolicyContext::default(), &std::fs::read(&img).unwrap());
        assert!(v.is_accepted(), "{v}");

        let bad = SignSpec { version: "2026.12.x".into(), ..spec.clone() };
        assert!(sign_image(&img, &bad).unwrap_err().to_string().contains("--version"));
        let spaced = SignSpec { compat: Some("web amd64".into()), ..spec.clone() };
        assert!(sign_image(&img, &spaced).is_err());
        let nokey = SignSpec { key: d.path().join("none.key"), ..spec };
        assert!(sign_image(&img, &nokey).unwrap_err().to_string().contains("minisign -S"));
    }

    /// The factory's two trust outputs end to end: the keys it installs in the
    /// image (`/etc/hninit`, what `hnctl` reads) and the signature of its `sign`
    /// step. The real `minisign -V` accepts the signature and shows the trusted
    /// comment; `hnctl verify`'s check (`trust::verify_cmd::verify`) with the
    /// installed keys accepts it with its version and compat; one byte changed
    /// after signing is refused by both; a revoked key by hnctl's.
    #[test]
    fn factory_signing_verifies_with_minisign_and_hnctl_verify() {
        use hninit::trust::verify_cmd::verify;
        let d = dir_with_key();
        let stage = d.path().join("root");
        let spec = crate::ImageSpec { trust_keys: vec![d.path().join("k.pub")], ..Default::default() };
        crate::factory::install_keys(&spec, &stage).unwrap();
        let etc = stage.join("etc/hninit");
        assert!(etc.join("trusted.d/k.pub").is_file());

        let img = d.path().join("hn-root.img");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        std::fs::write(&img, &data).unwrap();
        let sign = SignSpec { key: d.path().join("k.key"), version: "2026.12.5".into(), compat: Some("web-amd64".into()) };
        let (sig, comment) = sign_image(&img, &sign).unwrap();
        assert_eq!(sig, d.path().join("hn-root.img.minisig"));

        let minisign_v = || {
            Command::new("minisign")
                .arg("-V")
                .arg("-p")
                .arg(d.path().join("k.pub"))
                .arg("-m")
                .arg(&img)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let out = minisign_v();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("Trusted comment: {comment}")), "{text}");

        let r = verify(&img, None, &etc).unwrap();
        assert!(!r.is_refused(), "{}", r.render_text());
        let shown = r.render_text();
        assert!(shown.contains("2026.12.5") && shown.contains("web-amd64"), "{shown}");

        let mut bad = data.clone();
        bad[1_500_000] ^= 1;
        std::fs::write(&img, &bad).unwrap();
        assert!(!minisign_v().status.success(), "minisign -V accepted an altered image");
        assert!(verify(&img, None, &etc).unwrap().is_refused());

        std::fs::write(&img, &data).unwrap();
        let id = PublicKey::parse_file(&std::fs::read(d.path().join("k.pub")).unwrap()).unwrap().id.to_string();
        let revoking = crate::ImageSpec { revoke_keys: vec![id], ..spec };
        let stage2 = d.path().join("root2");
        crate::factory::install_keys(&revoking, &stage2).unwrap();
        assert!(verify(&img, None, &stage2.join("etc/hninit")).unwrap().is_refused());
    }
}
