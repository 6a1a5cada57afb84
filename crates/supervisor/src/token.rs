//! `rk3s token create|list|delete|generate`, as `k3s token`: bootstrap tokens are
//! upstream's `kube-system/bootstrap-token-<id>` Secrets of type
//! `bootstrap.kubernetes.io/token` (`token-id`, `token-secret`, `expiration`, `description`,
//! `usage-bootstrap-<usage>`, `auth-extra-groups`), written and read through the API with the
//! admin kubeconfig (`--kubeconfig`, `KUBECONFIG`, default `/etc/rk3s/rk3s.yaml`). An agent
//! joins with one (`rk3s agent --token K10<ca hash>::<id>.<secret>`); the apiserver
//! authenticates it as `system:bootstrap:<id>`; rk3s-controller's `tokencleaner` deletes it
//! once expired. (`k3s token rotate` is not built yet.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use rk3s_apiserver::bootstrap_token::{NAMESPACE, SECRET_PREFIX, SECRET_TYPE};

/// `rk3s token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// Where the API is.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiFlags {
    /// Directory of rk3s state
    #[arg(short = 'd', long, value_name = "DIR", default_value = "/var/lib/rk3s")]
    pub data_dir: PathBuf,
    /// The kubeconfig to reach the API with
    #[arg(long, value_name = "FILE", env = "KUBECONFIG", default_value = crate::config::DEFAULT_KUBECONFIG)]
    pub kubeconfig: PathBuf,
}

/// The `token` subcommands, K3s' names.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token on the server and print it in the full K10 form
    Create {
        #[command(flatten)]
        api: ApiFlags,
        /// The token to create (`[a-z0-9]{6}.[a-z0-9]{16}`) [default: a random one]
        #[arg(value_name = "TOKEN")]
        token: Option<String>,
        /// A human friendly description of how this token is used
        #[arg(long)]
        description: Option<String>,
        /// Extra groups the token authenticates as (`system:bootstrappers:<name>`, repeatable or
        /// comma-separated) [default: system:bootstrappers:rk3s:default-node-token]
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// How long until the token expires and is deleted (`30s`, `10m`, `24h`, `1h30m`; `0`:
        /// never)
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What the token may be used for (repeatable or comma-separated) [default:
        /// signing,authentication]
        #[arg(long, value_delimiter = ',')]
        usages: Vec<String>,
    },
    /// Delete bootstrap tokens (by id or whole token)
    Delete {
        #[command(flatten)]
        api: ApiFlags,
        #[arg(required = true, value_name = "TOKEN")]
        tokens: Vec<String>,
    },
    /// Print a new random bootstrap token without creating it
    Generate,
    /// List the bootstrap tokens
    List {
        #[command(flatten)]
        api: ApiFlags,
        /// `text`, `json` or `yaml`
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
    },
}

/// The default extra group of created tokens (K3s': `system:bootstrappers:k3s:default-node-token`).
pub const DEFAULT_GROUP: &str = "system:bootstrappers:rk3s:default-node-token";

/// Runs `rk3s token ...`.
pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Generate => {
            println!("{}", generate());
            Ok(())
        }
        TokenCommand::Create {
            api,
            token,
            description,
            groups,
            ttl,
            usages,
        } => {
            let token = token.unwrap_or_else(generate);
            let Some((id, secret)) = rk3s_apiserver::bootstrap_token::parse(&token) else {
                bail!("{token:?} is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})");
            };
            let ttl = parse_duration(&ttl)?;
            let groups = if groups.is_empty() {
                vec![DEFAULT_GROUP.to_string()]
            } else {
                groups
            };
            for g in &groups {
                if !rk3s_apiserver::bootstrap_token::valid_group(g) {
                    bail!("group {g:?} must start with system:bootstrappers: and be a name");
                }
            }
            let usages = if usages.is_empty() {
                vec!["signing".to_string(), "authentication".to_string()]
            } else {
                usages
            };
            let (client, ca_pem) = client(&api).await?;
            let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
            let name = format!("{SECRET_PREFIX}{id}");
            if secrets.get_opt(&name).await?.is_some() {
                bail!("a token with id {id:?} already exists");
            }
            let mut data = BTreeMap::new();
            let mut put = |k: String, v: String| {
                data.insert(k, ByteString(v.into_bytes()));
            };
            put("token-id".into(), id.to_string());
            put("token-secret".into(), secret.to_string());
            if let Some(d) = description.filter(|d| !d.is_empty()) {
                put("description".into(), d);
            }
            if !ttl.is_zero() {
                put("expiration".into(), rfc3339_in(ttl));
            }
            for u in &usages {
                put(format!("usage-bootstrap-{u}"), "true".into());
            }
            put("auth-extra-groups".into(), groups.join(","));
            let object = Secret {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(NAMESPACE.into()),
                    ..ObjectMeta::default()
                },
                type_: Some(SECRET_TYPE.into()),
                data: Some(data),
                ..Secret::default()
            };
            secrets
                .create(&PostParams::default(), &object)
                .await
                .context("creating the bootstrap token")?;
            println!("K10{}::{token}", rk3s_apiserver::ca_hash(&ca_pem));
            Ok(())
        }
        TokenCommand::Delete { api, tokens } => {
            let (client, _) = client(&api).await?;
            let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
            for t in tokens {
                let id = match rk3s_apiserver::bootstrap_token::parse(&t) {
                    Some((id, _)) => id.to_string(),
                    None if t.len() == 6
                        && t.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
                    {
                        t.clone()
                    }
                    None => bail!(
                        "given token didn't match pattern \"[a-z0-9]{{6}}\" or \"[a-z0-9]{{6}}.[a-z0-9]{{16}}\""
                    ),
                };
                secrets
                    .delete(&format!("{SECRET_PREFIX}{id}"), &DeleteParams::default())
                    .await
                    .with_context(|| format!("failed to delete bootstrap token {id:?}"))?;
                println!("bootstrap token {id:?} deleted");
            }
            Ok(())
        }
        TokenCommand::List { api, output } => {
            let (client, _) = client(&api).await?;
            let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
            let list = secrets
                .list(&ListParams::default().fields(&format!("type={SECRET_TYPE}")))
                .await
                .context("failed to list bootstrap tokens")?;
            let tokens: Vec<Listed> = list.items.iter().filter_map(Listed::from_secret).collect();
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string(&tokens)?),
                "yaml" => print!("{}", serde_yaml_string(&tokens)?),
                _ => print!("{}", render_list(&tokens, now_secs())),
            }
            Ok(())
        }
    }
}

fn serde_yaml_string(tokens: &[Listed]) -> anyhow::Result<String> {
    // JSON is YAML; one document, as K3s' encoder writes one.
    Ok(format!("{}\n", serde_json::to_string_pretty(tokens)?))
}

/// A new random bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub fn generate() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let pick = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(CHARS[rand::random_range(0..CHARS.len())]))
            .collect()
    };
    let id = pick(6);
    format!("{id}.{}", pick(16))
}

/// A Go-style duration: `0`, or numbers with `h`, `m`, `s` units (`1h30m`, `45s`).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits
            .parse()
            .with_context(|| format!("invalid duration {text:?}"))?;
        digits.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => bail!("invalid duration {text:?}: units are h, m, s"),
        };
    }
    if !digits.is_empty() || text.is_empty() {
        bail!("invalid duration {text:?}: a number needs a unit (h, m, s)");
    }
    Ok(Duration::from_secs(total))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// `ttl` from now, RFC 3339 UTC.
fn rfc3339_in(ttl: Duration) -> String {
    let secs = now_secs() + i64::try_from(ttl.as_secs()).unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// A token as `token list` shows it (K3s' `BootstrapToken` fields).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub token: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub usages: Vec<String>,
    pub groups: Vec<String>,
}

impl Listed {
    fn from_secret(s: &Secret) -> Option<Listed> {
        let data = s.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let mut usages: Vec<String> = data
            .iter()
            .filter_map(|(k, v)| {
                let u = k.strip_prefix("usage-bootstrap-")?;
                (v.0 == b"true").then(|| u.to_string())
            })
            .collect();
        usages.sort();
        Some(Listed {
            token: get("token-id")?,
            description: get("description").unwrap_or_default(),
            expires: get("expiration"),
            usages,
            groups: get("auth-extra-groups")
                .map(|g| {
                    g.split(',')
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Go's `duration.ShortHumanDuration`.
fn short_human(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m", secs / 60)
    } else if secs < 48 * 3600 {
        format!("{}h", secs / 3600)
    } else if secs < 365 * 2 * 86_400 {
        format!("{}d", secs / 86_400)
    } else {
        format!("{}y", secs / (365 * 86_400))
    }
}

/// K3s' table: TOKEN TTL EXPIRES USAGES DESCRIPTION EXTRA GROUPS.
pub fn render_list(tokens: &[Listed], now: i64) -> String {
    let none = |s: String| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s
        }
    };
    let mut rows = vec![[
        "TOKEN".to_string(),
        "TTL".into(),
        "EXPIRES".into(),
        "USAGES".into(),
        "DESCRIPTION".into(),
        "EXTRA GROUPS".into(),
    ]];
    for t in tokens {
        let (ttl, expires) = match &t.expires {
            Some(e) => {
                let left = e
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .map_or(-2, |t| t.as_second() - now);
                (short_human(left), e.clone())
            }
            None => ("<forever>".into(), "<never>".into()),
        };
        rows.push([
            t.token.clone(),
            ttl,
            expires,
            none(t.usages.join(",")),
            none(t.description.clone()),
            none(t.groups.join(",")),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0) + 3)
        .map(|w| w.max(10))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: String = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 5 {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A client of the API with the kubeconfig, and the CA it trusts (its PEM).
async fn client(api: &ApiFlags) -> anyhow::Result<(kube::Client, String)> {
    let kc = kube::config::Kubeconfig::read_from(&api.kubeconfig)
        .with_context(|| format!("reading {}", api.kubeconfig.display()))?;
    let ca_pem = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .context("the kubeconfig has no certificate-authority-data")?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok((kube::Client::try_from(config)?, ca_pem))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_bootstrap_form() {
        let t = generate();
        assert!(rk3s_apiserver::bootstrap_token::parse(&t).is_some(), "{t}");
        assert_ne!(generate(), t);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            parse_duration("1h30m5s").unwrap(),
            Duration::from_secs(5405)
        );
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn list_table() {
        let tokens = vec![Listed {
            token: "abcdef".into(),
            description: String::new(),
            expires: Some("2030-01-01T00:00:00Z".into()),
            usages: vec!["authentication".into(), "signing".into()],
            groups: vec![DEFAULT_GROUP.into()],
        }];
        let now = 1_893_456_000 - 7200; // two hours before
        let text = render_list(&tokens, now);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("TOKEN"));
        let row = lines.next().unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "abcdef",
                "2h",
                "2030-01-01T00:00:00Z",
                "authentication,signing",
                "<none>",
                DEFAULT_GROUP
            ]
        );
    }
}
