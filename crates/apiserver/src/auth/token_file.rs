//! `--token-auth-file`: static bearer tokens in upstream's CSV format, one per line:
//! `token,user,uid[,"group1,group2,..."]`. Blank lines are skipped; a line with fewer than three
//! fields or a repeated token is an error (the server does not start).

use std::collections::HashMap;
use std::path::Path;

use super::UserInfo;
use crate::error::{Error, Result};

/// Reads the token file.
pub(crate) fn load(path: &Path) -> Result<HashMap<String, UserInfo>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
}

pub(crate) fn parse(text: &str) -> std::result::Result<HashMap<String, UserInfo>, String> {
    let mut tokens = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields = csv_fields(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        if fields.len() < 3 {
            return Err(format!(
                "line {}: token file needs at least 3 columns, found {}",
                n + 1,
                fields.len()
            ));
        }
        let groups = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let user = UserInfo {
            name: fields[1].clone(),
            uid: fields[2].clone(),
            groups,
            ..UserInfo::default()
        };
        if tokens.insert(fields[0].clone(), user).is_some() {
            return Err(format!("line {}: duplicate token", n + 1));
        }
    }
    Ok(tokens)
}

/// The fields of one CSV line (RFC 4180 quoting).
fn csv_fields(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_format() {
        let t = parse("abc,alice,1001,\"dev,ops\"\n\ndef,bob,1002\n").unwrap();
        assert_eq!(t["abc"].name, "alice");
        assert_eq!(t["abc"].uid, "1001");
        assert_eq!(t["abc"].groups, ["dev", "ops"]);
        assert!(t["def"].groups.is_empty());
        assert!(parse("abc,alice\n").is_err());
        assert!(parse("a,b,c\na,d,e\n").is_err());
    }
}
