//! The layering ARCHITECTURE.md promises: no import cycle between the top-level modules
//! of `src/`, nor between the sibling files of one module directory (a parent `mod.rs`
//! and its children excepted). Read from the source text: `crate::NAME` and
//! `super::NAME` paths outside comments and unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The code of a source file that counts: no comment lines, no `mod tests`.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow `prefix` in `text`.
fn after<'a>(text: &'a str, prefix: &str) -> BTreeSet<&'a str> {
    text.match_indices(prefix)
        .filter(|(i, _)| {
            // A whole path segment: not `xcrate::` or `a::super::`.
            !text[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        })
        .map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// A cycle of `graph`, if it has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn modules_import_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for path in files(&src) {
        let rel = path.strip_prefix(&src).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        if matches!(parts[0].as_str(), "bin" | "main" | "lib") {
            continue;
        }
        let text = code(&path);
        let module = &parts[0];
        let uses = after(&text, "crate::");
        top.entry(module.clone()).or_default().extend(
            uses.iter()
                .filter(|u| *u != module)
                .map(|u| (*u).to_owned()),
        );
        if parts.len() == 2 && parts[1] != "mod" {
            let dir = src.join(module);
            let is_sibling =
                |name: &&&str| **name != parts[1] && dir.join(format!("{name}.rs")).exists();
            let mut named: BTreeSet<&str> = after(&text, "super::");
            named.extend(after(&text, &format!("crate::{module}::")));
            siblings
                .entry(module.clone())
                .or_default()
                .entry(parts[1].clone())
                .or_default()
                .extend(named.iter().filter(is_sibling).map(|s| (*s).to_owned()));
        }
    }
    assert!(top.len() > 10, "the scan found the modules: {top:?}");
    assert_eq!(cycle(&top), None, "top-level modules import each other");
    for (module, graph) in &siblings {
        assert_eq!(
            cycle(graph),
            None,
            "files of src/{module}/ import each other"
        );
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry((*a).into()).or_default().insert((*b).into());
        }
        g
    };
    assert_eq!(
        cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        after(
            "use crate::x::y; crate::z; notcrate::w; a::super::q; super::s",
            "crate::"
        ),
        ["x", "z"].into_iter().collect()
    );
}
