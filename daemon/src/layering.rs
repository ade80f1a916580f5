//! The crate's layers, written down once, and the test that keeps dependencies pointing down them.
//!
//! Each top-level module sits on one layer; a module may use modules of lower layers only. Leaf types
//! that several layers share live in [`crate::domain`] (or in the lowest module that owns them), and a
//! module owns its settings: [`crate::config`] assembles them, it never lends constants back down.
//! The test reads the sources (comments stripped) for `crate::<module>` paths, and `super::<module>`
//! paths that climb to the crate root, and fails on any edge that points sideways or up.

/// Layer of each top-level module, lowest first.
pub const LAYERS: &[(&str, u8)] = &[
    // Leaves: time, validated shared types, the service manager's protocol.
    ("clock", 0),
    ("domain", 0),
    ("systemd", 0),
    // Pure cores.
    ("scoring", 1),
    ("events", 1),
    ("rounds", 2),
    // Persistence.
    ("store", 3),
    // Resources, each owning its settings.
    ("gpu", 4),
    ("challenges", 4),
    ("analysis", 5),
    ("runtime", 5),
    // Other hosts' GPUs, through Ray's Jobs API.
    ("cluster", 5),
    // Configuration assembles the settings of everything below it.
    ("config", 6),
    ("logging", 7),
    // The operations the HTTP gateway and the admin plane share.
    ("service", 7),
    // The evaluation engine: the only writer of results.
    ("engine", 8),
    // Front doors.
    ("api", 9),
    ("admin", 9),
    // Start-up, wiring and shutdown.
    ("daemon", 10),
    // `talkheadd models`: a command-line edge beside the daemon (reads the analysis settings' paths).
    ("models", 10),
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn layer(module: &str) -> Option<u8> {
        LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
    }

    /// The source without `//` comments (doc comments name modules of any layer in links).
    fn code_of(source: &str) -> String {
        source
            .lines()
            .map(|line| match line.find("//") {
                // A `//` inside a string literal ("http://...") is rare in paths we care about and
                // only hides text after it; good enough for finding `crate::` paths.
                Some(at) => &line[..at],
                None => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The top-level modules a source file of `module` names, `depth` modules below the crate root.
    fn modules_named(code: &str, depth: usize) -> BTreeSet<String> {
        let ident = |rest: &str| -> String {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let mut named = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let rest = &code[at + "crate::".len()..];
            match rest.strip_prefix('{') {
                // `crate::{engine::X, store}`: the first name of each top-level element.
                Some(group) => named.extend(group_heads(group).into_iter().map(|h| ident(h.trim_start()))),
                None => {
                    named.insert(ident(rest));
                }
            }
        }
        // `super::` chains that climb to the crate root.
        for (at, _) in code.match_indices("super::") {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut rest = &code[at..];
            let mut climbs = 0;
            while let Some(next) = rest.strip_prefix("super::") {
                climbs += 1;
                rest = next;
            }
            if climbs >= depth {
                named.insert(ident(rest));
            }
        }
        named
    }

    /// The top-level elements of a `{...}` use group, `group` starting after its `{`.
    fn group_heads(group: &str) -> Vec<&str> {
        let mut heads = Vec::new();
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    heads.push(&group[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    heads.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        heads
    }

    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    #[test]
    fn every_module_is_on_a_layer_and_uses_only_lower_ones() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        files.sort();
        assert!(
            files.len() > 50,
            "read only {} files under {}",
            files.len(),
            src.display()
        );
        let mut wrong = Vec::new();
        let mut unplaced = BTreeSet::new();
        for file in &files {
            let relative = file.strip_prefix(&src).unwrap_or(file);
            let parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            let top = parts[0].trim_end_matches(".rs").to_owned();
            if matches!(top.as_str(), "lib" | "main" | "layering") {
                continue;
            }
            let Some(own) = layer(&top) else {
                unplaced.insert(top);
                continue;
            };
            // Modules below the crate root: `x.rs` and `x/mod.rs` are one, `x/y.rs` two.
            let depth = parts.len() - usize::from(parts.last().is_some_and(|p| p == "mod.rs"));
            let source = std::fs::read_to_string(file).unwrap_or_default();
            for named in modules_named(&code_of(&source), depth) {
                if named == top || named.is_empty() {
                    continue;
                }
                match layer(&named) {
                    Some(theirs) if theirs < own => {}
                    Some(theirs) => wrong.push(format!(
                        "{} (layer {own}) uses {named} (layer {theirs})",
                        relative.display()
                    )),
                    // Not a module of ours (a macro's `$crate::` or a crate-root item).
                    None => {}
                }
            }
        }
        assert!(
            unplaced.is_empty(),
            "modules missing from layering::LAYERS: {unplaced:?}"
        );
        assert!(
            wrong.is_empty(),
            "dependencies that do not point down the layers (daemon/src/layering.rs):\n{}",
            wrong.join("\n")
        );
    }

    /// Inside the analysis: the decoder and the pixel operations are leaves, the face backends use
    /// them, and the components use the face backends, never the other way round.
    #[test]
    fn the_face_backends_and_the_pixel_leaves_never_use_the_components() {
        let analysis = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/analysis");
        let mut files = Vec::new();
        rust_files(&analysis.join("face"), &mut files);
        files.extend(["image.rs", "decode.rs", "y4m.rs", "mp4.rs"].map(|f| analysis.join(f)));
        let mut wrong = Vec::new();
        for file in &files {
            let code = code_of(&std::fs::read_to_string(file).unwrap_or_default());
            for needle in [
                "analysis::components",
                "super::components",
                "super::super::components",
            ] {
                if code.contains(needle) {
                    wrong.push(format!("{} names {needle}", file.display()));
                }
            }
        }
        assert!(files.len() > 8, "read only {files:?}");
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_scan_sees_crate_paths_and_root_climbing_supers_only() {
        let code = code_of(
            "use crate::store::Store;\n/// [`crate::engine`]\nfn f() { super::super::gpu::x(); super::sibling(); }",
        );
        let named = modules_named(&code, 2);
        assert_eq!(named, BTreeSet::from(["store".to_owned(), "gpu".to_owned()]));
        assert_eq!(
            modules_named("super::events::x", 1),
            BTreeSet::from(["events".to_owned()])
        );
        assert_eq!(
            modules_named("use crate::{engine::{a, b}, store::Store,\n    clock};", 1),
            BTreeSet::from(["engine".to_owned(), "store".to_owned(), "clock".to_owned()])
        );
    }
}
