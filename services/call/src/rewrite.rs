//! Per-trunk number rewriting, as a carrier's engineer writes it on any SBC: rules with
//! a regular expression and a replacement (`$1`, `${name}` for captures), for the
//! Request-URI user, the From user or the To user, applied to calls from the trunk
//! (`inbound`, before routing: the route sees the rewritten number) and to calls to it
//! (`outbound`, on the B leg). For each field the first rule whose pattern matches
//! rewrites it; later rules for that field are not tried. Rules are compiled once, when
//! the trunks are loaded (the `regex` crate: linear time, no backtracking blow-up on a
//! hostile number).

use regex::Regex;

/// What a rule rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    RequestUri,
    From,
    To,
}

/// One rewrite rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub field: Field,
    pattern: Regex,
    replace: String,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field
            && self.pattern.as_str() == other.pattern.as_str()
            && self.replace == other.replace
    }
}

impl Eq for Rule {}

impl Rule {
    /// A rule; a pattern that does not compile is an error naming why.
    pub fn new(field: Field, pattern: &str, replace: &str) -> Result<Rule, String> {
        let pattern = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Rule {
            field,
            pattern,
            replace: replace.to_string(),
        })
    }
}

/// A trunk's rules, each way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrites {
    pub inbound: Vec<Rule>,
    pub outbound: Vec<Rule>,
}

/// `user` rewritten by the first of `rules` for `field` that matches it; `None` when
/// none does.
pub fn apply(rules: &[Rule], field: Field, user: &str) -> Option<String> {
    rules
        .iter()
        .filter(|r| r.field == field)
        .find(|r| r.pattern.is_match(user))
        .map(|r| r.pattern.replace(user, r.replace.as_str()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_of_the_field_rewrites_with_captures() {
        let rules = vec![
            Rule::new(Field::RequestUri, r"^00(\d+)$", "+$1").unwrap(),
            Rule::new(Field::RequestUri, r"^0(\d{9,10})$", "+44$1").unwrap(),
            Rule::new(Field::RequestUri, r"^0", "never").unwrap(),
            Rule::new(Field::From, r"^\+44(?<rest>\d+)$", "0${rest}").unwrap(),
        ];
        assert_eq!(
            apply(&rules, Field::RequestUri, "0033142868200").as_deref(),
            Some("+33142868200")
        );
        assert_eq!(
            apply(&rules, Field::RequestUri, "02071234567").as_deref(),
            Some("+442071234567")
        );
        assert_eq!(apply(&rules, Field::RequestUri, "+15550100"), None);
        assert_eq!(
            apply(&rules, Field::From, "+442071234567").as_deref(),
            Some("02071234567")
        );
        assert_eq!(apply(&rules, Field::To, "+442071234567"), None);
        assert!(Rule::new(Field::To, "(unclosed", "x").is_err());
    }
}
