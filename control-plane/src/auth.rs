//! The admin token that REST writes need. It is generated at first start into the data directory
//! with owner-only permissions and read back on later starts, so it survives restarts.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// File name of the admin token inside a data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// A bearer token guarding writes.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn new(token: impl Into<String>) -> AdminToken {
        AdminToken(token.into())
    }

    /// Reads `DIR/admin-token`, creating it (mode 0600) with 32 random bytes when absent.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<AdminToken> {
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim().to_owned();
                anyhow::ensure!(
                    !token.is_empty(),
                    "{}: the admin token file is empty",
                    path.display()
                );
                let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
                anyhow::ensure!(
                    mode & 0o077 == 0,
                    "{}: the admin token file is readable by others (mode {mode:o}); run chmod 600",
                    path.display()
                );
                Ok(AdminToken(token))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(&path),
            Err(e) => Err(anyhow::anyhow!(
                "{}: cannot read the admin token: {e}",
                path.display()
            )),
        }
    }

    fn create(path: &PathBuf) -> anyhow::Result<AdminToken> {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                anyhow::anyhow!("{}: cannot create the admin token: {e}", path.display())
            })?;
        writeln!(file, "{token}")?;
        file.sync_all()?;
        Ok(AdminToken(token))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value carries this token (constant-time comparison).
    pub fn authorizes(&self, header: Option<&str>) -> bool {
        let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let (a, b) = (presented.trim().as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let first = AdminToken::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(first.as_str(), second.as_str());
        assert!(first.authorizes(Some(&format!("Bearer {}", first.as_str()))));
        assert!(!first.authorizes(Some("Bearer nope")));
        assert!(!first.authorizes(None));
    }

    #[test]
    fn refuses_a_world_readable_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AdminToken::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("readable by others"), "{err}");
    }
}
