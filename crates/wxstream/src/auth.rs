//! Who may use the operations endpoint, as Kafka Connect's users have it: a bearer token
//! (`ops_token`) and HTTP Basic users (`ops_users`: an htpasswd file's lines, `name:hash`,
//! bcrypt hashes only, as `htpasswd -nbB name password` writes them), both by secret reference.
//! Each is compared without showing how much of it matched (the token in constant time, the
//! password by bcrypt; an unknown user costs a bcrypt too, so timing does not tell users
//! apart). bcrypt runs on the blocking pool, [`VERIFYING`] at a time, and a request waits for
//! its turn at most [`TURN_WAIT`] (refused after), so a flood of guesses can neither take the
//! stages' CPU nor queue without bound; a credential verified is remembered (by its SHA-256)
//! for [`REMEMBERED`], so an operator's tool is not slowed by bcrypt on every call.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use base64::Engine;
use wx_runtime::settings::Secret;

/// bcrypt verifications run at once (each takes tens of milliseconds by design).
pub const VERIFYING: usize = 2;

/// How long a request waits for a bcrypt turn before it is refused.
pub const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a verified Basic credential is remembered.
pub const REMEMBERED: std::time::Duration = std::time::Duration::from_secs(60);

/// The credentials the protected routes take (none configured: every request is admitted,
/// which the process allows only on a loopback address).
pub struct Credentials {
    token: Option<Secret>,
    /// User name to bcrypt hash.
    users: BTreeMap<String, Secret>,
    verifying: tokio::sync::Semaphore,
    /// SHA-256 of `user:password` verified, and until when it is remembered.
    verified: std::sync::Mutex<BTreeMap<[u8; 32], std::time::Instant>>,
    /// What an unknown user's password is checked against: a hash of a random password at
    /// the users' highest cost (made once, when users are configured).
    nobody: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why `ops_users` was refused (the line, never its hash).
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("ops_users line {line}: expected `name:hash` (an htpasswd line)")]
    Shape { line: usize },
    #[error(
        "ops_users line {line} (user {user}): not a bcrypt hash; write it with `htpasswd -nbB {user} <password>` (MD5, SHA-1 and crypt hashes are refused)"
    )]
    NotBcrypt { line: usize, user: String },
    #[error("ops_users line {line}: user {user} appears twice")]
    Twice { line: usize, user: String },
    #[error("ops_users holds no user")]
    Empty,
}

impl Credentials {
    /// `token` and the htpasswd text of `users` (blank lines and `#` comments skipped).
    pub fn new(token: Option<Secret>, users: Option<&Secret>) -> Result<Credentials, UsersError> {
        let mut parsed = BTreeMap::new();
        if let Some(users) = users {
            for (index, line) in users.expose().lines().enumerate() {
                let line_no = index + 1;
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((user, hash)) = line.split_once(':') else {
                    return Err(UsersError::Shape { line: line_no });
                };
                if user.is_empty() {
                    return Err(UsersError::Shape { line: line_no });
                }
                if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
                    || hash.parse::<bcrypt::HashParts>().is_err()
                {
                    return Err(UsersError::NotBcrypt {
                        line: line_no,
                        user: user.to_string(),
                    });
                }
                if parsed
                    .insert(user.to_string(), Secret::new(hash.to_string()))
                    .is_some()
                {
                    return Err(UsersError::Twice {
                        line: line_no,
                        user: user.to_string(),
                    });
                }
            }
            if parsed.is_empty() {
                return Err(UsersError::Empty);
            }
        }
        let cost = parsed
            .values()
            .filter_map(|h| h.expose().parse::<bcrypt::HashParts>().ok())
            .map(|h| h.get_cost())
            .max();
        let nobody = cost
            .and_then(|cost| bcrypt::hash(format!("{:032x}", rand::random::<u128>()), cost).ok());
        Ok(Credentials {
            token,
            users: parsed,
            verifying: tokio::sync::Semaphore::new(VERIFYING),
            verified: std::sync::Mutex::default(),
            nobody,
        })
    }

    /// No credentials configured.
    pub fn is_empty(&self) -> bool {
        self.token.is_none() && self.users.is_empty()
    }

    /// The `WWW-Authenticate` challenges of a refusal.
    pub fn challenges(&self) -> &'static str {
        match (self.token.is_some(), self.users.is_empty()) {
            (true, false) => "Bearer, Basic realm=\"wxstream\"",
            (false, false) => "Basic realm=\"wxstream\"",
            _ => "Bearer",
        }
    }

    /// Whether the request carries a credential this endpoint takes (always, when none is
    /// configured).
    pub async fn admits(&self, headers: &HeaderMap) -> bool {
        self.principal(headers).await.is_some()
    }

    /// Who the request's credential says it is, if this endpoint takes it: `user:<name>` for a
    /// Basic user, `token` for the bearer token, `anonymous` when no credential is configured.
    pub async fn principal(&self, headers: &HeaderMap) -> Option<String> {
        if self.is_empty() {
            return Some("anonymous".into());
        }
        let offered = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())?;
        if let Some(bearer) = offered.strip_prefix("Bearer ") {
            return self
                .token
                .as_ref()
                .is_some_and(|token| same(bearer.as_bytes(), token.expose().as_bytes()))
                .then(|| "token".to_string());
        }
        let (user, password) = offered.strip_prefix("Basic ").and_then(basic)?;
        let principal = format!("user:{user}");
        self.verify(&user, password).await.then_some(principal)
    }

    /// Whether `password` is `user`'s (bcrypt, on the blocking pool, a few at a time; a
    /// credential verified in the last [`REMEMBERED`] without bcrypt).
    async fn verify(&self, user: &str, password: Secret) -> bool {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update(b":")
            .chain_update(password.expose().as_bytes())
            .finalize()
            .into();
        let now = std::time::Instant::now();
        {
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            verified.retain(|_, until| *until > now);
            if verified.contains_key(&digest) {
                return true;
            }
        }
        let known = self.users.get(user);
        let Some(hash) = known
            .map(|h| h.expose().to_string())
            .or_else(|| self.nobody.clone())
        else {
            return false;
        };
        let Ok(Ok(_turn)) = tokio::time::timeout(TURN_WAIT, self.verifying.acquire()).await else {
            return false;
        };
        let matches = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.expose(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let admitted = matches && known.is_some();
        if admitted {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(digest, now + REMEMBERED);
        }
        admitted
    }
}

/// The user and password of a Basic credential (`base64(user:password)`).
fn basic(encoded: &str) -> Option<(String, Secret)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), Secret::new(password.to_string())))
}

/// Equal bytes, compared in a time that does not depend on where they first differ.
fn same(offered: &[u8], expected: &[u8]) -> bool {
    offered.len() == expected.len()
        && offered
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            value.parse().expect("header"),
        );
        h
    }

    fn basic_header(user: &str, password: &str) -> HeaderMap {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers(&format!("Basic {encoded}"))
    }

    #[tokio::test]
    async fn basic_users_and_the_token_are_each_admitted_and_nothing_else() {
        // A low cost keeps the test quick; production hashes use htpasswd's (5) or more.
        let hash = bcrypt::hash("s3cret-pass", 4).expect("hash");
        let users = Secret::new(format!("# operators\nalice:{hash}\n\n"));
        let credentials =
            Credentials::new(Some(Secret::new("t".repeat(20))), Some(&users)).expect("users");
        assert!(
            credentials
                .admits(&basic_header("alice", "s3cret-pass"))
                .await
        );
        assert!(!credentials.admits(&basic_header("alice", "wrong")).await);
        assert!(
            !credentials
                .admits(&basic_header("bob", "s3cret-pass"))
                .await
        );
        assert!(
            credentials
                .admits(&headers(&format!("Bearer {}", "t".repeat(20))))
                .await
        );
        assert!(!credentials.admits(&headers("Bearer nope")).await);
        assert!(!credentials.admits(&headers("Basic !!!")).await);
        assert!(!credentials.admits(&HeaderMap::new()).await);
        assert_eq!(
            credentials
                .principal(&basic_header("alice", "s3cret-pass"))
                .await
                .as_deref(),
            Some("user:alice")
        );
        assert_eq!(
            credentials
                .principal(&headers(&format!("Bearer {}", "t".repeat(20))))
                .await
                .as_deref(),
            Some("token")
        );
        assert_eq!(credentials.challenges(), "Bearer, Basic realm=\"wxstream\"");
    }

    #[test]
    fn only_bcrypt_htpasswd_lines_are_taken_and_errors_name_the_line_not_the_hash() {
        for (text, expected) in [
            (
                "alice:$apr1$abc$def",
                "line 1 (user alice): not a bcrypt hash",
            ),
            (
                "alice:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=",
                "not a bcrypt hash",
            ),
            ("no-colon-here", "line 1: expected `name:hash`"),
            ("# only a comment\n", "holds no user"),
        ] {
            let error = Credentials::new(None, Some(&Secret::new(text.into())))
                .expect_err(text)
                .to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(
                !error.contains("apr1") && !error.contains("SHA}"),
                "{error}"
            );
        }
        let hash = bcrypt::hash("x", 4).expect("hash");
        let twice = Secret::new(format!("a:{hash}\na:{hash}"));
        assert!(
            Credentials::new(None, Some(&twice))
                .expect_err("twice")
                .to_string()
                .contains("line 2: user a appears twice")
        );
    }
}
