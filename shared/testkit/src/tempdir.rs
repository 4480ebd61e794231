//! A temporary folder for a test's files (logs, certificates), removed on drop.

use std::path::{Path, PathBuf};

/// A new folder under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `cascade-<prefix>-<uuid>`.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "cascade-{prefix}-{}",
            cascade_domain::ids::new_id()
        ));
        std::fs::create_dir_all(&path).expect("temporary folder created");
        Self(path)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}
