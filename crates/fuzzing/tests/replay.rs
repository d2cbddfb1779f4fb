//! Replays every committed fuzz input through its target on the stable toolchain: each file
//! of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`. Both folders must exist and
//! be non-empty for every target, so a lost corpus fails here instead of being skipped.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

#[test]
fn every_committed_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, target) in keybag_fuzzing::TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in inputs(&fuzz.join(kind).join(name)) {
                let data = std::fs::read(&file).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} fails", file.display());
            }
        }
    }
}

#[test]
fn fuzz_targets_and_targets_match() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    let mut files: Vec<String> = inputs(&dir)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut names: Vec<String> = keybag_fuzzing::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    files.sort();
    names.sort();
    assert_eq!(
        files, names,
        "fuzz/fuzz_targets/*.rs and keybag_fuzzing::TARGETS"
    );
    for (name, _) in keybag_fuzzing::TARGETS {
        let src = std::fs::read_to_string(dir.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(
            src.contains(&format!("keybag_fuzzing::{name}(")),
            "fuzz/fuzz_targets/{name}.rs does not call keybag_fuzzing::{name}"
        );
    }
}
