//! Static bearer tokens of machine clients: the configuration holds each token's SHA-256
//! (hex), a name and a role; a request is allowed when the SHA-256 of its token matches.

use sha2::{Digest, Sha256};

use crate::config::StaticToken;

/// The SHA-256 of a token, as the configuration stores it (64 lowercase hex characters).
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The configured tokens, hashes normalised to lowercase.
#[derive(Clone, Debug)]
pub struct Tokens(Vec<StaticToken>);

impl Tokens {
    pub fn new(tokens: &[StaticToken]) -> Tokens {
        Tokens(
            tokens
                .iter()
                .map(|t| StaticToken {
                    sha256: t.sha256.to_ascii_lowercase(),
                    ..t.clone()
                })
                .collect(),
        )
    }

    /// The client this token belongs to. Hashes are compared, so timing tells nothing of
    /// the token itself.
    pub fn find(&self, token: &str) -> Option<&StaticToken> {
        let presented = token_sha256(token);
        self.0.iter().find(|t| t.sha256 == presented)
    }
}
