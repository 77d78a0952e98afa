#!/usr/bin/env bash
# `make demo`: a first key ceremony on a fresh SoftHSM token under .demo/.
# A second run reuses the token and its keys; `make demo-clean` removes them.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
state="$root/.demo"
bin="$root/target/debug"

module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
  [ -e "$m" ] && module="$m" && break
done
[ -n "$module" ] || { echo "demo: SoftHSM module not found (make deps)"; exit 1; }

mkdir -p "$state/tokens"
chmod 700 "$state"
export SOFTHSM2_CONF="$state/softhsm2.conf"
if [ ! -f "$SOFTHSM2_CONF" ]; then
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$state/tokens" > "$SOFTHSM2_CONF"
fi
if [ ! -f "$state/pin" ]; then
  # A random dev PIN, kept in a 0600 file: never on a command line or in the config.
  (umask 077; openssl rand -hex 8 > "$state/pin"; openssl rand -hex 8 > "$state/so-pin")
fi
if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*dojang-demo"; then
  echo "== creating SoftHSM token 'dojang-demo' in $state/tokens"
  softhsm2-util --init-token --free --label dojang-demo \
    --pin "$(cat "$state/pin")" --so-pin "$(cat "$state/so-pin")" >/dev/null
fi
# The officers' own tokens (smartcards in production): a SoftHSM
# configuration the daemon never sees, one token per officer, each holding
# a non-extractable approval key. The policy pins those keys.
officers="$state/officers"
mkdir -p "$officers/tokens"
if [ ! -f "$officers/softhsm2.conf" ]; then
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$officers/tokens" > "$officers/softhsm2.conf"
  (umask 077; openssl rand -hex 8 > "$officers/pin"; openssl rand -hex 8 > "$officers/so-pin")
fi
officer_token() { local who=$1; shift; SOFTHSM2_CONF="$officers/softhsm2.conf" "$bin/dojangctl" \
  --officer-token "officer-$who" --officer-module "$module" --officer-pin-file "$officers/pin" "$@"; }
if [ ! -f "$state/policy.toml" ]; then
  echo "== officers kim, lee and park enroll: an approval key in each one's token, pinned in the policy"
  cp "$root/policies/kr-mobile-resident-card.toml" "$state/policy.toml.new"
  for who in kim lee park; do
    SOFTHSM2_CONF="$officers/softhsm2.conf" softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*officer-$who" ||
      SOFTHSM2_CONF="$officers/softhsm2.conf" softhsm2-util --init-token --free --label "officer-$who" \
        --pin "$(cat "$officers/pin")" --so-pin "$(cat "$officers/so-pin")" >/dev/null
    { echo; officer_token "$who" officer enroll --identity "spiffe://mois.go.kr/officer/$who"; } >> "$state/policy.toml.new"
  done
  mv "$state/policy.toml.new" "$state/policy.toml"
  cp "$state/policy.toml" "$state/first-policy.toml"
fi
cat > "$state/dojang.toml" <<TOML
# Dojang dev configuration written by make demo.
[keys]
backend = "pkcs11"

[keys.pkcs11]
module = "$module"
token_label = "dojang-demo"
pin = { file = "$state/pin" }

[pki]
dir = "$state/pki"
country = "KR"
organization = "Dojang Demo Issuing Authority"
iaca_common_name = "Dojang Demo IACA"
issuer_alt_name = "https://dojang.example.kr"
crl_url = "http://127.0.0.1:8080/iaca.crl"
# The IACA key lives in an offline token no daemon configuration names
# (.demo/offline here; an offline HSM in production): officers' ceremonies
# certify the DS keys the daemon generates ahead of need.
iaca_custody = "offline"
spare_keys = 2

[credential]
issuer = "https://dojang.example.kr"
issuing_authority = "서울특별시 종로구청장"

[server]
node_id = "demo-1"
policy = "$state/policy.toml"
# The first policy's SHA-256, pinned here at the key ceremony: every adopted
# policy must descend from it (the registry alone cannot say).
policy_anchor = "$(sha256sum "$state/first-policy.toml" | cut -d' ' -f1)"

[server.api]
listen = "127.0.0.1:8443"
certificate = "$state/tls/server.pem"
# The API's TLS key is in the token: no key file to copy.
private_key_label = "tls-server-1"
client_ca = "$state/tls/ca.pem"
client_crls = ["$state/tls/crl.pem"]

[server.public]
listen = "127.0.0.1:8080"
base_url = "http://127.0.0.1:8080"

[server.ops]
listen = "127.0.0.1:9464"

# OpenID4VCI for holders' wallets (docs/wallet.md): TLS, no client certificate.
[server.wallet]
listen = "127.0.0.1:8444"
base_url = "https://localhost:8444"
certificate = "$state/tls/wallet.pem"
private_key = "$state/tls/wallet.key"

[server.audit]
origin = "dojang.example.kr/demo-audit"
checkpoint_interval_ms = 1000

[store]
sqlite = "$state/registry.db"
# The log file laid out at start: the service's default is 1280 MiB (its
# commits then never grow the file); a demo keeps to 64.
sqlite_log_prewrite_mib = 64
TOML

ctl() { "$bin/dojangctl" --config "$state/dojang.toml" "$@"; }

# The offline IACA token: a SoftHSM configuration the daemon never sees.
offline="$state/offline"
mkdir -p "$offline/tokens"
if [ ! -f "$offline/softhsm2.conf" ]; then
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$offline/tokens" > "$offline/softhsm2.conf"
  (umask 077; openssl rand -hex 8 > "$offline/pin"; openssl rand -hex 8 > "$offline/so-pin")
  SOFTHSM2_CONF="$offline/softhsm2.conf" softhsm2-util --init-token --free --label dojang-iaca \
    --pin "$(cat "$offline/pin")" --so-pin "$(cat "$offline/so-pin")" >/dev/null
fi
# A ceremony: the record, kim's and lee's signatures with their own tokens,
# then the offline IACA token acts (only with M pinned officers' signatures).
ceremony() {
  local name=$1; shift
  local request=""; [ "${1:-}" = "--request" ] && request=$2
  ctl ceremony record --policy "$state/policy.toml" --out "$state/$name-record.json" "$@"
  local digest
  digest=$(python3 -c 'import hashlib,json,sys; r=json.load(open(sys.argv[1])); print(hashlib.sha256(json.dumps(r,separators=(",",":"),ensure_ascii=False).encode()).hexdigest())' "$state/$name-record.json")
  for who in kim lee; do
    officer_token "$who" --config "$state/dojang.toml" ceremony sign "$state/$name-record.json" \
      --policy "$state/policy.toml" --out "$state/$name-$who.sig" --expect "$digest"
  done
  SOFTHSM2_CONF="$offline/softhsm2.conf" ctl ceremony run "$state/$name-record.json" \
    "$state/$name-kim.sig" "$state/$name-lee.sig" --policy "$state/policy.toml" \
    --iaca-token dojang-iaca --iaca-module "$module" --iaca-pin-file "$offline/pin" \
    --out "$state/$name-response.json" ${request:+--request "$request"}
}

if [ ! -f "$state/pki/iaca.pem" ]; then
  echo "== root ceremony on the offline token dojang-iaca: officers kim and lee present"
  ceremony root --root
else
  echo "(reusing $state/pki)"
fi
# Read the list once: `grep -q` on a pipe would close it early.
keys=$(ctl keys list --json)
grep -q '"label": "status-list-1"' <<<"$keys" || ctl keys generate --label status-list-1 --purpose status-list
grep -q '"label": "audit-1"' <<<"$keys" || ctl keys generate --label audit-1 --purpose audit
grep -q '"label": "pseudonym"' <<<"$keys" || ctl keys generate --label pseudonym --purpose pseudonym --alg HS256
grep -q '"label": "response-seal"' <<<"$keys" || ctl keys generate --label response-seal --purpose response-seal --alg HS256
grep -q '"label": "tls-server-1"' <<<"$keys" || ctl keys generate --label tls-server-1 --purpose tls-server
if [ ! -f "$state/tls/kim.pem" ] || [ ! -f "$state/tls/wallet.pem" ]; then
  rm -rf "$state/tls"
  echo "== dev TLS PKI (CA, localhost server certificate for the token's TLS key, client identities: counter, gateway, auditor, officers kim/lee/park) in $state/tls"
  ctl dev-tls --dir "$state/tls" --server-key-label tls-server-1 \
    --client counter=spiffe://mois.go.kr/office-counter \
    --client gateway=spiffe://mois.go.kr/wallet-gateway \
    --client auditor=spiffe://mois.go.kr/auditor \
    --client kim=spiffe://mois.go.kr/officer/kim \
    --client lee=spiffe://mois.go.kr/officer/lee \
    --client park=spiffe://mois.go.kr/officer/park
fi

echo "== checking the configuration and the token"
"$bin/dojangd" validate --probe --config "$state/dojang.toml"
if ! ctl policy adopted >/dev/null 2>&1; then
  echo "== key ceremony: officers kim and lee sign the first policy with their tokens; it is adopted"
  hash=$(sha256sum "$state/policy.toml" | cut -d' ' -f1)
  for who in kim lee; do
    officer_token "$who" policy sign-first "$state/policy.toml" --out "$state/first-policy-$who.json" --expect "$hash"
  done
  ctl policy adopt-first "$state/policy.toml" "$state/first-policy-kim.json" "$state/first-policy-lee.json"
fi

echo
echo "== keys in the token"
ctl keys list
echo
echo "== the IACA root (its private key is only in the offline token)"
openssl x509 -in "$state/pki/iaca.pem" -noout -subject -dates

echo
echo "== starting dojangd (log: $state/dojangd.log)"
if [ -f "$state/dojangd.pid" ] && kill -0 "$(cat "$state/dojangd.pid")" 2>/dev/null; then
  kill -TERM "$(cat "$state/dojangd.pid")"
  for _ in $(seq 50); do kill -0 "$(cat "$state/dojangd.pid")" 2>/dev/null || break; sleep 0.1; done
fi
nohup "$bin/dojangd" serve --config "$state/dojang.toml" >> "$state/dojangd.log" 2>&1 &
echo $! > "$state/dojangd.pid"
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:9464/healthz >/dev/null && break
  kill -0 "$(cat "$state/dojangd.pid")" 2>/dev/null || { echo "dojangd exited:"; tail -20 "$state/dojangd.log"; exit 1; }
  sleep 0.1
done
officer() { local who=$1; shift; "$bin/dojangctl" --config "$state/dojang.toml" --api https://localhost:8443 \
  --ca "$state/tls/ca.pem" --officer-cert "$state/tls/$who.pem" --officer-key "$state/tls/$who.key" "$@"; }
if [ -f "$state/root-response.json" ] && [ ! -f "$state/root-response.imported" ]; then
  echo "== the root ceremony's record goes into the audit log"
  officer kim ceremony import "$state/root-response.json" && touch "$state/root-response.imported"
fi
sleep 1
if ! curl -sf http://127.0.0.1:9464/readyz >/dev/null; then
  echo "== DS ceremony: the daemon generated its spare DS keys in its token; officer kim exports the request"
  for _ in $(seq 50); do
    officer kim ceremony request --out "$state/ds-request.json" >/dev/null
    python3 -c 'import json,sys; sys.exit(len(json.load(open(sys.argv[1]))["keys"]) < 3)' "$state/ds-request.json" && break
    sleep 0.2
  done
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("request %s: %s" % (r["id"], ", ".join(k["label"] for k in r["keys"])))' "$state/ds-request.json"
  echo "-- at the offline IACA: officers kim and lee sign the record; the IACA certifies the keys and signs a CRL"
  ceremony ds --request "$state/ds-request.json"
  echo "-- back online: the daemon verifies the response (officers, chain, profile, keys, windows) and imports it"
  officer kim ceremony import "$state/ds-response.json"
  python3 -c 'import base64,json,sys; c=json.load(open(sys.argv[1]))["certificates"][0]["certificate"]
open(sys.argv[2],"w").write("-----BEGIN CERTIFICATE-----\n"+"\n".join(c[i:i+64] for i in range(0,len(c),64))+"\n-----END CERTIFICATE-----\n")' \
    "$state/ds-response.json" "$state/ds-certified.pem"
  openssl verify -x509_strict -CAfile "$state/pki/iaca.pem" "$state/ds-certified.pem"
  echo "-- and an independent ISO 18013-5 Annex B validator (isomdl ValidationRuleset::Mdl):"
  "$root/target/annexb/debug/annexb-validate" "$state/pki/iaca.pem" "$state/ds-certified.pem"
fi
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:9464/readyz >/dev/null && break
  sleep 0.1
done
curl -sf http://127.0.0.1:9464/readyz || { echo; echo "demo: dojangd is not ready:"; curl -s http://127.0.0.1:9464/readyz; tail -20 "$state/dojangd.log"; exit 1; }
echo
echo "== private keys in the daemon's token dojang-demo after setup (pkcs11-tool): DS keys born there, no IACA key"
pkcs11-tool --module "$module" --token-label dojang-demo --login --pin "$(cat "$state/pin")" \
  --list-objects --type privkey 2>/dev/null | grep -E "^ +label:" | sort
if pkcs11-tool --module "$module" --token-label dojang-demo --login --pin "$(cat "$state/pin")" \
  --list-objects --type privkey 2>/dev/null | grep -qE "label: +iaca"; then
  echo "demo: the daemon's token holds an IACA key"; exit 1
fi

# A request the way a backend sends one: holder data, the phone's public key
# (JWK), channel, office, card evidence. Fictional holders with random
# numbers, so every run issues anew (one live ID per person and per phone).
request() {
  local profile=$1 out=$2
  openssl ecparam -name prime256v1 -genkey -noout -out "$out.phone.key"
  openssl ec -in "$out.phone.key" -pubout -outform DER 2>/dev/null | tail -c 64 | python3 -c '
import base64, json, random, sys
raw = sys.stdin.buffer.read()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
print(json.dumps({
  "profile": sys.argv[1],
  "holder": {"family_name": "홍", "given_name": "길동",
             "resident_number": "000515-3%06d" % random.randrange(10**6),
             "address": "서울특별시 종로구 세종대로 209"},
  "device_key": {"kty": "EC", "crv": "P-256", "x": b64(raw[:32]), "y": b64(raw[32:])},
  "channel": "ic_card", "municipality": "1111000000", "first_time": True,
  "card": {"issue_date": "2021-03-02", "serial": "SN-%08d" % random.randrange(10**8)}},
  ensure_ascii=False))' "$profile" > "$out.request.json"
}
api() {
  curl -sS --cacert "$state/tls/ca.pem" --cert "$state/tls/counter.pem" --key "$state/tls/counter.key" "$@"
}

for format in mdoc sd-jwt; do
  echo
  echo "== issuing a $format credential over mTLS (client spiffe://mois.go.kr/office-counter)"
  request "$format" "$state/issued.$format"
  api -H 'Content-Type: application/json' -H "Idempotency-Key: demo-$format-$RANDOM$RANDOM" \
    --data-binary @"$state/issued.$format.request.json" \
    https://localhost:8443/v1/credentials > "$state/issued.$format.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))
if "credential" not in r: sys.exit("refused: %s" % r)
open(sys.argv[2],"w").write(r["credential"])
print("id %s  kid %s  valid until %s  document expiry %s  fee %s KRW  status %s#%s" % (r["id"], r["kid"], r["valid_until"], r["document_expiry"], r["fee_krw"], r["status"]["uri"], r["status"]["idx"]))' \
    "$state/issued.$format.json" "$state/issued.$format"
  cut -c1-160 "$state/issued.$format"; echo "…"
  echo "-- verified offline against the IACA:"
  "$bin/dojangctl" verify --iaca "$state/pki/iaca.pem" "$state/issued.$format"
done
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$state/issued.mdoc.json")
status_uri=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"]["uri"])' "$state/issued.mdoc.json")

echo
echo "== OpenID4VCI: the counter makes an offer; the holder's phone scans its QR code and proves its key"
# The offer request is an issuance request without the phone key.
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r.pop("device_key"); r["channel"]="qr_office"
r["holder"]["resident_number"]=r["holder"]["resident_number"][:8]+"%06d" % (int(r["holder"]["resident_number"][8:])^1)
json.dump(r,open(sys.argv[2],"w"),ensure_ascii=False)' "$state/issued.sd-jwt.request.json" "$state/offer.request.json"
"$bin/dojangctl" --api https://localhost:8443 --ca "$state/tls/ca.pem" --client-cert "$state/tls/counter.pem" \
  --client-key "$state/tls/counter.key" offer --request "$state/offer.request.json" --png "$state/offer.png" | tee "$state/offer.txt"
tx_code=$(awk '/^transaction code/ {print $3}' "$state/offer.txt")
offer_uri=$(awk '/^offer / {print $2}' "$state/offer.txt")
echo "-- a scripted wallet (npm @openid4vc/openid4vci, a jose P-256 key) redeems it with the transaction code:"
NODE_EXTRA_CA_CERTS="$state/tls/ca.pem" node "$root/softhsm-tests/wallet/wallet.mjs" \
  --offer "$offer_uri" --tx-code "$tx_code" > "$state/wallet.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); open(sys.argv[2],"w").write(r["credential"])
print("received %s (%s), bound to the wallet key x=%s…, notification %s" % (r["configuration_id"], r["format"], r["jwk"]["x"][:12], r["notification_id"][:12]))' \
  "$state/wallet.json" "$state/wallet.credential"
echo "-- verified offline against the IACA:"
"$bin/dojangctl" verify --iaca "$state/pki/iaca.pem" "$state/wallet.credential"

echo
echo "== what verifiers fetch (public listener): JWKS, status list (JWT form; the mdoc names the CBOR form)"
curl -sf http://127.0.0.1:8080/.well-known/jwks.json | cut -c1-160; echo "…"
curl -sf "${status_uri%.cwt}" | cut -c1-120; echo "…"
echo "$status_uri: $(curl -sf "$status_uri" | wc -c) bytes of application/statuslist+cwt (2^20 positions)"
echo "-- both forms read by an independent decoder (cbor2, cryptography, jwcrypto) from the IACA alone (x5chain / x5c):"
status_idx=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"]["idx"])' "$state/issued.mdoc.json")
curl -sf http://127.0.0.1:8080/status/jwks.json > "$state/status-jwks.json"
for form in cwt jwt; do
  if [ "$form" = cwt ]; then curl -sf "$status_uri" > "$state/status.$form"; else curl -sf "${status_uri%.cwt}" > "$state/status.$form"; fi
  "$root/.venv/bin/python" "$root/softhsm-tests/python/verify_status_list.py" "$form" "$state/status.$form" \
    "$state/status-jwks.json" "$status_idx" "$state/pki/iaca.pem" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %s: signature and chain to the IACA good, position %s is %s" % (sys.argv[1], sys.argv[2], {0:"valid",1:"revoked",2:"suspended"}[r["status"]]))' "$form" "$status_idx"
done
ds_label=$(officer kim --json keys list | python3 -c 'import json,sys; print(next(k["label"] for k in json.load(sys.stdin)["keys"] if k["chain"]=="ds" and k["state"]=="active"))')
curl -sf "http://127.0.0.1:8080/ds/$ds_label.pem" > "$state/ds-signing.pem"
echo "-- the DS certificate that signed them ($ds_label), checked by openssl -x509_strict and isomdl (Annex B):"
openssl verify -x509_strict -CAfile "$state/pki/iaca.pem" "$state/ds-signing.pem"
"$root/target/annexb/debug/annexb-validate" "$state/pki/iaca.pem" "$state/ds-signing.pem"
echo "-- the IACA's CRL at the distribution point the certificates name (one DER CRL):"
curl -sf http://127.0.0.1:8080/iaca.crl | openssl crl -inform DER -noout -lastupdate -nextupdate || echo "(no CRL signed yet)"
echo
echo "== the audit log: every decision above is an entry; checkpoints are signed by the audit key in the token"
sleep 1.5
curl -sS --cacert "$state/tls/ca.pem" --cert "$state/tls/auditor.pem" --key "$state/tls/auditor.key" \
  https://localhost:8443/v1/audit/checkpoint | python3 -c 'import json,sys; print(json.load(sys.stdin)["note"])'
"$bin/dojangctl" --config "$state/dojang.toml" audit export --out "$state/audit.json" --key-out "$state/audit.pem"
"$bin/dojangctl" audit verify "$state/audit.json" --key "$state/audit.pem" \
  --origin dojang.example.kr/demo-audit --allow-unsigned-tail
echo "-- the same log as a tiled log (c2sp.org/tlog-tiles) on the public listener: /checkpoint and /tile/…"
curl -sf http://127.0.0.1:8080/checkpoint | head -2
echo "-- one decision as an offline proof (c2sp.org/tlog-proof), checked against the key and origin"
"$bin/dojangctl" --config "$state/dojang.toml" audit prove --index 0 --out "$state/entry-0.tlog-proof"
"$bin/dojangctl" audit check-proof "$state/entry-0.tlog-proof" --key "$state/audit.pem" \
  --origin dojang.example.kr/demo-audit
echo
echo "== the key chains (document signer, status list, audit), as security officer kim sees them over mTLS"
officer kim keys list
echo
cat <<MSG
== dojangd is running (pid $(cat "$state/dojangd.pid"), log $state/dojangd.log). Try:
  cd $root
  # issue another credential (edit the request: one live ID per person and per phone)
  curl --cacert .demo/tls/ca.pem --cert .demo/tls/counter.pem --key .demo/tls/counter.key \\
       -H 'Content-Type: application/json' --data-binary @.demo/issued.sd-jwt.request.json \\
       https://localhost:8443/v1/credentials
  # its metadata, then suspend / reinstate / revoke it
  curl --cacert .demo/tls/ca.pem --cert .demo/tls/counter.pem --key .demo/tls/counter.key \\
       https://localhost:8443/v1/credentials/$id
  curl --cacert .demo/tls/ca.pem --cert .demo/tls/counter.pem --key .demo/tls/counter.key \\
       -X POST https://localhost:8443/v1/credentials/$id/suspend
  # an OpenID4VCI offer for a wallet: its QR code in the terminal, the transaction code (docs/wallet.md)
  target/debug/dojangctl --api https://localhost:8443 --ca .demo/tls/ca.pem --client-cert .demo/tls/counter.pem \\
       --client-key .demo/tls/counter.key offer --request .demo/offer.request.json
  curl --cacert .demo/tls/ca.pem https://localhost:8444/.well-known/openid-credential-issuer
  curl ${status_uri%.cwt}   # the signed status list (JWT; $status_uri is its CWT form)
  curl http://127.0.0.1:9464/metrics | grep ^dojang_
  # the audit log, as an auditor sees it (docs/operations.md)
  curl --cacert .demo/tls/ca.pem --cert .demo/tls/auditor.pem --key .demo/tls/auditor.key \\
       "https://localhost:8443/v1/audit/entries?start=0&count=10"
  # an independent witness of the log (an auditor runs it; docs/operations.md "Witnesses"):
  target/debug/dojangctl witness key --name auditor.example/w1 --out .demo/w1.key   # prints its vkey
  target/debug/dojangctl witness serve --listen 127.0.0.1:7380 --name auditor.example/w1 --key .demo/w1.key \\
       --origin dojang.example.kr/demo-audit --log-key .demo/audit.pem --state .demo/w1.json --init &   # --init: first start only
  #   then in .demo/dojang.toml [server.audit]: witnesses = [{ url = "http://127.0.0.1:7380", key = "<vkey>" }]
  #   restart dojangd; the public checkpoint carries the witness's cosignature:
  curl http://127.0.0.1:8080/checkpoint
  # rotate the DS key: officer kim proposes and signs with her token, officer lee
  # reads every field and signs with his (two-person rule); the new key is
  # published now and signs 7 days later (policy [keys].prepublish)
  export SOFTHSM2_CONF=.demo/officers/softhsm2.conf DOJANG_OFFICER_MODULE=$module
  export DOJANG_OFFICER_PIN_FILE=.demo/officers/pin DOJANG_API=https://localhost:8443 DOJANG_CA=.demo/tls/ca.pem
  o="target/debug/dojangctl"
  \$o --officer-cert .demo/tls/kim.pem --officer-key .demo/tls/kim.key --officer-token officer-kim keys rotate ds
  \$o --officer-cert .demo/tls/lee.pem --officer-key .demo/tls/lee.key --officer-token officer-lee approvals list
  \$o --officer-cert .demo/tls/lee.pem --officer-key .demo/tls/lee.key --officer-token officer-lee approve PROPOSAL_ID
  \$o --officer-cert .demo/tls/kim.pem --officer-key .demo/tls/kim.key --officer-token officer-kim keys list
  kill \$(cat .demo/dojangd.pid)              # stop it;  make demo-clean removes everything
MSG
