//! Name validation as upstream (`k8s.io/apimachinery/pkg/util/validation`), with its messages.

/// Which rule an object's name follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// DNS-1123 subdomain: most resources.
    Subdomain,
    /// DNS-1123 label: namespaces.
    Label,
    /// DNS-1035 label: services.
    Dns1035,
    /// Anything usable as a path segment: events.
    PathSegment,
}

const LABEL_MAX: usize = 63;
const SUBDOMAIN_MAX: usize = 253;

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum(c) || c == b'-')
}

fn is_subdomain(s: &str) -> bool {
    s.split('.').all(is_label)
}

fn is_1035(s: &str) -> bool {
    is_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// The problems with `name` under `rule`, as upstream words them (empty: valid).
pub(crate) fn validate_name(rule: NameRule, name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if name.len() > SUBDOMAIN_MAX {
                errs.push(format!("must be no more than {SUBDOMAIN_MAX} characters"));
            }
            if !is_subdomain(name) {
                errs.push(
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                     characters, '-' or '.', and must start and end with an alphanumeric \
                     character (e.g. 'example.com', regex used for validation is \
                     '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                        .into(),
                );
            }
        }
        NameRule::Label => {
            if name.len() > LABEL_MAX {
                errs.push(format!("must be no more than {LABEL_MAX} characters"));
            }
            if !is_label(name) {
                errs.push(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric \
                     characters or '-', and must start and end with an alphanumeric character \
                     (e.g. 'my-name',  or '123-abc', regex used for validation is \
                     '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                        .into(),
                );
            }
        }
        NameRule::Dns1035 => {
            if name.len() > LABEL_MAX {
                errs.push(format!("must be no more than {LABEL_MAX} characters"));
            }
            if !is_1035(name) {
                errs.push(
                    "a DNS-1035 label must consist of lower case alphanumeric characters or \
                     '-', start with an alphabetic character, and end with an alphanumeric \
                     character (e.g. 'my-name',  or 'abc-123', regex used for validation is \
                     '[a-z]([-a-z0-9]*[a-z0-9])?')"
                        .into(),
                );
            }
        }
        NameRule::PathSegment => {}
    }
    errs.extend(path_segment_problems(name));
    errs
}

/// Names that cannot appear in a URL path (upstream `IsValidPathSegmentName`).
fn path_segment_problems(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|bad| name.contains(*bad))
        .map(|bad| format!("may not contain '{bad}'"))
        .collect()
}

/// The longest `generateName` prefix kept before the random suffix (upstream keeps 58
/// characters and adds 5).
pub(crate) const GENERATE_NAME_PREFIX_MAX: usize = 58;
const GENERATE_SUFFIX_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A name from a `generateName` prefix: the prefix, cut to 58 characters, and 5 random
/// characters from upstream's alphabet (no vowels, no confusable characters).
pub(crate) fn generate_name(prefix: &str) -> String {
    let mut cut = prefix.len().min(GENERATE_NAME_PREFIX_MAX);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut name = prefix[..cut].to_string();
    for _ in 0..5 {
        let i = rand::random_range(0..GENERATE_SUFFIX_CHARS.len());
        name.push(char::from(GENERATE_SUFFIX_CHARS[i]));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        for ok in ["a", "abc", "a-b.c-d", "0.1", "x".repeat(253).as_str()] {
            assert!(validate_name(NameRule::Subdomain, ok).is_empty(), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", ".a", "a/b"] {
            assert!(
                !validate_name(NameRule::Subdomain, bad).is_empty(),
                "{bad:?}"
            );
        }
        let long = "x".repeat(254);
        assert_eq!(
            validate_name(NameRule::Subdomain, &long),
            vec!["must be no more than 253 characters".to_string()]
        );
    }

    #[test]
    fn labels_and_dns1035() {
        assert!(validate_name(NameRule::Label, "kube-system").is_empty());
        assert!(validate_name(NameRule::Label, "1abc").is_empty());
        assert!(!validate_name(NameRule::Label, "a.b").is_empty());
        assert!(!validate_name(NameRule::Label, &"x".repeat(64)).is_empty());
        assert!(validate_name(NameRule::Dns1035, "my-svc").is_empty());
        assert!(!validate_name(NameRule::Dns1035, "1svc").is_empty());
        let msg = &validate_name(NameRule::Label, "Bad")[0];
        assert!(msg.starts_with("a lowercase RFC 1123 label"), "{msg}");
    }

    #[test]
    fn path_segments() {
        assert!(validate_name(NameRule::PathSegment, "Pod.X_1").is_empty());
        assert_eq!(
            validate_name(NameRule::PathSegment, "a/b"),
            vec!["may not contain '/'".to_string()]
        );
        assert!(!validate_name(NameRule::PathSegment, "..").is_empty());
    }

    #[test]
    fn generated_names_keep_prefix_and_add_five() {
        let n = generate_name("web-");
        assert_eq!(n.len(), 9);
        assert!(n.starts_with("web-"));
        assert!(validate_name(NameRule::Subdomain, &n).is_empty(), "{n}");
        let long = generate_name(&"a".repeat(100));
        assert_eq!(long.len(), 63);
    }
}
