//! The version-skew rule of the KDS handshake. Upgrade order is the global first, then the zones:
//! the global accepts a zone whose version has its major version and its minor version or the one
//! before (`0.MINOR` counts the same way before 1.0: a 0.4 global accepts 0.3 and 0.4 zones). A
//! zone newer than the global, more than one minor version behind, or of another major version is
//! refused, as is a version that does not parse as `MAJOR.MINOR.PATCH` (with an optional
//! `-pre-release` and `+build`). Patch versions and pre-releases do not matter.
//!
//! The zone states its version in the [`VERSION_METADATA`] request metadata of both streams (and
//! in its node's `user_agent_version`); the global answers with its own version in the same
//! response metadata key, also on a refusal.

use std::fmt;
use std::str::FromStr;

/// The metadata key in which each side states its version (request: the zone's; response and
/// refusal: the global's).
pub const VERSION_METADATA: &str = "x-meridian-version";

/// This build's version, what both sides report unless configured otherwise.
pub const CURRENT: &str = env!("CARGO_PKG_VERSION");

/// A parsed `MAJOR.MINOR.PATCH[-pre][+build]`; only major and minor take part in the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    text: String,
}

impl Version {
    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A version that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a version (MAJOR.MINOR.PATCH, e.g. 0.1.0): {reason}")]
pub struct ParseError {
    pub value: String,
    pub reason: String,
}

impl FromStr for Version {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Version, ParseError> {
        let fail = |reason: &str| ParseError {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(fail("it is empty"));
        }
        let core = s.split_once('+').map_or(s, |(core, _)| core);
        let (core, pre) = match core.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (core, None),
        };
        if pre.is_some_and(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }) {
            return Err(fail("the pre-release part is empty or not [0-9A-Za-z.-]"));
        }
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3 {
            return Err(fail("expected three numbers separated by dots"));
        }
        let number = |p: &str| -> Result<u64, ParseError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail(&format!("{p:?} is not a number")));
            }
            if p.len() > 1 && p.starts_with('0') {
                return Err(fail(&format!("{p:?} has a leading zero")));
            }
            p.parse().map_err(|_| fail(&format!("{p:?} is too large")))
        };
        Ok(Version {
            major: number(parts[0])?,
            minor: number(parts[1])?,
            patch: number(parts[2])?,
            text: s.to_owned(),
        })
    }
}

/// Why the global refuses a zone at the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkewError {
    #[error(
        "zone version {0} (from the zone's {VERSION_METADATA} metadata or node user_agent_version)"
    )]
    Unparseable(ParseError),
    #[error("the zone reports no version ({VERSION_METADATA} metadata or node user_agent_version); the global {global} accepts zones {accepted}")]
    Missing { global: String, accepted: String },
    #[error("zone version {zone} is newer than the global's {global}: the global accepts zones {accepted}; upgrade the global first, then the zones")]
    ZoneNewer {
        zone: String,
        global: String,
        accepted: String,
    },
    #[error("zone version {zone} is more than one minor version behind the global's {global}: the global accepts zones {accepted}; upgrade the zone (and the global one minor version at a time, zones after each step)")]
    ZoneTooOld {
        zone: String,
        global: String,
        accepted: String,
    },
}

impl SkewError {
    /// The gRPC status a refused stream ends with: `invalid_argument` for a version that does not
    /// parse or is missing, `failed_precondition` for one outside the skew rule.
    pub fn code(&self) -> tonic::Code {
        match self {
            SkewError::Unparseable(_) | SkewError::Missing { .. } => tonic::Code::InvalidArgument,
            SkewError::ZoneNewer { .. } | SkewError::ZoneTooOld { .. } => {
                tonic::Code::FailedPrecondition
            }
        }
    }

    /// The message, prefixed so the zone can tell a refusal from other failures.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code(), format!("{REFUSAL_PREFIX}{self}"))
    }
}

/// Every refusal's status message starts with this.
pub const REFUSAL_PREFIX: &str = "version skew refused: ";

/// The accepted range, as the error messages state it (`0.3.x or 0.4.x`).
pub fn accepted_range(global: &Version) -> String {
    if global.minor == 0 {
        format!("of {}.0.x only", global.major)
    } else {
        format!(
            "of {0}.{1}.x or {0}.{2}.x",
            global.major,
            global.minor - 1,
            global.minor
        )
    }
}

/// The rule: whether a global of version `global` accepts a zone reporting `zone` (`None`: the
/// zone sent no version).
pub fn check_zone(global: &Version, zone: Option<&str>) -> Result<Version, SkewError> {
    let accepted = accepted_range(global);
    let Some(zone) = zone.filter(|z| !z.is_empty()) else {
        return Err(SkewError::Missing {
            global: global.to_string(),
            accepted,
        });
    };
    let parsed: Version = zone.parse().map_err(SkewError::Unparseable)?;
    let newer = parsed.major > global.major
        || (parsed.major == global.major && parsed.minor > global.minor);
    if newer {
        return Err(SkewError::ZoneNewer {
            zone: zone.to_owned(),
            global: global.to_string(),
            accepted,
        });
    }
    if parsed.major < global.major || parsed.minor + 1 < global.minor {
        return Err(SkewError::ZoneTooOld {
            zone: zone.to_owned(),
            global: global.to_string(),
            accepted,
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn parses_semantic_versions() {
        let x = v("1.22.3-rc.1+build.5");
        assert_eq!((x.major, x.minor, x.patch), (1, 22, 3));
        assert_eq!(x.as_str(), "1.22.3-rc.1+build.5");
        assert_eq!(v("0.1.0").minor, 1);
        assert!(v(CURRENT).as_str() == CURRENT);
    }

    #[test]
    fn refuses_what_is_not_a_version_naming_the_value() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "v1.2.3",
            "1.x.3",
            "01.2.3",
            "1.2.3-",
            "1.2.3-a b",
            "-1.2.3",
        ] {
            let e = bad.parse::<Version>().unwrap_err();
            assert_eq!(e.value, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn accepts_the_same_minor_and_one_behind() {
        let g = v("1.5.2");
        for zone in ["1.5.0", "1.5.9", "1.5.3-rc.1", "1.4.0", "1.4.17"] {
            assert_eq!(check_zone(&g, Some(zone)).unwrap().as_str(), zone);
        }
        // Before 1.0, 0.MINOR counts the same way.
        let g = v("0.4.0");
        assert!(check_zone(&g, Some("0.3.5")).is_ok());
        assert!(check_zone(&g, Some("0.4.1")).is_ok());
        // A global of minor 0 has no minor behind it in its major.
        assert!(check_zone(&v("2.0.1"), Some("2.0.0")).is_ok());
    }

    #[test]
    fn refuses_newer_zones_and_zones_two_minors_behind_naming_both_and_the_rule() {
        let g = v("0.4.0");
        let e = check_zone(&g, Some("0.5.0")).unwrap_err();
        assert!(matches!(e, SkewError::ZoneNewer { .. }));
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let m = e.to_string();
        assert!(m.contains("0.5.0") && m.contains("0.4.0"), "{m}");
        assert!(
            m.contains("0.3.x or 0.4.x") && m.contains("upgrade the global first"),
            "{m}"
        );

        let e = check_zone(&g, Some("0.2.9")).unwrap_err();
        assert!(matches!(e, SkewError::ZoneTooOld { .. }));
        let m = e.to_status().message().to_owned();
        assert!(m.starts_with(REFUSAL_PREFIX), "{m}");
        assert!(m.contains("0.2.9") && m.contains("0.4.0") && m.contains("0.3.x or 0.4.x"));

        assert!(matches!(
            check_zone(&v("1.0.0"), Some("0.9.0")).unwrap_err(),
            SkewError::ZoneTooOld { .. }
        ));
        assert!(matches!(
            check_zone(&v("1.9.0"), Some("2.0.0")).unwrap_err(),
            SkewError::ZoneNewer { .. }
        ));
        assert!(check_zone(&v("2.0.0"), Some("1.9.0"))
            .unwrap_err()
            .to_string()
            .contains("of 2.0.x only"));
    }

    #[test]
    fn refuses_unparseable_and_missing_versions() {
        let g = v("0.4.0");
        let e = check_zone(&g, Some("latest")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("\"latest\""), "{e}");
        let e = check_zone(&g, None).unwrap_err();
        assert!(matches!(e, SkewError::Missing { .. }));
        assert!(check_zone(&g, Some("")).is_err());
    }
}
