//! Secrets a job is handed by its operator (issue 14): named values read from files the
//! operator controls (a manifest's `[secrets]`), such as an S3 key pair or a repository
//! key, given to the job only through the `secrets` interface and only by the names it was
//! handed.
//!
//! The host keeps the values out of everything it writes for the job ([`Redactor`]): the
//! job's printed lines, progress labels, its error message, the audit log and the `--json`
//! report show `[secret NAME]` where a value would be. That catches the accidental leak (a
//! job printing its configuration, an error quoting a URL with a key in it); a job that
//! means to leak a secret can encode it first, so a secret goes only to jobs trusted with
//! it, and leaves only through the endpoints and the output directory the job is granted.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The largest secret file read.
pub const MAX_SECRET_BYTES: u64 = 64 << 10;
/// The shortest secret taken: a shorter value could not be kept out of output without
/// mangling ordinary text.
pub const MIN_SECRET_BYTES: usize = 8;
/// Most secrets one job may be handed.
pub const MAX_SECRETS: usize = 64;

/// A job's secrets, by name. Its `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, Arc<[u8]>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl PartialEq for Secrets {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl Secrets {
    /// Read each named file: its bytes, less one trailing newline (`echo KEY > file` is how
    /// such files are made). Refused with the name and the file, never the content: a name
    /// that is not `[A-Za-z0-9._-]{1,64}`, a file that cannot be read, is larger than
    /// [`MAX_SECRET_BYTES`] or shorter than [`MIN_SECRET_BYTES`].
    pub fn load<'a>(named: impl IntoIterator<Item = (&'a str, &'a Path)>) -> Result<Secrets, String> {
        use std::io::Read;
        let mut values = BTreeMap::new();
        for (name, path) in named {
            let name_ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !name_ok {
                return Err(format!("secret name {name:?}: use letters, digits, '.', '_' and '-', at most 64"));
            }
            let fail = |why: String| format!("secret {name} ({}): {why}", path.display());
            let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
            let mut bytes = Vec::new();
            file.take(MAX_SECRET_BYTES + 1).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
            if bytes.len() as u64 > MAX_SECRET_BYTES {
                return Err(fail(format!("larger than {MAX_SECRET_BYTES} bytes")));
            }
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            if bytes.len() < MIN_SECRET_BYTES {
                return Err(fail(format!("shorter than {MIN_SECRET_BYTES} bytes")));
            }
            values.insert(name.to_owned(), Arc::from(bytes));
        }
        if values.len() > MAX_SECRETS {
            return Err(format!("{} secrets; a job may be handed at most {MAX_SECRETS}", values.len()));
        }
        Ok(Secrets { values })
    }

    /// The names handed, sorted.
    pub fn names(&self) -> Vec<String> {
        self.values.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.values.get(name).map(|v| &v[..])
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// What keeps these values out of text the host writes.
    pub fn redactor(&self) -> Redactor {
        let mut patterns = Vec::new();
        for (name, value) in &self.values {
            // A value that is not UTF-8 cannot appear as itself in text (the host shows
            // invalid UTF-8 as U+FFFD).
            let Ok(text) = std::str::from_utf8(value) else { continue };
            let escaped = serde_json::to_string(text).unwrap_or_default();
            let escaped = escaped.trim_matches('"').to_owned();
            let mut forms = vec![text.to_owned()];
            if escaped != text {
                forms.push(escaped);
            }
            // Made safe for a terminal, as output lines and labels are before they are shown.
            let safe = crate::output::terminal_safe(text).into_owned();
            if safe != text {
                forms.push(safe);
            }
            patterns.push((format!("[secret {name}]"), forms));
        }
        // Longest first, so a secret that contains another is replaced whole.
        patterns.sort_by_key(|(_, forms)| std::cmp::Reverse(forms[0].len()));
        Redactor { patterns: Arc::new(patterns) }
    }
}

/// Replaces secret values in text with `[secret NAME]`: as they are, JSON-escaped, and
/// escaped for a terminal. Cheap to clone; without secrets it returns its input.
#[derive(Clone, Default)]
pub struct Redactor {
    patterns: Arc<Vec<(String, Vec<String>)>>,
}

impl Redactor {
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for (label, forms) in self.patterns.iter() {
            for form in forms {
                if out.contains(form.as_str()) {
                    out = Cow::Owned(out.replace(form.as_str(), label));
                }
            }
        }
        out
    }
}

/// The `secrets` interface: each call is an operation, and every `get` is audited by name
/// (method `secrets.get`, operation `secret`; `grant` says whether the name was handed).
impl crate::bindings::ceph::rbd::secrets::Host for crate::rbd::RbdView<'_> {
    async fn names(&mut self) -> wasmtime::Result<Vec<String>> {
        crate::rbd::trap_on_quota(self.ctx.meter().operation())?;
        Ok(self.ctx.secrets.names())
    }

    async fn get(&mut self, name: String) -> Result<Vec<u8>, crate::rbd::HostError> {
        self.ctx.meter().operation()?;
        let shown = crate::audit::cut(&crate::output::terminal_safe(&name), crate::audit::MAX_FIELD_BYTES).into_owned();
        let found = self.ctx.secrets.get(&name).map(<[u8]>::to_vec);
        let result = found.ok_or_else(|| rbd_backend::Error::NotFound(format!("no secret {shown:?} was handed to this job")));
        let target = crate::audit::Target {
            pool: "-",
            image: Some(&shown),
            method: "secrets.get",
            operation: "secret",
            grant: if result.is_ok() { "handed" } else { "none" },
        };
        self.ctx.audit().record(&target, &result.as_ref().map(|_| ()).map_err(Clone::clone)).await;
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn files_are_read_less_one_newline_and_bad_ones_refused_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let key = write(dir.path(), "key", b"AKIAEXAMPLEKEY\n");
        let s = Secrets::load([("s3-access-key", key.as_path())]).unwrap();
        assert_eq!(s.get("s3-access-key"), Some(&b"AKIAEXAMPLEKEY"[..]));
        assert_eq!(s.get("other"), None);
        assert_eq!(format!("{s:?}"), "{\"s3-access-key\"}");

        let short = write(dir.path(), "short", b"abc\n");
        let e = Secrets::load([("pin", short.as_path())]).unwrap_err();
        assert!(e.contains("shorter than 8") && !e.contains("abc"), "{e}");
        let big = write(dir.path(), "big", &vec![b'x'; (MAX_SECRET_BYTES + 1) as usize]);
        assert!(Secrets::load([("big", big.as_path())]).unwrap_err().contains("larger than"));
        assert!(Secrets::load([("a/b", key.as_path())]).unwrap_err().contains("secret name"));
        assert!(Secrets::load([("gone", dir.path().join("missing").as_path())]).unwrap_err().contains("gone"));
    }

    #[test]
    fn the_redactor_replaces_every_form_of_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let plain = write(dir.path(), "plain", b"wJalrXUtnFEMI/K7MDENG");
        let quoted = write(dir.path(), "quoted", b"pass\"word\x1b!");
        let s = Secrets::load([("secret-key", plain.as_path()), ("repo", quoted.as_path())]).unwrap();
        let r = s.redactor();
        assert_eq!(r.redact("key=wJalrXUtnFEMI/K7MDENG end"), "key=[secret secret-key] end");
        assert_eq!(r.redact(&serde_json::to_string("pass\"word\x1b!").unwrap()), "\"[secret repo]\"");
        assert_eq!(r.redact(&crate::output::terminal_safe("pass\"word\x1b!")), "[secret repo]");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
        assert!(matches!(Redactor::default().redact("x"), Cow::Borrowed(_)));
    }
}
