//! The kernel module index: parses `modules.dep`, `modules.alias`,
//! `modules.builtin` (and `modules.builtin.alias`) of `/lib/modules/<release>`,
//! resolves names and modaliases to modules (fnmatch-style globs, matched
//! without exponential blow-up) and orders a set of modules so that every module
//! comes after its dependencies. Pure apart from [`ModIndex::load`].

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;

/// Why [`ModIndex::load_order`] could not order a set of modules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModError {
    /// Names neither in `modules.dep` nor built in.
    #[error("unknown kernel module(s): {}", .0.join(", "))]
    Unknown(Vec<String>),
    /// A dependency cycle, listed from a module back to itself.
    #[error("kernel module dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

#[derive(Debug, Clone)]
struct Module {
    path: String,
    deps: Vec<String>,
}

/// The parsed module index of one kernel release.
#[derive(Debug, Clone, Default)]
pub struct ModIndex {
    modules: HashMap<String, Module>,
    /// From `modules.alias`, in file order.
    aliases: AliasTable,
    builtin: HashSet<String>,
    /// From `modules.builtin.alias`.
    builtin_aliases: AliasTable,
}

/// `alias PATTERN MODULE` lines, stored compactly: the patterns back to back in
/// one string, the module names once per run of lines naming the same module (as
/// depmod groups them). Parsing allocates a few times per module instead of
/// thrice per line, which shows at boot under emulation (musl's malloc).
#[derive(Debug, Clone, Default)]
struct AliasTable {
    /// The patterns, normalised like the queries (see `normalize_alias`).
    patterns: String,
    entries: Vec<AliasEntry>,
    modules: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct AliasEntry {
    /// The pattern is `patterns[start..end]`.
    start: u32,
    end: u32,
    /// Length of the pattern's literal start.
    prefix: u32,
    /// Index into `modules`.
    module: u32,
}

impl AliasTable {
    /// Parses `alias PATTERN MODULE` lines; anything else is skipped.
    fn parse(text: &str) -> AliasTable {
        let mut t = AliasTable::default();
        t.patterns.reserve(text.len() / 2);
        let mut last: Option<(&str, u32)> = None;
        for line in text.split('\n') {
            let Some(["alias", pattern, module]) = words::<3>(line) else {
                continue;
            };
            let module = match last {
                Some((raw, i)) if raw == module => i,
                _ => {
                    t.modules.push(normalize_name(module));
                    let i = (t.modules.len() - 1) as u32;
                    last = Some((module, i));
                    i
                }
            };
            let start = t.patterns.len();
            push_normalized_alias(&mut t.patterns, pattern);
            let pattern = t.patterns.get(start..).unwrap_or_default();
            let prefix = literal_prefix_len(pattern);
            t.entries.push(AliasEntry {
                start: start as u32,
                end: t.patterns.len() as u32,
                prefix: prefix as u32,
                module,
            });
        }
        t
    }

    fn extend(&mut self, other: AliasTable) {
        let (base, mods) = (self.patterns.len() as u32, self.modules.len() as u32);
        self.patterns.push_str(&other.patterns);
        self.modules.extend(other.modules);
        self.entries.extend(other.entries.into_iter().map(|e| AliasEntry {
            start: e.start + base,
            end: e.end + base,
            module: e.module + mods,
            ..e
        }));
    }

    /// The modules of the patterns matching `alias` (normalised), in file order.
    fn matching<'a>(&'a self, alias: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries.iter().filter_map(move |e| {
            let pattern = self.patterns.get(e.start as usize..e.end as usize)?;
            let lit = pattern.as_bytes().get(..e.prefix as usize)?;
            (alias.as_bytes().starts_with(lit) && glob_match(pattern, alias))
                .then(|| self.modules.get(e.module as usize).map(String::as_str))
                .flatten()
        })
    }
}

/// A module's name from a name or a path: the file name without `.ko`,
/// `.ko.xz`, `.ko.zst` or `.ko.gz`, with `-` turned into `_`.
pub fn normalize_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|suffix| base.strip_suffix(suffix))
        .unwrap_or(base);
    stem.replace('-', "_")
}

/// An alias as modprobe compares it: `-` → `_` except inside `[...]` classes.
fn normalize_alias(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_normalized_alias(&mut out, s);
    out
}

/// [`normalize_alias`] appending to `out`.
fn push_normalized_alias(out: &mut String, s: &str) {
    if !s.contains('-') {
        out.push_str(s);
        return;
    }
    let mut in_class = false;
    for c in s.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
}

/// The whitespace-separated words of `line` when there are exactly `N`. Works on
/// bytes: the index files are ASCII, and this runs at boot (the init is built
/// for size, where iterator adaptors per character cost).
fn words<const N: usize>(line: &str) -> Option<[&str; N]> {
    let b = line.as_bytes();
    let mut out = [""; N];
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        if matches!(b[i], b' ' | b'\t' | b'\r') {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'\r') {
            i += 1;
        }
        *out.get_mut(n)? = line.get(start..i)?;
        n += 1;
    }
    (n == N).then_some(out)
}

/// Parses one `[...]` class starting just after the `[` at `pat[start]`.
/// Returns whether `c` is in it and the index just after the closing `]`, or
/// `None` when the class is not closed (then `[` is an ordinary character).
fn match_class(pat: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start;
    let negate = matches!(pat.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let mut lo = *pat.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if lo == b'\\' {
            i += 1;
            lo = *pat.get(i)?;
        }
        i += 1;
        let mut hi = lo;
        if pat.get(i) == Some(&b'-') && pat.get(i + 1).is_some_and(|&n| n != b']') {
            i += 1;
            hi = *pat.get(i)?;
            if hi == b'\\' {
                i += 1;
                hi = *pat.get(i)?;
            }
            i += 1;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
    }
}

/// fnmatch(3)-style matching (no flags): `*`, `?`, `[...]` with ranges and
/// `!`/`^` negation, `\` escapes. Works on bytes (module aliases are ASCII), does
/// not allocate, and is iterative with a single backtrack point, so it runs in
/// O(pattern × text) whatever the number of `*`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pat, txt) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = txt.get(t) {
        // Does the token at `p` match `c`? If so, where does the pattern continue?
        let step = match pat.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match match_class(pat, p + 1, c) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                None => (c == b'[').then_some(p + 1),
            },
            Some(b'\\') => match pat.get(p + 1) {
                Some(&e) => (e == c).then_some(p + 2),
                None => (c == b'\\').then_some(p + 1),
            },
            Some(&l) => (l == c).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((sp, st))) => {
                // Let the last `*` swallow one more character and retry.
                star = Some((sp, st + 1));
                p = sp;
                t = st + 1;
            }
            (None, None) => return false,
        }
    }
    while pat.get(p) == Some(&b'*') {
        p += 1;
    }
    p == pat.len()
}

/// The literal start of a pattern (before any of `*?[\`), for a cheap pre-check.
fn literal_prefix_len(pattern: &str) -> usize {
    pattern
        .bytes()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len())
}

impl ModIndex {
    /// Builds the index from the texts of `modules.dep`, `modules.alias` and
    /// `modules.builtin`. Malformed lines are skipped.
    pub fn parse(dep: &str, alias: &str, builtin: &str) -> ModIndex {
        let mut idx = ModIndex::default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() || path.contains(char::is_whitespace) {
                continue;
            }
            let name = normalize_name(path);
            if name.is_empty() {
                continue;
            }
            let deps = deps
                .split_whitespace()
                .map(normalize_name)
                .filter(|d| !d.is_empty());
            idx.modules.entry(name).or_insert(Module {
                path: path.to_string(),
                deps: deps.collect(),
            });
        }
        idx.aliases = AliasTable::parse(alias);
        for line in builtin.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            idx.builtin.insert(normalize_name(line));
        }
        idx
    }

    /// Adds the aliases of built-in modules (`modules.builtin.alias`), so that a
    /// modalias served by a built-in driver resolves to it instead of nothing.
    pub fn add_builtin_aliases(&mut self, text: &str) {
        self.builtin_aliases.extend(AliasTable::parse(text));
    }

    /// Reads `modules.dep` (required), `modules.alias`, `modules.builtin` and
    /// `modules.builtin.alias` (each optional) from `dir`.
    pub fn load(dir: &Path) -> io::Result<ModIndex> {
        let read = |name: &str, required: bool| -> io::Result<String> {
            match fs::read(dir.join(name)) {
                Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(e),
            }
        };
        let dep = read("modules.dep", true)?;
        let alias = read("modules.alias", false)?;
        let builtin = read("modules.builtin", false)?;
        let builtin_alias = read("modules.builtin.alias", false)?;
        let mut idx = ModIndex::parse(&dep, &alias, &builtin);
        idx.add_builtin_aliases(&builtin_alias);
        Ok(idx)
    }

    /// The names of the loadable modules in `modules.dep`, in no particular order.
    pub fn module_names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// Number of loadable modules in `modules.dep`.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// True when `modules.dep` listed no module.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The module's path as written in `modules.dep` (relative to the release
    /// directory), for a loadable (not built-in) module.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.modules
            .get(&normalize_name(name))
            .map(|m| m.path.as_str())
    }

    /// The dependencies `modules.dep` lists for the module (depmod writes the
    /// whole transitive set), as names; empty for unknown or built-in modules.
    pub fn deps_of(&self, name: &str) -> &[String] {
        self.modules
            .get(&normalize_name(name))
            .map_or(&[], |m| m.deps.as_slice())
    }

    /// True when the module is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    /// True when the module is loadable or built in.
    pub fn is_known(&self, name: &str) -> bool {
        let n = normalize_name(name);
        self.modules.contains_key(&n) || self.builtin.contains(&n)
    }

    /// The modules a name or alias stands for: the name itself (normalised) when it
    /// is a loadable or built-in module, else every module whose alias pattern
    /// matches (`modules.alias`, then `modules.builtin.alias`), de-duplicated, in
    /// file order. Empty when nothing matches.
    pub fn resolve(&self, name_or_alias: &str) -> Vec<String> {
        let query = name_or_alias.trim();
        if query.is_empty() {
            return Vec::new();
        }
        // Module names never contain ':'; modaliases nearly always do.
        if !query.contains(':') {
            let name = normalize_name(query);
            if self.modules.contains_key(&name) || self.builtin.contains(&name) {
                return vec![name];
            }
        }
        let alias = normalize_alias(query);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for m in self.aliases.matching(&alias).chain(self.builtin_aliases.matching(&alias)) {
            if seen.insert(m) {
                out.push(m.to_string());
            }
        }
        out
    }

    /// The transitive closure of `names` (module names, normalised here) in load
    /// order: every module after all of its dependencies; built-in modules are
    /// omitted. Unknown names (including dependencies without their own
    /// `modules.dep` line) and cycles are errors.
    pub fn load_order(&self, names: &[String]) -> Result<Vec<String>, ModError> {
        let unknown: Vec<String> = names
            .iter()
            .filter(|n| !self.is_known(n))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ModError::Unknown(unknown));
        }
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        let mut marks: HashMap<&str, Mark> = HashMap::new();
        let mut order = Vec::new();
        let mut missing = Vec::new();
        for root in names {
            let root = normalize_name(root);
            let Some((root_name, _)) = self.modules.get_key_value(&root) else {
                continue; // built in
            };
            if marks.contains_key(root_name.as_str()) {
                continue;
            }
            // Depth-first, explicit stack of (module, index of the next dep to visit).
            marks.insert(root_name, Mark::Visiting);
            let mut stack: Vec<(&str, usize)> = vec![(root_name, 0)];
            while let Some(&mut (name, ref mut next)) = stack.last_mut() {
                let deps = self
                    .modules
                    .get(name)
                    .map_or(&[][..], |m| m.deps.as_slice());
                // modprobe loads the listed deps from last to first; do the same.
                let Some(dep) = deps.len().checked_sub(*next + 1).and_then(|i| deps.get(i)) else {
                    marks.insert(name, Mark::Done);
                    order.push(name.to_string());
                    stack.pop();
                    continue;
                };
                *next += 1;
                let Some((dep_name, _)) = self.modules.get_key_value(dep) else {
                    if !self.builtin.contains(dep) && !missing.contains(dep) {
                        missing.push(dep.clone());
                    }
                    continue;
                };
                match marks.get(dep_name.as_str()) {
                    Some(Mark::Done) => {}
                    Some(Mark::Visiting) => {
                        let from = stack.iter().position(|(n, _)| *n == dep_name.as_str());
                        let mut cycle: Vec<String> = stack
                            .get(from.unwrap_or(0)..)
                            .unwrap_or(&[])
                            .iter()
                            .map(|(n, _)| n.to_string())
                            .collect();
                        cycle.push(dep_name.clone());
                        return Err(ModError::Cycle(cycle));
                    }
                    None => {
                        marks.insert(dep_name, Mark::Visiting);
                        stack.push((dep_name, 0));
                    }
                }
            }
        }
        if !missing.is_empty() {
            return Err(ModError::Unknown(missing));
        }
        Ok(order)
    }
}

/// The index files of a subset of a module tree, in depmod's text formats (so
/// [`ModIndex::parse`] and other tools read them as they read the full ones):
/// the `modules.dep` lines of the module files in `paths` (paths as `modules.dep`
/// writes them), and the `modules.alias` lines naming those modules plus its
/// comment lines. Returns them with the names of the modules kept. The initramfs
/// builder ships an index trimmed this way, so that the boot parses a few
/// kilobytes instead of the whole kernel's index.
pub fn subset_index_text(dep: &str, alias: &str, paths: &HashSet<String>) -> (String, String, HashSet<String>) {
    let mut names = HashSet::new();
    let mut d = String::new();
    for line in dep.lines() {
        let Some((path, _)) = line.split_once(':') else { continue };
        if paths.contains(path.trim()) {
            d.push_str(line);
            d.push('\n');
            names.insert(normalize_name(path.trim()));
        }
    }
    let mut a = String::new();
    for line in alias.lines() {
        let keep = if line.starts_with('#') {
            true
        } else {
            let mut w = line.split_whitespace();
            w.next() == Some("alias") && w.nth(1).is_some_and(|m| names.contains(&normalize_name(m)))
        };
        if keep {
            a.push_str(line);
            a.push('\n');
        }
    }
    (d, a, names)
}
