"""Verify a Dojang SD-JWT VC with the sd-jwt package (not ours).

usage: verify_sdjwt.py CREDENTIAL_FILE DS_CERT_PEM
Exit 0 and print the processed payload as JSON if the issuer signature and
every disclosure verify; exit 1 otherwise.
"""
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jwcrypto.jwk import JWK
from sd_jwt.verifier import SDJWTVerifier


def main() -> int:
    credential, ds_pem = sys.argv[1:3]
    sd_jwt = open(credential).read().strip()
    cert = x509.load_pem_x509_certificate(open(ds_pem, "rb").read())
    key = JWK.from_pem(cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    try:
        verifier = SDJWTVerifier(sd_jwt, lambda issuer, header: key)
        payload = verifier.get_verified_payload()
    except Exception as exc:
        print(json.dumps({"valid": False, "error": repr(exc)}))
        return 1
    print(json.dumps({"valid": True, "payload": payload}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
