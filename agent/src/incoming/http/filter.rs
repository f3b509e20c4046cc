//! A subscription's HTTP filter, compiled: which requests a filtered steal takes. The
//! semantics are mirrord's: patterns are fancy-regex regular expressions matched
//! case-insensitively and unanchored; a header matches as `name: value`; a path matches on
//! the path alone or on the path with its query; a method matches by name, ignoring case.

use fancy_regex::{Regex, RegexBuilder};
use http::{HeaderMap, Method, Uri};
use sctrace_protocol::HttpFilter;

/// A pattern that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("the HTTP filter pattern {pattern:?} is not a valid regular expression")]
pub struct FilterError {
    /// The pattern.
    pub pattern: String,
    /// Why.
    #[source]
    pub source: Box<fancy_regex::Error>,
}

/// A compiled filter.
#[derive(Debug)]
pub enum CompiledFilter {
    /// Some header, as `name: value`, matches.
    Header(Regex),
    /// The path, or path and query, matches.
    Path(Regex),
    /// The method is this one.
    Method(String),
    /// Every member matches.
    AllOf(Vec<CompiledFilter>),
    /// Some member matches.
    AnyOf(Vec<CompiledFilter>),
}

fn compile(pattern: &str) -> Result<Regex, FilterError> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map_err(|source| FilterError {
            pattern: pattern.to_string(),
            source: Box::new(source),
        })
}

/// A match that cannot be decided (the pattern's backtracking limit) counts as no match:
/// the request then goes to the target, as it would without sctrace.
fn is_match(re: &Regex, text: &str) -> bool {
    re.is_match(text).unwrap_or(false)
}

impl CompiledFilter {
    /// Compiles every pattern of `filter`.
    pub fn compile(filter: &HttpFilter) -> Result<CompiledFilter, FilterError> {
        Ok(match filter {
            HttpFilter::Header(p) => CompiledFilter::Header(compile(p)?),
            HttpFilter::Path(p) => CompiledFilter::Path(compile(p)?),
            HttpFilter::Method(m) => CompiledFilter::Method(m.clone()),
            HttpFilter::AllOf(list) => CompiledFilter::AllOf(
                list.iter()
                    .map(CompiledFilter::compile)
                    .collect::<Result<_, _>>()?,
            ),
            HttpFilter::AnyOf(list) => CompiledFilter::AnyOf(
                list.iter()
                    .map(CompiledFilter::compile)
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Whether a request with this method, URI and headers is taken.
    pub fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        match self {
            CompiledFilter::Header(re) => headers.iter().any(|(name, value)| {
                let line = format!("{}: {}", name, String::from_utf8_lossy(value.as_bytes()));
                is_match(re, &line)
            }),
            CompiledFilter::Path(re) => {
                is_match(re, uri.path())
                    || uri
                        .path_and_query()
                        .is_some_and(|pq| pq.query().is_some() && is_match(re, pq.as_str()))
            }
            CompiledFilter::Method(name) => method.as_str().eq_ignore_ascii_case(name),
            CompiledFilter::AllOf(list) => list.iter().all(|f| f.matches(method, uri, headers)),
            CompiledFilter::AnyOf(list) => list.iter().any(|f| f.matches(method, uri, headers)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (method.parse().unwrap(), uri.parse().unwrap(), map)
    }

    fn matches(filter: HttpFilter, req: &(Method, Uri, HeaderMap)) -> bool {
        CompiledFilter::compile(&filter)
            .unwrap()
            .matches(&req.0, &req.1, &req.2)
    }

    #[test]
    fn header_as_name_colon_value_ignoring_case() {
        let req = request(
            "GET",
            "/",
            &[("X-User", "Alice"), ("baggage", "a=1,session=bob")],
        );
        assert!(matches(HttpFilter::Header("^x-user: alice$".into()), &req));
        assert!(matches(HttpFilter::Header("session=bob".into()), &req));
        assert!(!matches(HttpFilter::Header("^x-user: bob$".into()), &req));
        assert!(!matches(HttpFilter::Header("^alice$".into()), &req));
        // Look-around, which only fancy-regex offers among Rust regex crates.
        assert!(matches(HttpFilter::Header("^x-user: (?!bob)".into()), &req));
    }

    #[test]
    fn path_with_or_without_query() {
        let req = request("GET", "/api/v1/items?id=7", &[]);
        assert!(matches(HttpFilter::Path("^/api/".into()), &req));
        assert!(matches(HttpFilter::Path("^/api/v1/items$".into()), &req));
        assert!(matches(HttpFilter::Path("id=7$".into()), &req));
        assert!(matches(HttpFilter::Path("^/API/".into()), &req));
        assert!(!matches(HttpFilter::Path("^/other".into()), &req));
        // An absolute URI (HTTP/2, or a proxy request) matches on its path too.
        let abs = request("GET", "http://svc.local:8080/api/x", &[]);
        assert!(matches(HttpFilter::Path("^/api/x$".into()), &abs));
    }

    #[test]
    fn method_and_combinations() {
        let post = request("POST", "/uwu", &[("x-steal", "yes")]);
        let get = request("GET", "/uwu", &[]);
        assert!(matches(HttpFilter::Method("post".into()), &post));
        assert!(!matches(HttpFilter::Method("POST".into()), &get));
        let all = HttpFilter::AllOf(vec![
            HttpFilter::Method("POST".into()),
            HttpFilter::Path("^/uwu$".into()),
        ]);
        assert!(matches(all.clone(), &post));
        assert!(!matches(all, &get));
        let any = HttpFilter::AnyOf(vec![
            HttpFilter::Header("^x-steal: yes$".into()),
            HttpFilter::Method("DELETE".into()),
        ]);
        assert!(matches(any.clone(), &post));
        assert!(!matches(any, &get));
    }

    #[test]
    fn bad_patterns_are_reported() {
        let err = CompiledFilter::compile(&HttpFilter::AnyOf(vec![
            HttpFilter::Path("^/ok".into()),
            HttpFilter::Header("x-(unclosed".into()),
        ]))
        .unwrap_err();
        assert_eq!(err.pattern, "x-(unclosed");
        assert!(err.to_string().contains("x-(unclosed"), "{err}");
    }
}
