//! What a token grants: document id patterns mapped to roles.
//!
//! Pure data and functions, so every rule of the access matrix (patterns,
//! highest role wins, creating, listing) is unit-tested here without a
//! server.

use collab_ot::protocol::Role;

use crate::store::DocumentFilter;

/// Most patterns one token may carry: a listing turns each into an SQL
/// term, so the work a token can cause stays bounded.
pub const MAX_PATTERNS: usize = 256;

/// A document id pattern of a token's `docs` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every document.
    Any,
    /// `team-a-*`: ids starting with `team-a-`.
    Prefix(String),
    /// `notes`: that id only.
    Exact(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let valid = |part: &str| {
            part.len() <= 64
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match s.strip_suffix('*') {
            Some("") => Ok(Pattern::Any),
            Some(prefix) if valid(prefix) => Ok(Pattern::Prefix(prefix.to_owned())),
            None if !s.is_empty() && valid(s) => Ok(Pattern::Exact(s.to_owned())),
            _ => Err(format!(
                "\"{s}\" is not a document pattern (an id, a prefix ending in *, or *)"
            )),
        }
    }

    pub fn matches(&self, id: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(p) => id.starts_with(p.as_str()),
            Pattern::Exact(e) => id == e,
        }
    }
}

/// A token's `docs` claim, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Vec<(Pattern, Role)>);

impl Grants {
    /// Parses `{"pattern": "role", …}`.
    pub fn parse<'a>(docs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Grants, String> {
        let mut grants = Vec::new();
        for (pattern, role) in docs {
            if grants.len() == MAX_PATTERNS {
                return Err(format!("docs has more than {MAX_PATTERNS} patterns"));
            }
            let role = Role::parse(role)
                .ok_or_else(|| format!("\"{role}\" is not a role (read, write or admin)"))?;
            grants.push((Pattern::parse(pattern)?, role));
        }
        Ok(Grants(grants))
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Pattern, Role)> {
        self.0.iter()
    }

    /// The highest role of the patterns matching `id`; `None`: not granted.
    pub fn role_on(&self, id: &str) -> Option<Role> {
        self.0
            .iter()
            .filter(|(p, _)| p.matches(id))
            .map(|(_, r)| *r)
            .max()
    }

    /// The role the `*` pattern grants: what holds for every document,
    /// including ones that do not exist yet.
    pub fn role_on_all(&self) -> Option<Role> {
        self.0
            .iter()
            .filter(|(p, _)| *p == Pattern::Any)
            .map(|(_, r)| *r)
            .max()
    }

    /// The documents a listing shows: every granted role includes reading.
    pub fn readable(&self) -> DocumentFilter {
        if self.role_on_all().is_some() {
            return DocumentFilter::All;
        }
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for (pattern, _) in &self.0 {
            match pattern {
                Pattern::Exact(id) => exact.push(id.clone()),
                Pattern::Prefix(p) => prefixes.push(p.clone()),
                Pattern::Any => {}
            }
        }
        DocumentFilter::Matching { exact, prefixes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(pairs: &[(&str, &str)]) -> Grants {
        Grants::parse(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn patterns() {
        assert_eq!(Pattern::parse("*"), Ok(Pattern::Any));
        assert_eq!(Pattern::parse("a-*"), Ok(Pattern::Prefix("a-".into())));
        assert_eq!(Pattern::parse("notes"), Ok(Pattern::Exact("notes".into())));
        for bad in ["", "**", "a*b", "a b", "é", "a/*", &"x".repeat(65)] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Pattern::Prefix("a-".into()).matches("a-1"));
        assert!(Pattern::Prefix("a-".into()).matches("a-"));
        assert!(!Pattern::Prefix("a-".into()).matches("a"));
        assert!(!Pattern::Exact("a".into()).matches("ab"));
    }

    #[test]
    fn the_highest_matching_role_wins() {
        let g = grants(&[("*", "read"), ("team-*", "write"), ("team-plan", "admin")]);
        assert_eq!(g.role_on("other"), Some(Role::Read));
        assert_eq!(g.role_on("team-x"), Some(Role::Write));
        assert_eq!(g.role_on("team-plan"), Some(Role::Admin));
        // Order does not matter, and a lower role never takes one away.
        let g = grants(&[("team-plan", "read"), ("team-*", "admin")]);
        assert_eq!(g.role_on("team-plan"), Some(Role::Admin));
        assert_eq!(g.role_on("nope"), None);
        assert_eq!(g.role_on_all(), None);
        assert_eq!(Grants::default().role_on("x"), None);
    }

    #[test]
    fn bad_claims_are_refused() {
        assert!(Grants::parse([("notes", "owner")]).is_err());
        assert!(Grants::parse([("no pe", "read")]).is_err());
        let many: Vec<(String, &str)> = (0..=MAX_PATTERNS)
            .map(|i| (format!("d{i}"), "read"))
            .collect();
        assert!(Grants::parse(many.iter().map(|(p, r)| (p.as_str(), *r))).is_err());
    }

    #[test]
    fn listings_show_what_is_readable() {
        assert_eq!(grants(&[("*", "read")]).readable(), DocumentFilter::All);
        assert_eq!(
            grants(&[("a", "read"), ("b-*", "admin")]).readable(),
            DocumentFilter::Matching {
                exact: vec!["a".into()],
                prefixes: vec!["b-".into()]
            }
        );
        assert_eq!(
            Grants::default().readable(),
            DocumentFilter::Matching {
                exact: vec![],
                prefixes: vec![]
            }
        );
    }
}
