//! Pure editing of the image's `/etc/passwd`, `/etc/shadow`, `/etc/group` and
//! `/etc/gshadow`: add or update one user at a time, keeping every other line
//! byte for byte (malformed lines, NIS `+`/`-` lines, comments and CRLF endings
//! included — they are never parsed as entries and never crash the editor).
//!
//! Rules:
//! * a **new user** gets the given uid (it must be free and within
//!   1000..=59999) or the lowest uid from 1000 free both as a uid and as a gid, a
//!   user private group of the same name (gid = uid when free), home
//!   `/home/<name>`, the given shell or the image's default (`/bin/bash` when the
//!   image has it, else `/bin/sh`), and a shadow line `name:HASH:DAYS:0:99999:7:::`
//!   whose hash is `!` (locked; ssh keys still work) without a password;
//! * an **existing regular user** (uid 1000..=59999) keeps its uid, gid and home;
//!   its hash is replaced (and the last change day set) when the configuration
//!   gives a different one, its shell when one is given; a missing private group,
//!   gshadow or shadow line is added (so an interrupted first boot converges);
//! * an **existing system account** (uid below 1000 or above 59999, e.g. Gandi's
//!   `user: root`) is never edited: only its supplementary groups (and, elsewhere,
//!   its `authorized_keys`) are set; a password or shell in the configuration is
//!   ignored with a warning;
//! * supplementary groups (and the sudo/wheel group for administrators, never for
//!   root) are added when they exist in the image, with a warning otherwise, in
//!   `/etc/group` and `/etc/gshadow` alike;
//! * a uid asked for that another user has, or that differs from the existing
//!   user's, is an error: files already owned by that uid must not change hands.
//! * a line that names the user (or its group) but is not a well-formed entry
//!   is an error naming the file and line: adding a second line of that name
//!   would leave two entries each tool reads its own way.

pub const FIRST_UID: u32 = 1000;
pub const LAST_UID: u32 = 59999;

/// The four account databases of an image (`None`: the image lacks the file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Databases {
    pub passwd: Vec<u8>,
    pub shadow: Option<Vec<u8>>,
    pub group: Vec<u8>,
    pub gshadow: Option<Vec<u8>>,
}

/// One user as the configuration wants it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRequest {
    pub name: String,
    pub uid: Option<u32>,
    /// A crypt(3) hash.
    pub password: Option<String>,
    pub shell: Option<String>,
    pub groups: Vec<String>,
    /// Member of the image's sudo/wheel group.
    pub admin: bool,
}

/// What the image provides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub default_shell: String,
    /// `sudo` or `wheel`, when the image has one.
    pub admin_group: Option<String>,
    /// Days since the epoch, for shadow's last change field.
    pub today: u64,
}

/// The user after the edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// A system account: only its groups and keys were touched.
    pub system: bool,
    /// The user was added by this edit.
    pub created: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccountsError {
    #[error("user {name:?}: not a valid user name")]
    BadName { name: String },
    #[error("user {name}: uid {uid} is outside {FIRST_UID}..={LAST_UID}")]
    UidOutOfRange { name: String, uid: u32 },
    #[error("user {name}: uid {uid} already belongs to {owner} in /etc/passwd")]
    UidTaken { name: String, uid: u32, owner: String },
    #[error("user {name} exists in /etc/passwd with uid {have}; the configuration asks for uid {want}")]
    UidMismatch { name: String, have: u32, want: u32 },
    #[error("user {name}: no free uid between {FIRST_UID} and {LAST_UID}")]
    NoFreeUid { name: String },
    #[error("user {name}: {file} line {line} names {name} but is not a well-formed entry; fix or remove it (a second {name} line would be read differently by each tool)")]
    Malformed { name: String, file: String, line: usize },
}

/// A passwd entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

pub fn is_system(uid: u32) -> bool {
    !(FIRST_UID..=LAST_UID).contains(&uid)
}

/// The first well-formed passwd entry named `name`.
pub fn lookup(passwd: &[u8], name: &str) -> Option<PasswdEntry> {
    let t = Table::parse(passwd);
    let i = t.find_passwd(name.as_bytes())?;
    let f = t.fields(i);
    Some(PasswdEntry {
        uid: num(f[2])?,
        gid: num(f[3])?,
        home: String::from_utf8_lossy(f[5]).into_owned(),
        shell: String::from_utf8_lossy(f[6]).into_owned(),
    })
}

/// The gid of the group `name`.
pub fn group_gid(group: &[u8], name: &str) -> Option<u32> {
    let t = Table::parse(group);
    t.find_group(name.as_bytes()).and_then(|i| num(t.fields(i)[2]))
}

/// A name usable in these files and as a path component.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '+', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
}

/// Adds or updates `req` in `db` (see the module documentation).
pub fn ensure_user(db: &mut Databases, req: &UserRequest, set: &Settings, warnings: &mut Vec<String>) -> Result<Account, AccountsError> {
    if !valid_name(&req.name) {
        return Err(AccountsError::BadName { name: req.name.clone() });
    }
    let name = req.name.as_bytes();
    let mut pw = Table::parse(&db.passwd);
    let mut gr = Table::parse(&db.group);
    let mut sh = db.shadow.as_deref().map(Table::parse);
    let mut gs = db.gshadow.as_deref().map(Table::parse);

    let account = match pw.find_passwd(name) {
        Some(i) => {
            let f = pw.fields(i);
            let (uid, gid) = (num(f[2]).unwrap_or(0), num(f[3]).unwrap_or(0));
            let home = String::from_utf8_lossy(f[5]).into_owned();
            let (old_hash, old_shell) = (f[1].to_vec(), f[6].to_vec());
            if let Some(want) = req.uid.filter(|w| *w != uid) {
                return Err(AccountsError::UidMismatch {
                    name: req.name.clone(),
                    have: uid,
                    want,
                });
            }
            let system = is_system(uid);
            if system {
                if req.password.is_some() {
                    warnings.push(format!(
                        "user {}: a system account (uid {uid}); its password is left as the image has it",
                        req.name
                    ));
                }
                if req.shell.is_some() {
                    warnings.push(format!(
                        "user {}: a system account (uid {uid}); its shell is left as the image has it",
                        req.name
                    ));
                }
            } else {
                if let Some(shell) = req.shell.as_deref().filter(|s| s.as_bytes() != old_shell) {
                    pw.set_field(i, 6, shell.as_bytes());
                }
                if sh.is_none() {
                    if let Some(hash) = req.password.as_deref().filter(|h| h.as_bytes() != old_hash) {
                        pw.set_field(i, 1, hash.as_bytes());
                    }
                }
            }
            Account {
                name: req.name.clone(),
                uid,
                gid,
                home,
                system,
                created: false,
            }
        }
        None => {
            pw.no_malformed(name, &req.name, "/etc/passwd")?;
            let used_uids = pw.numbers(2);
            let used_gids = gr.numbers(2);
            let uid = match req.uid {
                Some(uid) if is_system(uid) => {
                    return Err(AccountsError::UidOutOfRange {
                        name: req.name.clone(),
                        uid,
                    })
                }
                Some(uid) => {
                    if let Some(owner) = pw.owner_of(uid) {
                        return Err(AccountsError::UidTaken {
                            name: req.name.clone(),
                            uid,
                            owner,
                        });
                    }
                    uid
                }
                None => (FIRST_UID..=LAST_UID)
                    .find(|n| !used_uids.contains(n) && !used_gids.contains(n))
                    .or_else(|| (FIRST_UID..=LAST_UID).find(|n| !used_uids.contains(n)))
                    .ok_or_else(|| AccountsError::NoFreeUid { name: req.name.clone() })?,
            };
            let gid = match gr.find_group(name).and_then(|i| num(gr.fields(i)[2])) {
                Some(gid) => gid,
                None if !used_gids.contains(&uid) => uid,
                None => (FIRST_UID..=LAST_UID)
                    .find(|n| !used_gids.contains(n))
                    .ok_or_else(|| AccountsError::NoFreeUid { name: req.name.clone() })?,
            };
            let home = format!("/home/{}", req.name);
            let shell = req.shell.as_deref().unwrap_or(&set.default_shell);
            let field = if sh.is_some() {
                "x"
            } else {
                req.password.as_deref().unwrap_or("!")
            };
            pw.push(format!("{}:{field}:{uid}:{gid}::{home}:{shell}", req.name));
            Account {
                name: req.name.clone(),
                uid,
                gid,
                home,
                system: false,
                created: true,
            }
        }
    };

    if !account.system {
        if gr.find_group(name).is_none() && gr.find_gid(account.gid).is_none() {
            gr.no_malformed(name, &req.name, "/etc/group")?;
            gr.push(format!("{}:x:{}:", req.name, account.gid));
        }
        if let Some(gs) = gs.as_mut() {
            let own = gr.find_group(name).and_then(|i| num(gr.fields(i)[2])) == Some(account.gid);
            if own && gs.find_named(name, 4).is_none() {
                gs.no_malformed(name, &req.name, "/etc/gshadow")?;
                gs.push(format!("{}:!::", req.name));
            }
        }
        if let Some(sh) = sh.as_mut() {
            match sh.find_named(name, 2) {
                Some(i) => {
                    if let Some(hash) = req.password.as_deref().filter(|h| h.as_bytes() != sh.fields(i)[1]) {
                        sh.set_field(i, 1, hash.as_bytes());
                        sh.set_field(i, 2, set.today.to_string().as_bytes());
                    }
                }
                None => {
                    sh.no_malformed(name, &req.name, "/etc/shadow")?;
                    sh.push(format!(
                        "{}:{}:{}:0:99999:7:::",
                        req.name,
                        req.password.as_deref().unwrap_or("!"),
                        set.today
                    ))
                }
            }
        }
    }

    let mut groups: Vec<&str> = req.groups.iter().map(String::as_str).collect();
    if req.admin && account.uid != 0 {
        match &set.admin_group {
            Some(g) => groups.push(g),
            None => warnings.push(format!(
                "user {}: the image has neither a sudo nor a wheel group; not made an administrator",
                req.name
            )),
        }
    }
    let mut seen: Vec<&str> = Vec::new();
    for g in groups {
        if g == req.name || seen.contains(&g) {
            continue;
        }
        seen.push(g);
        let Some(i) = gr.find_group(g.as_bytes()) else {
            warnings.push(format!("user {}: group {g} does not exist in the image; not added to it", req.name));
            continue;
        };
        gr.add_member(i, 3, name);
        if let Some(gs) = gs.as_mut() {
            if let Some(j) = gs.find_named(g.as_bytes(), 1) {
                gs.add_member(j, 3, name);
            }
        }
    }

    db.passwd = pw.bytes();
    db.group = gr.bytes();
    if let Some(sh) = sh {
        db.shadow = Some(sh.bytes());
    }
    if let Some(gs) = gs {
        db.gshadow = Some(gs.bytes());
    }
    Ok(account)
}

fn num(field: &[u8]) -> Option<u32> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// The lines of a colon-separated database, rejoined exactly as read.
struct Table {
    lines: Vec<Vec<u8>>,
    trailing_newline: bool,
}

impl Table {
    fn parse(text: &[u8]) -> Table {
        let trailing_newline = text.ends_with(b"\n");
        let body = if trailing_newline { &text[..text.len() - 1] } else { text };
        let lines = if text.is_empty() {
            Vec::new()
        } else {
            body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
        };
        Table { lines, trailing_newline }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.lines.join(&b'\n');
        if self.trailing_newline && !self.lines.is_empty() {
            out.push(b'\n');
        }
        out
    }

    fn fields(&self, i: usize) -> Vec<&[u8]> {
        self.lines[i].split(|&b| b == b':').collect()
    }

    fn push(&mut self, line: String) {
        self.lines.push(line.into_bytes());
        self.trailing_newline = true;
    }

    /// The first line named `name` with at least `min` fields (NIS lines excluded).
    fn find_named(&self, name: &[u8], min: usize) -> Option<usize> {
        (0..self.lines.len()).find(|&i| {
            let f = self.fields(i);
            f.len() >= min && f[0] == name && !name.is_empty()
        })
    }

    /// Before adding a line named `name`: no line of that name may be there
    /// already, well-formed or not (a malformed one was not found as the entry).
    fn no_malformed(&self, name: &[u8], user: &str, file: &str) -> Result<(), AccountsError> {
        match (0..self.lines.len()).find(|&i| self.fields(i)[0] == name) {
            Some(i) => Err(AccountsError::Malformed {
                name: user.to_string(),
                file: file.to_string(),
                line: i + 1,
            }),
            None => Ok(()),
        }
    }

    fn find_passwd(&self, name: &[u8]) -> Option<usize> {
        self.find_named(name, 7).filter(|&i| {
            let f = self.fields(i);
            num(f[2]).is_some() && num(f[3]).is_some()
        })
    }

    fn find_group(&self, name: &[u8]) -> Option<usize> {
        self.find_named(name, 4).filter(|&i| num(self.fields(i)[2]).is_some())
    }

    fn find_gid(&self, gid: u32) -> Option<usize> {
        (0..self.lines.len()).find(|&i| {
            let f = self.fields(i);
            f.len() >= 4 && num(f[2]) == Some(gid)
        })
    }

    /// Every number in field `k` of any line, well-formed or not.
    fn numbers(&self, k: usize) -> Vec<u32> {
        (0..self.lines.len())
            .filter_map(|i| self.fields(i).get(k).and_then(|f| num(f)))
            .collect()
    }

    fn owner_of(&self, uid: u32) -> Option<String> {
        (0..self.lines.len()).find_map(|i| {
            let f = self.fields(i);
            (f.get(2).and_then(|x| num(x)) == Some(uid)).then(|| String::from_utf8_lossy(f[0]).into_owned())
        })
    }

    /// Replaces field `k` of line `i` (padding with empty fields when short).
    fn set_field(&mut self, i: usize, k: usize, value: &[u8]) {
        let mut f: Vec<Vec<u8>> = self.fields(i).into_iter().map(<[u8]>::to_vec).collect();
        while f.len() <= k {
            f.push(Vec::new());
        }
        f[k] = value.to_vec();
        self.lines[i] = f.join(&b':');
    }

    /// Adds `member` to the comma-separated list in field `k` of line `i`.
    fn add_member(&mut self, i: usize, k: usize, member: &[u8]) {
        let f = self.fields(i);
        let list = f.get(k).copied().unwrap_or(b"");
        let (list, cr) = match list.strip_suffix(b"\r") {
            Some(l) if k + 1 >= f.len() => (l, true),
            _ => (list, false),
        };
        if list.split(|&b| b == b',').any(|m| m == member) {
            return;
        }
        let mut new = list.to_vec();
        if !new.is_empty() {
            new.push(b',');
        }
        new.extend_from_slice(member);
        if cr {
            new.push(b'\r');
        }
        self.set_field(i, k, &new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n\
this line is malformed\n\
debian:x:1000:1000:Debian:/home/debian:/bin/bash\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const DEB_SHADOW: &str = "root:*:19000:0:99999:7:::\n\
daemon:*:19000:0:99999:7:::\n\
sshd:!:19000::::::\n\
debian:$6$old$hash:19000:0:99999:7:::\n\
nobody:*:19000:0:99999:7:::\n";
    const DEB_GROUP: &str = "root:x:0:\n\
shadow:x:42:\n\
sudo:x:27:debian\n\
adm:x:4:\n\
debian:x:1000:\n\
users:x:100:\n\
nogroup:x:65534:\n";
    const DEB_GSHADOW: &str = "root:*::\n\
shadow:*::\n\
sudo:*::debian\n\
adm:*::\n\
debian:!::\n\
nogroup:*::\n";

    fn deb() -> Databases {
        Databases {
            passwd: DEB_PASSWD.into(),
            shadow: Some(DEB_SHADOW.into()),
            group: DEB_GROUP.into(),
            gshadow: Some(DEB_GSHADOW.into()),
        }
    }

    fn settings() -> Settings {
        Settings {
            default_shell: "/bin/bash".into(),
            admin_group: Some("sudo".into()),
            today: 20000,
        }
    }

    fn s(b: &Option<Vec<u8>>) -> &str {
        std::str::from_utf8(b.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn adds_a_user_keeping_every_other_line() {
        let mut db = deb();
        let mut w = Vec::new();
        let req = UserRequest {
            name: "alice".into(),
            password: Some("$y$j9T$salt$hash".into()),
            groups: vec!["adm".into(), "missing".into()],
            admin: true,
            ..Default::default()
        };
        let a = ensure_user(&mut db, &req, &settings(), &mut w).unwrap();
        assert_eq!(
            (a.uid, a.gid, a.home.as_str(), a.created, a.system),
            (1001, 1001, "/home/alice", true, false)
        );
        assert_eq!(
            String::from_utf8(db.passwd.clone()).unwrap(),
            format!("{DEB_PASSWD}alice:x:1001:1001::/home/alice:/bin/bash\n")
        );
        assert_eq!(s(&db.shadow), format!("{DEB_SHADOW}alice:$y$j9T$salt$hash:20000:0:99999:7:::\n"));
        assert_eq!(
            String::from_utf8(db.group.clone()).unwrap(),
            "root:x:0:\nshadow:x:42:\nsudo:x:27:debian,alice\nadm:x:4:alice\ndebian:x:1000:\nusers:x:100:\nnogroup:x:65534:\nalice:x:1001:\n"
        );
        assert_eq!(
            s(&db.gshadow),
            "root:*::\nshadow:*::\nsudo:*::debian,alice\nadm:*::alice\ndebian:!::\nnogroup:*::\nalice:!::\n"
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("missing"));
        // Idempotent: a second run changes nothing.
        let before = db.clone();
        ensure_user(&mut db, &req, &settings(), &mut Vec::new()).unwrap();
        assert_eq!(db, before);
    }

    #[test]
    fn updates_an_existing_regular_user() {
        let mut db = deb();
        let req = UserRequest {
            name: "debian".into(),
            password: Some("$6$new$hash".into()),
            shell: Some("/bin/zsh".into()),
            ..Default::default()
        };
        let a = ensure_user(&mut db, &req, &settings(), &mut Vec::new()).unwrap();
        assert_eq!((a.uid, a.created), (1000, false));
        assert!(String::from_utf8(db.passwd.clone())
            .unwrap()
            .contains("\ndebian:x:1000:1000:Debian:/home/debian:/bin/zsh\n"));
        assert!(s(&db.shadow).contains("\ndebian:$6$new$hash:20000:0:99999:7:::\n"));
        // Without a password the existing hash stays.
        let mut db2 = deb();
        ensure_user(
            &mut db2,
            &UserRequest {
                name: "debian".into(),
                ..Default::default()
            },
            &settings(),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(db2, deb());
        let e = ensure_user(
            &mut deb(),
            &UserRequest {
                name: "debian".into(),
                uid: Some(1005),
                ..Default::default()
            },
            &settings(),
            &mut Vec::new(),
        );
        assert_eq!(
            e,
            Err(AccountsError::UidMismatch {
                name: "debian".into(),
                have: 1000,
                want: 1005
            })
        );
    }

    #[test]
    fn system_accounts_get_groups_only() {
        let mut db = deb();
        let mut w = Vec::new();
        let req = UserRequest {
            name: "root".into(),
            password: Some("$6$x$y".into()),
            admin: true,
            groups: vec!["adm".into()],
            ..Default::default()
        };
        let a = ensure_user(&mut db, &req, &settings(), &mut w).unwrap();
        assert!(a.system);
        assert_eq!(a.home, "/root");
        assert_eq!(db.passwd, deb().passwd);
        assert_eq!(db.shadow, deb().shadow);
        assert!(String::from_utf8(db.group.clone()).unwrap().contains("\nadm:x:4:root\n"));
        assert!(String::from_utf8(db.group.clone()).unwrap().contains("\nsudo:x:27:debian\n"));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn rhel_like_without_gshadow_shadow_group_or_trailing_newline() {
        let mut db = Databases {
            passwd: b"root:x:0:0:root:/root:/bin/bash\r\n+::::::\ncentos:x:1000:1000::/home/centos:/bin/bash".to_vec(),
            shadow: Some(b"root:!!:18000:0:99999:7:::\ncentos:!!:18000:0:99999:7:::".to_vec()),
            group: b"root:x:0:\nwheel:x:10:centos\ncentos:x:1000:\nbroken\n1001:x\n".to_vec(),
            gshadow: None,
        };
        let set = Settings {
            default_shell: "/bin/sh".into(),
            admin_group: Some("wheel".into()),
            today: 1,
        };
        let req = UserRequest {
            name: "ops".into(),
            admin: true,
            ..Default::default()
        };
        let a = ensure_user(&mut db, &req, &set, &mut Vec::new()).unwrap();
        assert_eq!((a.uid, a.gid), (1001, 1001));
        assert_eq!(
            String::from_utf8(db.passwd).unwrap(),
            "root:x:0:0:root:/root:/bin/bash\r\n+::::::\ncentos:x:1000:1000::/home/centos:/bin/bash\nops:x:1001:1001::/home/ops:/bin/sh\n"
        );
        assert_eq!(
            s(&db.shadow),
            "root:!!:18000:0:99999:7:::\ncentos:!!:18000:0:99999:7:::\nops:!:1:0:99999:7:::\n"
        );
        assert_eq!(
            String::from_utf8(db.group).unwrap(),
            "root:x:0:\nwheel:x:10:centos,ops\ncentos:x:1000:\nbroken\n1001:x\nops:x:1001:\n"
        );
        assert!(db.gshadow.is_none());
    }

    #[test]
    fn uids_are_chosen_deterministically_and_checked() {
        let mut db = Databases {
            passwd: b"a:x:1000:1000::/h:/s\nb:x:1002:1002::/h:/s\n".to_vec(),
            shadow: None,
            group: b"a:x:1000:\nb:x:1002:\nc:x:1001:\n".to_vec(),
            gshadow: None,
        };
        let set = settings();
        let a = ensure_user(
            &mut db,
            &UserRequest {
                name: "new".into(),
                ..Default::default()
            },
            &set,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!((a.uid, a.gid), (1003, 1003));
        assert!(String::from_utf8(db.passwd.clone())
            .unwrap()
            .ends_with("new:!:1003:1003::/home/new:/bin/bash\n"));
        let e = ensure_user(
            &mut db,
            &UserRequest {
                name: "x".into(),
                uid: Some(1002),
                ..Default::default()
            },
            &set,
            &mut Vec::new(),
        );
        assert_eq!(
            e,
            Err(AccountsError::UidTaken {
                name: "x".into(),
                uid: 1002,
                owner: "b".into()
            })
        );
        let e = ensure_user(
            &mut db,
            &UserRequest {
                name: "x".into(),
                uid: Some(5),
                ..Default::default()
            },
            &set,
            &mut Vec::new(),
        );
        assert!(matches!(e, Err(AccountsError::UidOutOfRange { .. })));
        // A uid whose gid is taken gets another private gid.
        let a = ensure_user(
            &mut db,
            &UserRequest {
                name: "y".into(),
                uid: Some(1001),
                ..Default::default()
            },
            &set,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!((a.uid, a.gid), (1001, 1004));
        for bad in ["", "a/b", "..", "-x", "a:b", "a b", "a\nb"] {
            let e = ensure_user(
                &mut db,
                &UserRequest {
                    name: bad.into(),
                    ..Default::default()
                },
                &set,
                &mut Vec::new(),
            );
            assert!(matches!(e, Err(AccountsError::BadName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn an_interrupted_edit_converges() {
        // passwd written, the other files not: the next run completes them the same way.
        let req = UserRequest {
            name: "alice".into(),
            password: Some("$y$h".into()),
            admin: true,
            ..Default::default()
        };
        let mut clean = deb();
        ensure_user(&mut clean, &req, &settings(), &mut Vec::new()).unwrap();
        let mut partial = deb();
        partial.passwd = clean.passwd.clone();
        ensure_user(&mut partial, &req, &settings(), &mut Vec::new()).unwrap();
        assert_eq!(partial, clean);
        let mut partial = deb();
        partial.passwd = clean.passwd.clone();
        partial.group = clean.group.clone();
        ensure_user(&mut partial, &req, &settings(), &mut Vec::new()).unwrap();
        assert_eq!(partial, clean);
    }

    #[test]
    fn lookups() {
        assert_eq!(lookup(DEB_PASSWD.as_bytes(), "debian").unwrap().home, "/home/debian");
        assert!(lookup(DEB_PASSWD.as_bytes(), "this line is malformed").is_none());
        assert_eq!(group_gid(DEB_GROUP.as_bytes(), "shadow"), Some(42));
        assert_eq!(group_gid(b"", "shadow"), None);
    }
    /// A line of the user's (or its group's) name that is not a well-formed
    /// entry must not make the editor add a second line of that name: two
    /// `alice` lines (one with uid 0, say, or an empty password field) are
    /// read differently by each tool. It is refused, naming the file and line.
    #[test]
    fn a_malformed_line_of_the_same_name_is_refused_not_duplicated() {
        let req = UserRequest {
            name: "alice".into(),
            password: Some("$y$j9T$salt$hash".into()),
            ..Default::default()
        };
        let with = |file: &str, line: &str| {
            let mut db = deb();
            let add = |t: &mut Vec<u8>| t.extend_from_slice(format!("{line}\n").as_bytes());
            match file {
                "passwd" => add(&mut db.passwd),
                "group" => add(&mut db.group),
                "shadow" => add(db.shadow.as_mut().unwrap()),
                _ => add(db.gshadow.as_mut().unwrap()),
            }
            db
        };
        for (file, line) in [
            ("passwd", "alice:x:1001:1001:Alice:/home/alice"),
            ("passwd", "alice:x:10o1:1001::/home/alice:/bin/bash"),
            ("passwd", "alice"),
            ("group", "alice:x:"),
            ("group", "alice:x:1x:"),
            ("shadow", "alice"),
            ("gshadow", "alice:!:"),
        ] {
            let mut db = with(file, line);
            let before = db.clone();
            let e = ensure_user(&mut db, &req, &settings(), &mut Vec::new()).unwrap_err();
            assert_eq!(
                e,
                AccountsError::Malformed {
                    name: "alice".into(),
                    file: format!("/etc/{file}"),
                    line: before_line(&before, file),
                },
                "{file}: {line:?}"
            );
            assert!(e.to_string().contains(&format!("/etc/{file} line")), "{e}");
            assert_eq!(db, before, "{file}: {line:?}: nothing is edited");
        }
        // Lines that only look alike are other entries: NIS, another name, a comment.
        for (file, line) in [("passwd", "+alice"), ("passwd", "alicex:x:1"), ("group", "#alice:x:1001:")] {
            let mut db = with(file, line);
            ensure_user(&mut db, &req, &settings(), &mut Vec::new()).unwrap();
            let count = |t: &[u8]| t.split(|&b| b == b'\n').filter(|l| l.starts_with(b"alice:")).count();
            assert_eq!(count(&db.passwd), 1, "{file}: {line:?}");
            assert_eq!(count(&db.group), 1, "{file}: {line:?}");
            assert_eq!(count(db.shadow.as_deref().unwrap()), 1, "{file}: {line:?}");
            assert_eq!(count(db.gshadow.as_deref().unwrap()), 1, "{file}: {line:?}");
        }
    }

    /// The 1-based line number of the last line of `file` in `db`.
    fn before_line(db: &Databases, file: &str) -> usize {
        let t = match file {
            "passwd" => &db.passwd,
            "group" => &db.group,
            "shadow" => db.shadow.as_ref().unwrap(),
            _ => db.gshadow.as_ref().unwrap(),
        };
        t.iter().filter(|&&b| b == b'\n').count()
    }
}
