//! API tokens: a file of `ROLE TOKEN` lines (`reader` or `operator`; `#`
//! starts a comment), readable by its owner alone, as every secret the
//! gateway reads. Tokens are compared by their sha256, in constant time.

use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May read.
    Reader,
    /// May also set desired values and call actions.
    Operator,
}

impl Role {
    /// Whether this role may do what `needed` may.
    pub fn may(self, needed: Role) -> bool {
        self == Role::Operator || needed == Role::Reader
    }
}

#[derive(Debug)]
pub struct Tokens {
    /// sha256 of each token, with its role.
    digests: Vec<([u8; 32], Role)>,
}

/// The shortest token taken: shorter ones are guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

impl Tokens {
    pub fn load(path: &Path) -> anyhow::Result<Tokens> {
        crate::permissions::check_private(path, "the tokens file").map_err(anyhow::Error::msg)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("tokens file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| anyhow::anyhow!("tokens file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut digests = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (role, token) = line
                .split_once(char::is_whitespace)
                .map(|(r, t)| (r, t.trim()))
                .ok_or_else(|| format!("line {}: expected `ROLE TOKEN`", n + 1))?;
            let role = match role {
                "reader" => Role::Reader,
                "operator" => Role::Operator,
                other => {
                    return Err(format!(
                        "line {}: role {other:?} is neither reader nor operator",
                        n + 1
                    ));
                }
            };
            // The token itself never goes into an error.
            if token.chars().count() < MIN_TOKEN_CHARS || token.contains(char::is_whitespace) {
                return Err(format!(
                    "line {}: a token is at least {MIN_TOKEN_CHARS} characters, without spaces",
                    n + 1
                ));
            }
            digests.push((Sha256::digest(token.as_bytes()).into(), role));
        }
        if digests.is_empty() {
            return Err("no tokens in it".into());
        }
        Ok(Tokens { digests })
    }

    /// The role of `token`, if it is one.
    pub fn role(&self, token: &str) -> Option<Role> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Look at every entry, whatever matched, so timing says nothing.
        let mut found = None;
        for (known, role) in &self.digests {
            let same = known
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same && found.is_none() {
                found = Some(*role);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_roles_and_bad_lines_are_named() {
        let tokens = Tokens::parse(
            "# who may do what\nreader r-0123456789abcdef\noperator o-0123456789abcdef # ops\n",
        )
        .expect("parse");
        assert_eq!(tokens.role("r-0123456789abcdef"), Some(Role::Reader));
        assert_eq!(tokens.role("o-0123456789abcdef"), Some(Role::Operator));
        assert_eq!(tokens.role("r-0123456789abcdeX"), None);
        assert!(Role::Operator.may(Role::Reader));
        assert!(!Role::Reader.may(Role::Operator));

        let e = Tokens::parse("admin a-0123456789abcdef").expect_err("refused");
        assert!(e.contains("line 1") && e.contains("admin"), "{e}");
        let e = Tokens::parse("reader short").expect_err("refused");
        assert!(e.contains("16 characters") && !e.contains("short"), "{e}");
        assert!(Tokens::parse("# nothing\n").is_err());
    }
}
