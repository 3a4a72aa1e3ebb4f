//! `tiflow bench report --check` on the repository's README and results
//! (issue 14): the README's generated tables are exactly what the committed
//! results files give, so a hand-edited table, or a results file changed
//! without regenerating the README, fails CI. No root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn report_check(readme: &Path, results: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiflow"))
        .args(["bench", "report", "--check", "--readme"])
        .arg(readme)
        .arg("--results")
        .arg(results)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tiflow bench report")
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `text` with the first digit after a decimal point inside region `name`
/// changed.
fn edit_a_figure(text: &str, name: &str) -> String {
    let begin = text
        .find(&format!("<!-- bench-report:{name}:begin -->"))
        .expect("region begin");
    let end = text
        .find(&format!("<!-- bench-report:{name}:end -->"))
        .expect("region end");
    let bytes = text.as_bytes();
    let at = (begin..end)
        .find(|&i| {
            i > 0
                && bytes[i - 1].is_ascii_digit()
                && bytes[i] == b'.'
                && bytes[i + 1].is_ascii_digit()
        })
        .expect("a decimal figure in the region")
        + 1;
    let digit = (bytes[at] - b'0' + 1) % 10;
    let mut edited = text.to_owned();
    edited.replace_range(at..=at, &digit.to_string());
    edited
}

#[test]
fn the_readme_tables_are_what_the_results_files_give() {
    let root = workspace();
    let out = report_check(&root.join("README.md"), &root.join("benches/results"));
    assert!(
        out.status.success(),
        "the README's generated regions differ from benches/results/ \
         (regenerate: tiflow bench report --readme README.md):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_hand_edited_table_fails_the_check() {
    let root = workspace();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let dir = scratch("bench-report-edited-readme");
    let copy = dir.join("README.md");
    std::fs::write(&copy, edit_a_figure(&readme, "performance")).expect("write copy");
    let out = report_check(&copy, &root.join("benches/results"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an edited figure passed the check");
    assert!(
        stderr.contains("region performance differs") && stderr.contains("\n- |"),
        "{stderr}"
    );
}

#[test]
fn a_changed_results_file_fails_the_check() {
    let root = workspace();
    let dir = scratch("bench-report-changed-results");
    let results = dir.join("results");
    std::fs::create_dir_all(&results).expect("results copy");
    for entry in std::fs::read_dir(root.join("benches/results")).expect("benches/results") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, results.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let report = std::fs::read_to_string(results.join("tuning-report.txt")).expect("tuning");
    let changed = edit_a_figure(
        &format!("<!-- bench-report:t:begin -->{report}<!-- bench-report:t:end -->"),
        "t",
    );
    let changed = changed
        .trim_start_matches("<!-- bench-report:t:begin -->")
        .trim_end_matches("<!-- bench-report:t:end -->");
    // The first decimal of the report is on its table's first data row.
    std::fs::write(results.join("tuning-report.txt"), changed).expect("write");
    let out = report_check(&root.join("README.md"), &results);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a changed results file passed the check"
    );
    assert!(stderr.contains("region tuning differs"), "{stderr}");
}
