//! Bearer tokens of the dispatch API: the configuration holds each token's SHA-256 (hex) and
//! a name; a request is allowed when the SHA-256 of its token matches one of them.

use sha2::{Digest, Sha256};

use crate::config::ApiToken;

/// The SHA-256 of a token, as the configuration stores it (64 lowercase hex characters).
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Why a request is not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`.
    Malformed,
    /// A token nobody was given.
    Unknown,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "missing credentials: send `Authorization: Bearer <token>`",
            Refusal::Malformed => "malformed Authorization header: expected `Bearer <token>`",
            Refusal::Unknown => "invalid token",
        }
    }

    /// Label for metrics.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
        }
    }
}

/// The configured tokens, hashes normalised to lowercase.
#[derive(Clone, Debug)]
pub struct Tokens(Vec<ApiToken>);

impl Tokens {
    pub fn new(tokens: &[ApiToken]) -> Tokens {
        Tokens(
            tokens
                .iter()
                .map(|t| ApiToken {
                    name: t.name.clone(),
                    sha256: t.sha256.to_ascii_lowercase(),
                })
                .collect(),
        )
    }

    /// The name of the caller presenting this `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<&str, Refusal> {
        let header = authorization.ok_or(Refusal::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| Refusal::Malformed)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(Refusal::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(Refusal::Malformed);
        }
        let presented = token_sha256(token);
        // Comparing hashes: timing tells nothing about the token itself.
        self.0
            .iter()
            .find(|t| t.sha256 == presented)
            .map(|t| t.name.as_str())
            .ok_or(Refusal::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listed_token_is_accepted() {
        let tokens = Tokens::new(&[ApiToken {
            name: "office".to_owned(),
            sha256: token_sha256("s3cret").to_uppercase(),
        }]);
        assert_eq!(tokens.authenticate(Some(b"Bearer s3cret")), Ok("office"));
        assert_eq!(tokens.authenticate(Some(b"bearer  s3cret ")), Ok("office"));
        assert_eq!(tokens.authenticate(None), Err(Refusal::Missing));
        assert_eq!(
            tokens.authenticate(Some(b"Basic s3cret")),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            tokens.authenticate(Some(b"Bearer")),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            tokens.authenticate(Some(b"Bearer other")),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn hash_matches_sha256sum() {
        // printf %s dev-token | sha256sum
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
