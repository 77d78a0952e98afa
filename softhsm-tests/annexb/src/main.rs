//! `annexb-validate IACA.pem DS.pem…`: validates each DS certificate's
//! chain to the IACA under ISO/IEC 18013-5 Annex B with isomdl's
//! `ValidationRuleset::Mdl`; prints each verdict, exits 1 if any failed.

#![forbid(unsafe_code)]

use der::DecodePem;
use isomdl::definitions::x509::trust_anchor::{TrustAnchor, TrustAnchorRegistry, TrustPurpose};
use isomdl::definitions::x509::validation::ValidationRuleset;
use isomdl::definitions::x509::X5Chain;
use x509_cert::Certificate;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((root, signers)) = args.split_first() else {
        eprintln!("usage: annexb-validate IACA.pem DS.pem...");
        return std::process::ExitCode::from(2);
    };
    let read = |path: &str| std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let anchors = TrustAnchorRegistry {
        anchors: vec![TrustAnchor {
            certificate: Certificate::from_pem(read(root)).expect("IACA PEM"),
            purpose: TrustPurpose::Iaca,
        }],
    };
    let mut failed = false;
    for signer in signers {
        let chain = X5Chain::builder()
            .with_pem_certificate(&read(signer))
            .and_then(|b| b.build())
            .expect("DS PEM");
        let outcome = ValidationRuleset::Mdl.validate(&chain, &anchors);
        if outcome.success() {
            println!("{signer}: valid (ISO 18013-5 Annex B, isomdl ValidationRuleset::Mdl)");
        } else {
            failed = true;
            println!("{signer}: INVALID: {}", outcome.errors.join("; "));
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
