//! Turns tss-esapi errors into [`Error`]s that name the TPM operation and
//! say what to do: reconnect when the TPM lost our objects, otherwise give
//! up (or let `with_tpm` settle it with a probe).

use crate::error::{Error, ErrorClass};

/// Maps an error from `operation`, classified by [`classify`].
pub(crate) fn tpm_err(operation: &'static str) -> impl Fn(tss_esapi::Error) -> Error {
    move |e| Error::Tpm {
        operation,
        detail: e.to_string(),
        class: classify(e),
    }
}

/// Errors naming handles the TPM no longer has (it was reset or restarted)
/// mean our objects are gone: reconnect. Other TPM errors are settled by a
/// probe in `with_tpm` (a TPM that answers was not lost); they are marked
/// `Retryable` until then.
fn classify(e: tss_esapi::Error) -> ErrorClass {
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind as K;
    match e {
        tss_esapi::Error::WrapperError(_) => ErrorClass::Fatal,
        tss_esapi::Error::Tss2Error(rc) => match rc.kind() {
            Some(
                K::Initialize
                | K::ReferenceH0
                | K::ReferenceH1
                | K::ReferenceH2
                | K::ReferenceH3
                | K::ReferenceH4
                | K::ReferenceH5
                | K::ReferenceH6
                | K::ReferenceS0
                | K::ReferenceS1
                | K::ReferenceS2
                | K::ReferenceS3
                | K::ReferenceS4
                | K::ReferenceS5
                | K::ReferenceS6,
            ) => ErrorClass::DeviceLost,
            _ => ErrorClass::Retryable,
        },
    }
}

/// Maps an error from `operation` that no retry can fix (building a
/// structure, reading a blob).
pub(crate) fn wrap(operation: &'static str) -> impl Fn(tss_esapi::Error) -> Error {
    move |e| Error::Tpm {
        operation,
        detail: e.to_string(),
        class: ErrorClass::Fatal,
    }
}
