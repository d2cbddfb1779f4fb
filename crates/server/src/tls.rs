//! TLS: the operator's certificate (`--tls-cert`/`--tls-key`), or a self-signed one made at
//! first start and kept in the data folder. Clients pin its SHA-256 fingerprint.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The SHA-256 of a certificate's DER bytes, as lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The first certificate of a PEM file, as DER.
pub fn first_cert_der(pem: &[u8]) -> Result<Vec<u8>> {
    let text =
        std::str::from_utf8(pem).map_err(|_| Error::Config("certificate is not PEM".into()))?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = text
        .find(begin)
        .ok_or_else(|| Error::Config("no certificate in the PEM file".into()))?;
    let stop = text[start..]
        .find(end)
        .ok_or_else(|| Error::Config("unterminated certificate in the PEM file".into()))?;
    let b64: String = text[start + begin.len()..start + stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| Error::Config(format!("certificate PEM: {e}")))
}

/// The certificate and key files to serve with: the operator's, or the self-signed pair in
/// `data_dir/tls/` (made when missing, for `names` such as `localhost` and `127.0.0.1`).
pub fn ensure(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    names: &[String],
) -> Result<(PathBuf, PathBuf)> {
    if let (Some(c), Some(k)) = (cert, key) {
        return Ok((c.to_path_buf(), k.to_path_buf()));
    }
    if cert.is_some() || key.is_some() {
        return Err(Error::Config("--tls-cert and --tls-key go together".into()));
    }
    let dir = data_dir.join("tls");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    if c.is_file() && k.is_file() {
        return Ok((c, k));
    }
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| Error::Config(format!("self-signed certificate: {e}")))?;
    write_private(&k, made.signing_key.serialize_pem().as_bytes())?;
    write_private(&c, made.cert.pem().as_bytes())?;
    Ok((c, k))
}

/// Writes a file readable by its owner only (tempfile makes it 0600), through a rename.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("in a folder");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir))?;
    tmp.write_all(bytes).map_err(Error::io(path))?;
    tmp.persist(path).map_err(|e| Error::io(path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_fingerprinted() {
        let d = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (c, k) = ensure(d.path(), None, None, &names).unwrap();
        let first = std::fs::read(&c).unwrap();
        let (c2, _) = ensure(d.path(), None, None, &names).unwrap();
        assert_eq!(std::fs::read(c2).unwrap(), first);
        let der = first_cert_der(&first).unwrap();
        assert_eq!(fingerprint(&der).len(), 64);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
