//! Gateway labels and the selectors that pick gateways by them, as a
//! deployment's signed target names a fleet: `site=plant-1,ring!=canary`
//! holds for a gateway whose `site` label is `plant-1` and whose `ring`
//! label is not `canary` (or absent). Every term must hold.

use std::collections::BTreeMap;

/// The most labels a gateway carries, and terms a selector has.
pub const MAX_LABELS: usize = 32;

/// A label name or value: 1 to 63 characters of `A-Z a-z 0-9 . _ -`.
pub fn check_label(text: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a label: 1 to 63 characters of A-Z a-z 0-9 . _ -"
        ))
    }
}

/// A gateway's labels: at most [`MAX_LABELS`], each name and value a
/// label. Refused, the key that is wrong (`labels`, or `labels.NAME`) and why.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    if labels.len() > MAX_LABELS {
        return Err(("labels".into(), format!("more than {MAX_LABELS} labels")));
    }
    for (name, value) in labels {
        check_label(name)
            .and_then(|()| check_label(value))
            .map_err(|m| (format!("labels.{name}"), m))?;
    }
    Ok(())
}

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Is(String, String),
    IsNot(String, String),
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Term>);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let term = if let Some((key, value)) = part.split_once("!=") {
                Term::IsNot(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = part.split_once('=') {
                Term::Is(key.trim().into(), value.trim().into())
            } else {
                return Err(format!(
                    "selector {text:?}: {part:?} is not label=value or label!=value"
                ));
            };
            let (Term::Is(key, value) | Term::IsNot(key, value)) = &term;
            check_label(key)
                .and_then(|()| check_label(value))
                .map_err(|e| format!("selector {text:?}: {e}"))?;
            terms.push(term);
        }
        if terms.len() > MAX_LABELS {
            return Err(format!(
                "selector {text:?} has more than {MAX_LABELS} terms"
            ));
        }
        Ok(Selector(terms))
    }

    /// Whether a gateway with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|term| match term {
            Term::Is(key, value) => labels.get(key) == Some(value),
            Term::IsNot(key, value) => labels.get(key) != Some(value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_term_must_hold() {
        let s = Selector::parse("site=plant-1, ring!=canary").expect("parse");
        assert!(s.matches(&labels(&[("site", "plant-1"), ("ring", "main")])));
        assert!(s.matches(&labels(&[("site", "plant-1")])), "ring absent");
        assert!(!s.matches(&labels(&[("site", "plant-1"), ("ring", "canary")])));
        assert!(!s.matches(&labels(&[("site", "plant-2")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn malformed_selectors_are_refused_with_the_term() {
        for (text, needle) in [
            ("", "\"\" is not label=value"),
            ("site", "\"site\" is not label=value"),
            ("site=", "\"\" is not a label"),
            ("si te=x", "\"si te\" is not a label"),
            ("a=b,,c=d", "\"\" is not label=value"),
        ] {
            let e = Selector::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
