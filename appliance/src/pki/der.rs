//! The few DER encodings rcgen does not write for us (IssuerAltName, a
//! critical ExtendedKeyUsage), built by hand: short, and tested below.

/// A DER TLV with a definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// OID 1.0.18013.5.1.2, id-mdl-kp-mdlDS (ISO/IEC 18013-5 Annex B), as arcs.
pub(crate) const OID_MDL_DS_ARCS: &[u64] = &[1, 0, 18013, 5, 1, 2];
/// The same OID, DER content octets.
pub(crate) const OID_MDL_DS: &[u8] = &[0x28, 0x81, 0x8c, 0x5d, 0x05, 0x01, 0x02];
/// id-ce-extKeyUsage (2.5.29.37).
pub(crate) const OID_EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
/// id-ce-subjectKeyIdentifier (2.5.29.14).
pub(crate) const OID_SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];
/// id-ce-issuerAltName (2.5.29.18).
pub(crate) const OID_ISSUER_ALT_NAME: &[u64] = &[2, 5, 29, 18];

/// ExtKeyUsageSyntax with the mdoc document-signer purpose only.
pub(crate) fn eku_mdl_ds() -> Vec<u8> {
    tlv(0x30, &tlv(0x06, OID_MDL_DS))
}

/// GeneralNames with one name: an e-mail address (rfc822Name, `[1]`) when
/// it has an `@` and no scheme, else a URI (`[6]`).
pub(crate) fn general_names(name: &str) -> Vec<u8> {
    let tag = if name.contains('@') && !name.contains(':') {
        0x81
    } else {
        0x86
    };
    tlv(0x30, &tlv(tag, name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eku_matches_the_annex_b_encoding() {
        assert_eq!(
            eku_mdl_ds(),
            [
                0x30, 0x09, 0x06, 0x07, 0x28, 0x81, 0x8c, 0x5d, 0x05, 0x01, 0x02
            ]
        );
    }

    #[test]
    fn general_names_pick_the_right_choice() {
        assert_eq!(general_names("a@b.kr")[2], 0x81);
        assert_eq!(general_names("https://id.example.kr")[2], 0x86);
        assert_eq!(general_names("mailto:a@b.kr")[2], 0x86);
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let content = vec![0u8; 300];
        let out = tlv(0x04, &content);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(out.len(), 304);
    }
}
