//! Credentials out of what is shown or logged.

/// `text` with the credentials of every URL in it replaced by `***`
/// (`mysql://user:pass@host` -> `mysql://***@host`), for what is shown or logged.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme_end + 3);
        out.push_str(head);
        // Credentials end at the last '@' of the URL, which ends at whitespace or a quote. Not
        // at the first '/', '?' or '#': a password may hold those (`mysql://u:pa/ss@h`). An '@'
        // later in a path redacts more than the credentials, never less.
        let authority_end = tail
            .find(|c: char| matches!(c, '"' | '\'' | '<' | '>' | '`') || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_redacted() {
        for (text, shown) in [
            ("mysql://wx:hunter2@db:3306/x", "mysql://***@db:3306/x"),
            ("http://elastic:p%40ss@es:9200", "http://***@es:9200"),
            // An '@' in a path redacts more than the credentials, never less.
            ("http://es:9200/a@b", "http://***@b"),
            // A password holding '/', '?' or '#' (`../shared/reviews/audit-2026-12.md` X4).
            ("mysql://u:pa/ss@h:3306/db", "mysql://***@h:3306/db"),
            ("mysql://u:pa?ss#x@h", "mysql://***@h"),
            (
                "url \"http://u:p/w@h\" quoted",
                "url \"http://***@h\" quoted",
            ),
            (
                "error connecting to mysql://u:pw@h and http://a:b@c/d",
                "error connecting to mysql://***@h and http://***@c/d",
            ),
            ("no url here", "no url here"),
            ("https://only.host", "https://only.host"),
        ] {
            assert_eq!(redact_urls(text), shown, "{text}");
        }
    }
}
