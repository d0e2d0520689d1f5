//! Where kumo keeps its files: `$KUMO_HOME`, by default `~/.local/share/kumo`.

use std::path::PathBuf;

/// kumo's data directory: `$KUMO_HOME` if set, else `$HOME/.local/share/kumo`.
pub fn kumo_home() -> PathBuf {
    if let Some(home) = std::env::var_os("KUMO_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/kumo")
}
