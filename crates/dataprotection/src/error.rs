use crate::ProtectionClass;

/// Everything that can go wrong in this crate. Messages are meant for people:
/// callers add the file name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The keybag ended in the middle of a record.
    #[error("keybag truncated at byte {offset}: record needs {needed} bytes, {available} left")]
    KeybagTruncated {
        /// Byte offset of the record.
        offset: usize,
        /// Bytes the record claims.
        needed: usize,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// A tag is not four printable ASCII characters.
    #[error("keybag has an invalid tag {tag:02x?} at byte {offset}")]
    KeybagBadTag {
        /// Byte offset of the record.
        offset: usize,
        /// The raw tag bytes.
        tag: [u8; 4],
    },
    /// A known tag has a value of the wrong length.
    #[error("keybag tag {tag} at byte {offset} has length {len}, expected {expected}")]
    KeybagBadLength {
        /// The tag.
        tag: String,
        /// Byte offset of the record.
        offset: usize,
        /// Its length.
        len: usize,
        /// What the format requires.
        expected: &'static str,
    },
    /// A class record is malformed: a class given twice, a `WPKY` of the wrong length.
    #[error("keybag class record at byte {offset} (class {class}): {field} {reason}")]
    KeybagBadClass {
        /// Byte offset of the record.
        offset: usize,
        /// Its class (high bits masked).
        class: u32,
        /// The field at fault (`CLAS`, `WPKY`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A field the operation needs is absent.
    #[error("keybag has no {0}")]
    KeybagMissing(&'static str),
    /// An iteration count read from the file is beyond the configured cap.
    #[error("keybag asks for {value} {what} iterations, more than the cap of {max}; refusing (a real backup uses 10,000,000 / 10,000)")]
    KdfTooExpensive {
        /// Which count (`DPIC` or `ITER`).
        what: &'static str,
        /// The value in the file.
        value: u64,
        /// The cap in force.
        max: u64,
    },
    /// An iteration count of zero or a salt of zero length.
    #[error("keybag KDF parameters are invalid: {0}")]
    KdfInvalid(&'static str),
    /// The password (or derived key) does not unwrap the class keys.
    #[error("wrong password or key: the class keys do not unwrap")]
    WrongPassword,
    /// A key failed the RFC 3394 integrity check.
    #[error("key unwrap failed (integrity check): wrong key or damaged data")]
    UnwrapFailed,
    /// A wrapped key has the wrong length.
    #[error("wrapped key has {0} bytes, expected 40")]
    WrappedKeyLength(usize),
    /// A class key is sealed with the device key 0x835, which was not given.
    #[error("class {0} is sealed to the original device (key 0x835 needed)")]
    NeedsDeviceKey(ProtectionClass),
    /// No key for this class is in the keybag.
    #[error("no class key for {0}")]
    NoClassKey(ProtectionClass),
    /// A key type this crate cannot unwrap.
    #[error("class {class} uses key type {ktyp}, which is not supported here")]
    UnsupportedKeyType {
        /// The class.
        class: ProtectionClass,
        /// Its KTYP.
        ktyp: u32,
    },
    /// Hex input is not valid.
    #[error("invalid hex key: {0}")]
    BadHex(String),
    /// Ciphertext length is not a positive multiple of the block size.
    #[error("ciphertext length {0} is not a multiple of 16")]
    CiphertextLength(u64),
    /// PKCS7 padding is invalid after decryption.
    #[error("invalid PKCS7 padding (wrong key or damaged data)")]
    BadPadding,
    /// An AES-GCM tag does not match (wrong key or damaged data).
    #[error("AES-GCM tag mismatch (wrong key or damaged data)")]
    TagMismatch,
}
