//! `tiflow bench report` (stub).

use std::path::Path;

use super::BenchError;

/// Prints, writes or checks the README's generated tables.
pub fn run(_results: &Path, _readme: Option<&Path>, _check: bool) -> Result<(), BenchError> {
    Err(BenchError::Check("not yet".into()))
}
