//! `--datastore-endpoint`: the K3s URL forms, parsed into what each backend needs.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `sqlite:///abs/path/state.db` (or the default file in the data dir).
    Sqlite { path: PathBuf },
    /// `postgres://user:pass@host:5432/db` (also `postgresql://`).
    Postgres { url: String },
    /// `mysql://user:pass@tcp(host:3306)/db` (K3s form) or `mysql://user:pass@host:3306/db`.
    Mysql { url: String },
    /// `http(s)://host:2379[,host2:2379]`: a real etcd cluster.
    Etcd { endpoints: Vec<String> },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Endpoint {
    /// The default: SQLite in `<data-dir>/server/db/state.db`.
    pub fn default_sqlite(data_dir: &Path) -> Self {
        Endpoint::Sqlite {
            path: data_dir.join("server").join("db").join("state.db"),
        }
    }

    /// Parses an endpoint; `None` or an empty string means the default SQLite file.
    pub fn parse(endpoint: Option<&str>, data_dir: &Path) -> Result<Self> {
        let raw = match endpoint.map(str::trim) {
            None | Some("") => return Ok(Self::default_sqlite(data_dir)),
            Some(raw) => raw,
        };
        let invalid = |reason: &str| Error::InvalidEndpoint {
            endpoint: redact(raw),
            reason: reason.to_string(),
        };
        let (scheme, rest) = raw.split_once("://").ok_or_else(|| {
            invalid("expected a URL such as sqlite:///path, postgres://, mysql:// or http://")
        })?;
        match scheme {
            "sqlite" => {
                // K3s appends driver options (`?_journal=WAL&cache=shared`); rk3s sets its own.
                let path = rest.split('?').next().unwrap_or_default();
                if path.is_empty() {
                    return Ok(Self::default_sqlite(data_dir));
                }
                let path = PathBuf::from(path);
                let path = if path.is_absolute() {
                    path
                } else {
                    data_dir.join(path)
                };
                Ok(Endpoint::Sqlite { path })
            }
            "postgres" | "postgresql" => {
                let url = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("missing host"));
                }
                Ok(Endpoint::Postgres {
                    url: raw.to_string(),
                })
            }
            "mysql" => {
                let url = mysql_url(raw).ok_or_else(|| invalid("expected mysql://user:pass@tcp(host:port)/db or mysql://user:pass@host:port/db"))?;
                let parsed = url::Url::parse(&url).map_err(|e| invalid(&e.to_string()))?;
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("missing host"));
                }
                if parsed.path().trim_start_matches('/').is_empty() {
                    return Err(invalid("missing database name"));
                }
                Ok(Endpoint::Mysql { url })
            }
            "http" | "https" => {
                let endpoints: Vec<String> = rest
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|hostport| {
                        // Each member may repeat the scheme: http://a:2379,http://b:2379.
                        let hostport = hostport
                            .trim_start_matches("http://")
                            .trim_start_matches("https://")
                            .trim_end_matches('/');
                        format!("{scheme}://{hostport}")
                    })
                    .collect();
                if endpoints.is_empty() {
                    return Err(invalid("no etcd endpoints"));
                }
                for e in &endpoints {
                    let u = url::Url::parse(e)
                        .map_err(|err| invalid(&format!("{}: {err}", redact(e))))?;
                    if u.host_str().is_none_or(str::is_empty) {
                        return Err(invalid(&format!("{}: missing host", redact(e))));
                    }
                    if !u.username().is_empty() || u.password().is_some() {
                        return Err(invalid(
                            "etcd user/password authentication is not supported: use client \
                             certificates (--datastore-certfile, --datastore-keyfile)",
                        ));
                    }
                }
                Ok(Endpoint::Etcd { endpoints })
            }
            other => Err(invalid(&format!(
                "unknown scheme {other:?}: use sqlite, postgres, mysql, http or https"
            ))),
        }
    }

    /// The backend name: `sqlite`, `postgres`, `mysql` or `etcd`.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Sqlite { .. } => "sqlite",
            Endpoint::Postgres { .. } => "postgres",
            Endpoint::Mysql { .. } => "mysql",
            Endpoint::Etcd { .. } => "etcd",
        }
    }

    /// The endpoint with any password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> String {
        match self {
            Endpoint::Sqlite { path } => format!("sqlite://{}", path.display()),
            Endpoint::Postgres { url } | Endpoint::Mysql { url } => redact(url),
            Endpoint::Etcd { endpoints } => endpoints.join(","),
        }
    }
}

/// Rewrites the K3s (Go driver) form `user:pass@tcp(host:port)/db` into a URL.
fn mysql_url(raw: &str) -> Option<String> {
    let rest = raw.strip_prefix("mysql://")?;
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let hostpart = if let Some(tcp) = hostpart.strip_prefix("tcp(") {
        let (addr, tail) = tcp.split_once(')')?;
        format!("{addr}{tail}")
    } else if hostpart.starts_with("unix(") {
        return None;
    } else {
        hostpart.to_string()
    };
    // `tcp(host:port)/` without a database name.
    if hostpart.starts_with('/') {
        return None;
    }
    Some(match userinfo {
        Some(u) => format!("mysql://{u}@{hostpart}"),
        None => format!("mysql://{hostpart}"),
    })
}

/// Hides the password of a URL.
fn redact(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => raw.to_string(),
        },
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Endpoint> {
        Endpoint::parse(Some(s), Path::new("/var/lib/rk3s"))
    }

    #[test]
    fn default_is_sqlite_in_data_dir() {
        let e = Endpoint::parse(None, Path::new("/d")).expect("default");
        assert_eq!(
            e,
            Endpoint::Sqlite {
                path: PathBuf::from("/d/server/db/state.db")
            }
        );
    }

    #[test]
    fn sqlite_forms() {
        assert_eq!(
            parse("sqlite:///tmp/x.db?_journal=WAL&cache=shared").expect("sqlite"),
            Endpoint::Sqlite {
                path: PathBuf::from("/tmp/x.db")
            }
        );
        assert_eq!(
            parse("sqlite://state.db").expect("relative"),
            Endpoint::Sqlite {
                path: PathBuf::from("/var/lib/rk3s/state.db")
            }
        );
    }

    #[test]
    fn mysql_k3s_form_is_rewritten() {
        assert_eq!(
            parse("mysql://root:pw@tcp(127.0.0.1:3306)/k3s").expect("mysql"),
            Endpoint::Mysql {
                url: "mysql://root:pw@127.0.0.1:3306/k3s".into()
            }
        );
        assert_eq!(
            parse("mysql://root@127.0.0.1:3306/k3s").expect("mysql url"),
            Endpoint::Mysql {
                url: "mysql://root@127.0.0.1:3306/k3s".into()
            }
        );
        assert!(
            parse("mysql://root@tcp(127.0.0.1:3306)/").is_err(),
            "no database"
        );
    }

    #[test]
    fn etcd_lists() {
        assert_eq!(
            parse("https://a:2379,b:2379").expect("etcd"),
            Endpoint::Etcd {
                endpoints: vec!["https://a:2379".into(), "https://b:2379".into()]
            }
        );
        assert_eq!(
            parse("http://a:2379,http://b:2379/").expect("etcd"),
            Endpoint::Etcd {
                endpoints: vec!["http://a:2379".into(), "http://b:2379".into()]
            }
        );
    }

    #[test]
    fn errors_name_the_endpoint_without_password() {
        let err = parse("redis://u:secret@h:1/0")
            .expect_err("unknown scheme")
            .to_string();
        assert!(err.contains("redis://u:***@h:1/0"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(parse("no-scheme").is_err());
        let err = parse("https://root:pw@h:2379")
            .expect_err("etcd credentials")
            .to_string();
        assert!(
            err.contains("client certificates") && !err.contains("pw@"),
            "{err}"
        );
        assert!(parse("postgres://").is_err());
    }

    #[test]
    fn redacted_display() {
        let e = parse("postgres://user:hunter2@db:5432/k").expect("pg");
        assert_eq!(e.to_string(), "postgres://user:***@db:5432/k");
    }
}
