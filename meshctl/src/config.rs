//! Connection settings: where the REST API is and which token authorizes writes.
//!
//! They come from, in order of precedence: the `--api-url` / `--token` flags (or their
//! environment variables `MESHCTL_API_URL` / `MESHCTL_TOKEN`), then the YAML config file named by
//! `--config` / `MESHCTL_CONFIG` (`{apiUrl: ..., token: ...}`, as `meshctl up` writes it), then the
//! default URL [`DEFAULT_API_URL`] with no token.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The API address used when neither a flag nor a config file names one (Kuma's API port).
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:5681";

/// The config file: `apiUrl` and `token`, both optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ConfigFile {
    /// Reads and parses a config file; errors name the file.
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        ConfigFile::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses config YAML; an empty document is an empty config.
    pub fn parse(text: &str) -> anyhow::Result<ConfigFile> {
        if text.trim().is_empty() {
            return Ok(ConfigFile::default());
        }
        Ok(serde_yaml::from_str(text)?)
    }

    /// The YAML text of this config.
    pub fn to_yaml(&self) -> String {
        // Two optional strings always serialize.
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Writes the config atomically, readable by its owner only (it holds a token).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::fsutil::write_atomic(path, self.to_yaml().as_bytes(), Some(0o600))
    }
}

/// The settings a command runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub api_url: String,
    pub token: Option<String>,
}

impl Settings {
    /// Applies the precedence: flags (and their environment variables) over the config file over
    /// the default. Blank values count as unset.
    pub fn resolve(
        flag_url: Option<&str>,
        flag_token: Option<&str>,
        config: Option<&ConfigFile>,
    ) -> Settings {
        fn present(s: Option<&str>) -> Option<String> {
            s.map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        }
        let api_url = present(flag_url)
            .or_else(|| config.and_then(|c| present(c.api_url.as_deref())))
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        let token =
            present(flag_token).or_else(|| config.and_then(|c| present(c.token.as_deref())));
        Settings { api_url, token }
    }

    /// Resolves the settings, loading the config file when one is named.
    pub fn load(
        flag_url: Option<&str>,
        flag_token: Option<&str>,
        config_path: Option<&Path>,
    ) -> anyhow::Result<Settings> {
        let config = config_path.map(ConfigFile::load).transpose()?;
        Ok(Settings::resolve(flag_url, flag_token, config.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: Option<&str>, token: Option<&str>) -> ConfigFile {
        ConfigFile {
            api_url: url.map(str::to_owned),
            token: token.map(str::to_owned),
        }
    }

    #[test]
    fn flags_win_over_config_which_wins_over_default() {
        let cfg = config(Some("http://cfg:1"), Some("cfg-token"));
        let s = Settings::resolve(Some("http://flag:2"), Some("flag-token"), Some(&cfg));
        assert_eq!(s.api_url, "http://flag:2");
        assert_eq!(s.token.as_deref(), Some("flag-token"));

        let s = Settings::resolve(None, None, Some(&cfg));
        assert_eq!(s.api_url, "http://cfg:1");
        assert_eq!(s.token.as_deref(), Some("cfg-token"));

        // Each setting is resolved on its own.
        let s = Settings::resolve(Some("http://flag:2"), None, Some(&cfg));
        assert_eq!(s.api_url, "http://flag:2");
        assert_eq!(s.token.as_deref(), Some("cfg-token"));

        let s = Settings::resolve(None, None, None);
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.token, None);

        let s = Settings::resolve(Some(" "), Some(""), Some(&config(None, None)));
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.token, None);
    }

    #[test]
    fn config_file_round_trips_in_camel_case() {
        let cfg = config(Some("http://127.0.0.1:5681"), Some("abc"));
        let text = cfg.to_yaml();
        assert!(text.contains("apiUrl: http://127.0.0.1:5681"), "{text}");
        assert!(text.contains("token: abc"), "{text}");
        assert_eq!(ConfigFile::parse(&text).unwrap(), cfg);
        assert_eq!(ConfigFile::parse("").unwrap(), ConfigFile::default());
        assert!(ConfigFile::parse("apiurl: x\n").is_err());
    }

    #[test]
    fn load_names_the_missing_file_and_save_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshctl.yaml");
        let err = Settings::load(None, None, Some(&path)).unwrap_err();
        assert!(format!("{err:#}").contains("meshctl.yaml"), "{err:#}");

        config(Some("http://x:1"), Some("t")).save(&path).unwrap();
        let s = Settings::load(None, None, Some(&path)).unwrap();
        assert_eq!(s.api_url, "http://x:1");
        assert_eq!(s.token.as_deref(), Some("t"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
