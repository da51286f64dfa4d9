//! Role-based access control on the verified peer identity (Envoy's RBAC filter, principals
//! only: Meridian's permissions are by source identity). Compiled once per configuration version.

use crate::config::{Principal, Rbac, RbacAction};
use crate::matcher::{PatternError, StringMatcher};
use crate::tls::PeerIdentity;

#[derive(Debug, Clone)]
enum Compiled {
    Any,
    UriSan(StringMatcher),
    Not(Box<Compiled>),
    AnyOf(Vec<Compiled>),
    AllOf(Vec<Compiled>),
}

impl Compiled {
    fn new(p: &Principal) -> Result<Compiled, PatternError> {
        Ok(match p {
            Principal::Any => Compiled::Any,
            Principal::UriSan(v) => Compiled::UriSan(StringMatcher::compile(v)?),
            Principal::Not(p) => Compiled::Not(Box::new(Compiled::new(p)?)),
            Principal::AnyOf(ps) => {
                Compiled::AnyOf(ps.iter().map(Compiled::new).collect::<Result<_, _>>()?)
            }
            Principal::AllOf(ps) => {
                Compiled::AllOf(ps.iter().map(Compiled::new).collect::<Result<_, _>>()?)
            }
        })
    }

    fn matches(&self, peer: &PeerIdentity) -> bool {
        match self {
            Compiled::Any => true,
            Compiled::UriSan(m) => peer.uri_sans.iter().any(|u| m.matches(u)),
            Compiled::Not(p) => !p.matches(peer),
            Compiled::AnyOf(ps) => ps.iter().any(|p| p.matches(peer)),
            Compiled::AllOf(ps) => ps.iter().all(|p| p.matches(peer)),
        }
    }
}

/// A compiled [`Rbac`].
#[derive(Debug, Clone)]
pub struct RbacEngine {
    action: RbacAction,
    /// (policy name, principals: any of them matching matches the policy).
    policies: Vec<(String, Vec<Compiled>)>,
}

/// An RBAC verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Denied, with the policy that decided (none for an allow list nobody matched).
    Denied {
        policy: Option<String>,
    },
}

impl RbacEngine {
    pub fn compile(rbac: &Rbac) -> Result<RbacEngine, PatternError> {
        let policies = rbac
            .policies
            .iter()
            .map(|(name, ps)| {
                Ok((
                    name.clone(),
                    ps.iter().map(Compiled::new).collect::<Result<_, _>>()?,
                ))
            })
            .collect::<Result<_, PatternError>>()?;
        Ok(RbacEngine {
            action: rbac.action,
            policies,
        })
    }

    pub fn check(&self, peer: &PeerIdentity) -> Verdict {
        let matched = self
            .policies
            .iter()
            .find(|(_, principals)| principals.iter().any(|p| p.matches(peer)))
            .map(|(name, _)| name.clone());
        match (self.action, matched) {
            (RbacAction::Allow, Some(_)) => Verdict::Allowed,
            (RbacAction::Allow, None) => Verdict::Denied { policy: None },
            (RbacAction::Deny, Some(policy)) => Verdict::Denied {
                policy: Some(policy),
            },
            (RbacAction::Deny, None) => Verdict::Allowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValueMatch;

    fn peer(uri: &str) -> PeerIdentity {
        PeerIdentity {
            uri_sans: vec![uri.to_string()],
        }
    }

    #[test]
    fn allow_lists_and_deny_lists() {
        let allow = RbacEngine::compile(&Rbac {
            action: RbacAction::Allow,
            policies: [(
                "web".to_string(),
                vec![Principal::UriSan(ValueMatch::Exact(
                    "spiffe://default/web".into(),
                ))],
            )]
            .into(),
        })
        .unwrap();
        assert_eq!(allow.check(&peer("spiffe://default/web")), Verdict::Allowed);
        assert_eq!(
            allow.check(&peer("spiffe://default/api")),
            Verdict::Denied { policy: None }
        );
        assert_eq!(
            allow.check(&PeerIdentity::default()),
            Verdict::Denied { policy: None }
        );
        let deny = RbacEngine::compile(&Rbac {
            action: RbacAction::Deny,
            policies: [(
                "not-web".to_string(),
                vec![Principal::Not(Box::new(Principal::UriSan(
                    ValueMatch::Prefix("spiffe://default/web".into()),
                )))],
            )]
            .into(),
        })
        .unwrap();
        assert_eq!(deny.check(&peer("spiffe://default/web")), Verdict::Allowed);
        assert_eq!(
            deny.check(&peer("spiffe://other/web")),
            Verdict::Denied {
                policy: Some("not-web".into())
            }
        );
    }
}
