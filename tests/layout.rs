//! The shape of `src/`: no import circle between modules, folders that stack one
//! way (a module uses its own layer and those below it, never one above), and no
//! file too long to read. The graph is read from the source text: every
//! `crate::…` path (in `use` lines, grouped `use crate::{…}`, and inline paths)
//! and `self::…` path, resolved to the longest module that exists as a file.
//!
//! (cargo-modules can draw the same graph, but it builds on rust-analyzer and
//! takes minutes to install; this reads ~50 files in milliseconds.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom: a module may use its own layer and those below.
const LAYERS: &[(&str, &[&str])] = &[
    ("base", &["log", "error", "util", "layout"]),
    ("modules", &["modules"]),
    ("sys", &["sys"]),
    ("trust", &["trust"]),
    ("slots", &["slots"]),
    ("config", &["config"]),
    ("firstboot", &["firstboot"]),
    ("cmdline", &["cmdline"]),
    ("boot", &["boot"]),
    ("operator", &["ctl", "runtime", "remote", "image"]),
];

/// Longest a file in src/ may be (the issue's "about 900 lines").
const MAX_LINES: usize = 950;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library module (not the binaries): module path → file.
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if name == "bin" && prefix.is_empty() {
                    continue;
                }
                walk(&p, &join(prefix, &name), out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let m = match name.as_str() {
                    "lib" if prefix.is_empty() => String::new(),
                    "mod" => prefix.to_string(),
                    _ => join(prefix, &name),
                };
                out.insert(m, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src_dir(), "", &mut out);
    out
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}::{b}")
    }
}

/// The code of a file without comments and string literals (so that a path in
/// a doc comment or a message is not an import).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && !(i > 0 && b[i - 1] == b'\'') {
            // A raw string r"…" / r#"…"# or a plain one.
            let hashes = {
                let mut h = 0;
                let mut j = i;
                while j > 0 && b[j - 1] == b'#' {
                    h += 1;
                    j -= 1;
                }
                if j > 0 && b[j - 1] == b'r' {
                    Some(h)
                } else {
                    None
                }
            };
            i += 1;
            match hashes {
                Some(h) => {
                    let end: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', h)).collect();
                    while i < b.len() && !b[i..].starts_with(&end) {
                        i += 1;
                    }
                    i += end.len();
                }
                None => {
                    while i < b.len() && b[i] != b'"' {
                        if b[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                }
            }
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Paths after `crate::` and `self::` (groups expanded), relative to the crate.
fn referenced_paths(code: &str, module: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (root, base) in [("crate::", String::new()), ("self::", module.to_string())] {
        let mut rest = code;
        while let Some(pos) = rest.find(root) {
            let before = rest[..pos].chars().last();
            rest = &rest[pos + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
                continue;
            }
            expand(rest, &base, &mut out);
        }
    }
    out
}

/// Expands one path (`a::b::{c, d::e}`) at the start of `s` into full paths.
fn expand(s: &str, prefix: &str, out: &mut Vec<String>) {
    let ident_end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    if ident_end == 0 {
        if let Some(group) = s.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        expand(group[start..i].trim_start(), prefix, out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(group[start..i].trim_start(), prefix, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        }
        if !prefix.is_empty() {
            out.push(prefix.to_string());
        }
        return;
    }
    let ident = &s[..ident_end];
    let path = join(prefix, ident);
    match s[ident_end..].strip_prefix("::") {
        Some(more) if ident != "self" => expand(more, &path, out),
        _ => out.push(if ident == "self" { prefix.to_string() } else { path }),
    }
}

/// The longest module that `path` names or lies in.
fn resolve(path: &str, modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut p = path.to_string();
    loop {
        if modules.contains_key(&p) {
            return Some(p);
        }
        match p.rfind("::") {
            Some(i) => p.truncate(i),
            None => return None,
        }
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let mut g = BTreeMap::new();
    for (m, file) in &mods {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let mut deps = BTreeSet::new();
        for p in referenced_paths(&code, m) {
            if let Some(target) = resolve(&p, &mods) {
                // A module's own items, and the crate root (macros), are no edge.
                if &target != m && !target.is_empty() {
                    deps.insert(target);
                }
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

fn layer_of(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or("");
    LAYERS
        .iter()
        .position(|(_, tops)| tops.contains(&top))
        .unwrap_or_else(|| panic!("src/{top} is in no layer of tests/layout.rs: add it where it belongs"))
}

/// A cycle through the graph, if there is one (depth-first search).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == d).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_import_circle_in_src() {
    let g = graph();
    assert!(g.len() > 30, "read only {} modules: is src/ where the test thinks?", g.len());
    if let Some(c) = find_cycle(&g) {
        panic!("import circle in src/: {}", c.join(" -> "));
    }
}

#[test]
fn folders_stack_one_way() {
    let mut bad = Vec::new();
    for (m, deps) in graph() {
        if m.is_empty() {
            continue;
        }
        for d in deps {
            if layer_of(&d) > layer_of(&m) {
                bad.push(format!("{m} ({}) uses {d} ({})", LAYERS[layer_of(&m)].0, LAYERS[layer_of(&d)].0));
            }
        }
    }
    assert!(bad.is_empty(), "a module uses a layer above its own:\n  {}", bad.join("\n  "));
}

#[test]
fn no_file_in_src_is_too_long() {
    let mut long = Vec::new();
    for file in modules().values() {
        let n = std::fs::read_to_string(file).unwrap().lines().count();
        if n > MAX_LINES {
            long.push(format!("{} has {n} lines", file.display()));
        }
    }
    assert!(long.is_empty(), "split these where they have seams (at most {MAX_LINES} lines):\n  {}", long.join("\n  "));
}

#[test]
fn every_module_says_what_it_owns() {
    let mut bare = Vec::new();
    for (m, file) in modules() {
        let text = std::fs::read_to_string(&file).unwrap();
        if !text.trim_start().starts_with("//!") {
            bare.push(if m.is_empty() { "lib".to_string() } else { m });
        }
    }
    assert!(bare.is_empty(), "modules without a doc comment at the top: {}", bare.join(", "));
}

// The reader itself: a circle and an upward import it must see.
#[test]
fn the_reader_finds_paths_in_groups_and_inline() {
    let code = code_only(
        "use crate::{a::b, c::{d, e::f}};\nuse self::g as h;\nfn x() { crate::i::j(); let s = \"crate::k\"; } // crate::l",
    );
    let paths = referenced_paths(&code, "m");
    assert_eq!(paths, ["a::b", "c::d", "c::e::f", "i::j", "m::g"]);
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&g), Some(vec!["a".to_string(), "b".to_string(), "a".to_string()]));
}
