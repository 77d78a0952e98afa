//! The shim's one error type. Every variant says which operation failed and
//! keeps the device's own code (PKCS#11 function + CKR, TPM response code) so a
//! field problem can be diagnosed; [`Error::class`] tells callers what to do.
//! Messages never contain a PIN, key material or a key handle.

use std::time::Duration;

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Transient: try again (the same call may succeed now).
    Retryable,
    /// The device or its connection went away; the backend is reconnecting.
    /// Retry later: the call will succeed once recovery completes.
    DeviceLost,
    /// The named key does not exist (or no longer exists) in the token.
    KeyMissing,
    /// The caller asked for something invalid; retrying will not help.
    InvalidRequest,
    /// Misconfiguration, refused login or a broken device: an operator must act.
    Fatal,
}

impl ErrorClass {
    /// Whether the same request may succeed later without anybody acting.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Retryable | ErrorClass::DeviceLost)
    }
}

/// An error from a key backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A PKCS#11 call failed.
    #[error("PKCS#11 {function} failed: {rv}")]
    Pkcs11 {
        /// The PKCS#11 function, e.g. `Sign`.
        function: String,
        /// The CKR code's name, e.g. `CKR_DEVICE_REMOVED`.
        rv: String,
        /// What to do about it.
        class: ErrorClass,
    },
    /// A TPM command failed.
    #[error("TPM {operation} failed: {detail}")]
    Tpm {
        /// The operation, e.g. `sign`.
        operation: &'static str,
        /// The TSS/TPM response code, rendered.
        detail: String,
        /// What to do about it.
        class: ErrorClass,
    },
    /// No key with this label.
    #[error("no key labelled {label:?} in the token")]
    KeyNotFound {
        /// The label asked for.
        label: String,
    },
    /// A key with this label exists already; labels are unique.
    #[error("a key labelled {label:?} already exists")]
    KeyExists {
        /// The label asked for.
        label: String,
    },
    /// The key exists but does not carry the attributes Dojang requires.
    #[error("key {label:?} refused: {attribute} is {actual}, Dojang requires {required}")]
    KeyPolicy {
        /// The key's label.
        label: String,
        /// The offending attribute, e.g. `CKA_EXTRACTABLE`.
        attribute: &'static str,
        /// What the token reported.
        actual: String,
        /// What Dojang requires.
        required: String,
    },
    /// The key was made for another purpose than the caller signs for (a
    /// DS key asked to sign a status list, the IACA asked to sign an MSO).
    #[error("key {label:?} is a {actual} key; it does not sign as {expected}")]
    WrongPurpose {
        /// The key's label.
        label: String,
        /// The purpose the key was made with (`KeyPurpose::name`).
        actual: &'static str,
        /// The purpose the caller signs for.
        expected: &'static str,
    },
    /// The algorithm is not offered by this token (or this backend).
    #[error("algorithm {algorithm} is not supported by {backend}")]
    Unsupported {
        /// The algorithm asked for.
        algorithm: String,
        /// Which backend refused it.
        backend: String,
    },
    /// The operation is not allowed with this key (e.g. signing with an HMAC key).
    #[error("key {label:?} is a {actual} key; this operation needs a {expected} key")]
    WrongKeyType {
        /// The key's label.
        label: String,
        /// What the key is.
        actual: String,
        /// What the operation needs.
        expected: String,
    },
    /// Bad input from the caller (empty or oversized data, malformed label…).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The token rejected the PIN. The PIN itself is never part of the message.
    #[error("the token refused the user PIN ({rv})")]
    PinRejected {
        /// The CKR code's name.
        rv: String,
    },
    /// The backend is down and recovering; no call reached the device.
    #[error("key backend unavailable ({reason}); retry in {retry_after:?}")]
    Unavailable {
        /// Why (the last device error).
        reason: String,
        /// When a retry is worth it.
        retry_after: Duration,
    },
    /// Every session in the pool stayed busy for the whole wait.
    #[error("all {pool_size} token sessions stayed busy for {waited:?}")]
    Busy {
        /// Sessions in the pool.
        pool_size: usize,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The configured token was not found among the module's slots.
    #[error("no token matching {selector} (tokens seen: {seen})")]
    TokenNotFound {
        /// The configured selector, e.g. `label "dojang"`.
        selector: String,
        /// Labels of the tokens present.
        seen: String,
    },
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A file the backend needs could not be read or written.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error (in the message, not a chained source: printed once).
        cause: std::io::Error,
    },
    /// Building or parsing public-key structures failed.
    #[error("public key encoding: {0}")]
    Encoding(String),
}

impl Error {
    /// What a caller should do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Pkcs11 { class, .. } | Error::Tpm { class, .. } => *class,
            Error::KeyNotFound { .. } => ErrorClass::KeyMissing,
            Error::KeyExists { .. }
            | Error::Unsupported { .. }
            | Error::WrongKeyType { .. }
            | Error::WrongPurpose { .. }
            | Error::InvalidInput(_) => ErrorClass::InvalidRequest,
            Error::Unavailable { .. } => ErrorClass::DeviceLost,
            Error::Busy { .. } => ErrorClass::Retryable,
            Error::KeyPolicy { .. }
            | Error::PinRejected { .. }
            | Error::TokenNotFound { .. }
            | Error::Config(_)
            | Error::Io { .. }
            | Error::Encoding(_) => ErrorClass::Fatal,
        }
    }

    /// Whether the same call may succeed later without anybody acting.
    pub fn is_retryable(&self) -> bool {
        self.class().is_retryable()
    }

    pub(crate) fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            cause,
        }
    }
}

/// The shim's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
