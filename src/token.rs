//! `sluice token`: mints a JWT for a user.

use anyhow::{Context, bail};

use crate::config::Config;

/// Prints a token for `sub` valid for `ttl` (humantime, e.g. `24h`).
pub fn print(config: &Config, sub: &str, ttl: &str) -> anyhow::Result<()> {
    let Some(secret) = &config.jwt_secret else {
        bail!("SLUICE_JWT_SECRET is not set: tokens are signed with it");
    };
    if sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let ttl = humantime::parse_duration(ttl).with_context(|| format!("--ttl {ttl:?}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let exp = (now + ttl).as_secs();
    let token = sluice_web::auth::mint(secret.expose(), sub, exp)?;
    // The token is this command's output, not a log line.
    #[allow(clippy::print_stdout)]
    {
        println!("{token}");
    }
    Ok(())
}
