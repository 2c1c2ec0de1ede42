//! Issue 22: the README's main job refuses what it must not touch (its run itself is
//! `quickstart_runs_with_its_default_output_directory`).

use super::{root, sft, stderr};

/// A directory the quickstart did not make is never cleared.
#[test]
fn quickstart_keeps_a_directory_it_did_not_make() {
    let other = root().join("target/cli-tests/quickstart-not-ours");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "user data").unwrap();
    let refused = sft(&["quickstart", "--tiny", "--out", other.to_str().unwrap()]);
    assert!(!refused.status.success() && stderr(&refused).contains("not made by the quickstart"), "{}", stderr(&refused));
    assert_eq!(std::fs::read_to_string(other.join("keep.txt")).unwrap(), "user data");
}

#[test]
fn quickstart_names_a_model_that_is_not_there() {
    let out_dir = root().join("target/cli-tests/quickstart-missing");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = sft(&["quickstart", "--model", "no/such-dir-here.gguf", "--out", out_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no/such-dir-here.gguf"), "{}", stderr(&out));
}
