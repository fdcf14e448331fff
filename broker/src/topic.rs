//! MQTT topic filter matching, for what the edge delivers itself (retained messages): `+` one
//! level, `#` the rest (and the parent), `$`-topics not matched by a leading wildcard, shared
//! subscriptions recognised. Sessions and the dispatcher match every message with it.

/// Whether `filter` matches `topic` (MQTT 3.1.1 §4.7, MQTT 5 §4.7).
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    // A wildcard in the first level never matches a topic starting with '$'.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// The part of `filter` before its first wildcard level, without the separator before it:
/// every matching topic starts with it (`home/#` matches `home` itself).
pub(crate) fn literal_prefix(filter: &str) -> &str {
    let mut end = 0;
    for level in filter.split('/') {
        if level == "+" || level == "#" {
            break;
        }
        end += level.len() + 1;
    }
    &filter[..end.saturating_sub(1).min(filter.len())]
}

/// Whether `filter` is a shared subscription (`$share/<group>/<filter>`), which gets no
/// retained messages (MQTT 5 §4.8.2).
pub(crate) fn is_shared(filter: &str) -> bool {
    filter.starts_with("$share/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "a/b"));
        assert!(matches("+/b/#", "x/b"));
        assert!(!matches("a/+/c", "a/b"));
    }

    #[test]
    fn empty_levels() {
        assert!(matches("a//c", "a//c"));
        assert!(matches("a/+/c", "a//c"));
        assert!(matches("+", ""));
        assert!(matches("/+", "/x"));
        assert!(!matches("+", "/x"));
        assert!(matches("#", "/x"));
    }

    #[test]
    fn dollar_topics_need_an_explicit_first_level() {
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
        assert!(matches("$SYS/+", "$SYS/broker"));
    }

    #[test]
    fn prefixes() {
        assert_eq!(literal_prefix("a/b/+/c"), "a/b");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("a/b"), "a/b");
        assert_eq!(literal_prefix("home/#"), "home");
        assert_eq!(literal_prefix("/+"), "");
        assert!(is_shared("$share/g/a/#"));
        assert!(!is_shared("share/g"));
    }
}
