//! Turns cryptoki errors into [`Error`]s that keep the PKCS#11 function and
//! CKR code and say what to do: retry, reconnect, or give up.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

use crate::error::{Error, ErrorClass};

/// What a CKR code means for the caller.
pub(crate) fn class_of(rv: RvError) -> ErrorClass {
    use RvError::*;
    match rv {
        // The device, its connection or our login went away: reconnect.
        DeviceRemoved
        | DeviceError
        | TokenNotPresent
        | TokenNotRecognized
        | SessionHandleInvalid
        | SessionClosed
        | ObjectHandleInvalid
        | CryptokiNotInitialized
        | UserNotLoggedIn
        | SlotIdInvalid => ErrorClass::DeviceLost,
        // Momentary resource pressure.
        DeviceMemory | HostMemory | SessionCount | OperationActive | FunctionCanceled => {
            ErrorClass::Retryable
        }
        KeyHandleInvalid => ErrorClass::KeyMissing,
        DataLenRange
        | DataInvalid
        | MechanismInvalid
        | MechanismParamInvalid
        | AttributeValueInvalid
        | TemplateInconsistent
        | TemplateIncomplete
        | DomainParamsInvalid
        | CurveNotSupported
        | KeyTypeInconsistent
        | KeyFunctionNotPermitted => ErrorClass::InvalidRequest,
        _ => ErrorClass::Fatal,
    }
}

/// `CKR_DEVICE_REMOVED` from `DeviceRemoved`: the spec's name, greppable.
pub(crate) fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for ch in camel.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// Maps a cryptoki error from `function` (used when cryptoki gives none).
pub(crate) fn from_cryptoki(err: CkError, fallback: Function) -> Error {
    match err {
        CkError::Pkcs11(rv, function) => Error::Pkcs11 {
            function: format!("C_{function:?}"),
            rv: ckr_name(rv),
            class: class_of(rv),
        },
        other => Error::Pkcs11 {
            function: format!("C_{fallback:?}"),
            rv: other.to_string(),
            class: ErrorClass::Fatal,
        },
    }
}

/// [`from_cryptoki`] for `map_err`: `.map_err(ck(Function::Sign))`.
pub(crate) fn ck(function: Function) -> impl Fn(CkError) -> Error {
    move |e| from_cryptoki(e, function)
}

/// Whether a login error means the PIN itself was refused.
pub(crate) fn is_pin_rejection(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::PinIncorrect
            | RvError::PinInvalid
            | RvError::PinLenRange
            | RvError::PinLocked
            | RvError::PinExpired
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        assert_eq!(ckr_name(RvError::DeviceRemoved), "CKR_DEVICE_REMOVED");
        assert_eq!(
            ckr_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
    }

    #[test]
    fn device_loss_is_told_apart_from_bad_requests() {
        for rv in [
            RvError::DeviceRemoved,
            RvError::SessionHandleInvalid,
            RvError::TokenNotPresent,
            RvError::ObjectHandleInvalid,
        ] {
            assert_eq!(class_of(rv), ErrorClass::DeviceLost, "{rv:?}");
        }
        assert_eq!(class_of(RvError::DataLenRange), ErrorClass::InvalidRequest);
        assert_eq!(class_of(RvError::PinIncorrect), ErrorClass::Fatal);
        assert_eq!(class_of(RvError::SessionCount), ErrorClass::Retryable);
    }

    #[test]
    fn errors_keep_function_and_code() {
        let err = from_cryptoki(
            CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign),
            Function::Sign,
        );
        assert_eq!(err.to_string(), "PKCS#11 C_Sign failed: CKR_DEVICE_REMOVED");
        assert!(err.is_retryable());
    }
}
