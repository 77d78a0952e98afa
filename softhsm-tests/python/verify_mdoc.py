"""Verify a Dojang mdoc with pymdoccbor (an implementation we did not write).

usage: verify_mdoc.py CREDENTIAL_FILE IACA_PEM DOCTYPE
CREDENTIAL_FILE holds base64url CBOR IssuerSigned. Exit 0 and print the
disclosed elements as JSON if the issuer signature, the chain to the IACA and
every element digest verify; exit 1 otherwise.
"""
import base64
import json
import sys

import cbor2
from cryptography import x509
from pymdoccbor.mdoc.verifier import MobileDocument


def b64url(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def main() -> int:
    credential, iaca_pem, doctype = sys.argv[1:4]
    issuer_signed = cbor2.loads(b64url(open(credential).read()))
    iaca = x509.load_pem_x509_certificate(open(iaca_pem, "rb").read())
    try:
        doc = MobileDocument(docType=doctype, issuerSigned=issuer_signed)
        valid = doc.verify(trusted_root_certs=[iaca], verify_hashes=True)
    except Exception as exc:  # any refusal is a failed verification
        print(json.dumps({"valid": False, "error": repr(exc)}))
        return 1
    mso = doc.issuersigned.issuer_auth.payload_as_dict
    elements = {}
    for ns, items in issuer_signed["nameSpaces"].items():
        for tagged in items:
            item = cbor2.loads(tagged.value)
            value = item["elementValue"]
            if isinstance(value, cbor2.CBORTag):
                value = value.value
            elements[item["elementIdentifier"]] = value if not isinstance(value, bytes) else value.hex()
    print(json.dumps({"valid": bool(valid), "docType": mso["docType"], "elements": elements},
                     ensure_ascii=False, default=str))
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
