//! The daemons' modules import each other in one direction only: no cycle among the
//! coordinator's modules, nor the signer's (a cycle is how "one file per concern" rots
//! back into one knot). Reads the sources: `crate::MODULE` paths outside comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .expect("src dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().to_string();
            let m = name.strip_suffix(".rs")?.to_string();
            (m != "lib").then_some(m)
        })
        .collect();
    modules
        .iter()
        .map(|m| {
            let text = std::fs::read_to_string(src.join(format!("{m}.rs"))).expect("module");
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            let deps = code
                .match_indices("crate::")
                .filter_map(|(i, _)| {
                    let rest = &code[i + "crate::".len()..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let dep = &rest[..end];
                    (dep != m && modules.contains(dep)).then(|| dep.to_string())
                })
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

/// A cycle in `g`, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut c = path[at..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

#[test]
fn the_daemons_modules_import_each_other_in_one_direction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for krate in ["coordinator", "signer"] {
        let src = root.join("..").join(krate).join("src");
        let g = graph(&src);
        assert!(g.len() > 5, "{krate}: modules found: {g:?}");
        if let Some(c) = cycle(&g) {
            panic!("{krate}: import cycle {}", c.join(" -> "));
        }
    }
}

#[test]
fn a_cycle_is_found() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycle(&g).map(|c| c.len()), Some(4));
}
