#!/bin/sh
# What the compose demo needs to run with TLS and tokens, made with openssl into deploy/compose/secrets/
# (or the folder given), which git ignores: nothing here is ever committed.
#
#   sh deploy/compose/make-secrets.sh [folder]
#
#   ca.crt, ca.key             a CA for the demo (30 days); ca.key stays on this machine
#   sidecar.crt, sidecar.key   the sidecar's certificate, for the names sidecar and localhost and for
#                              127.0.0.1 (so `paymaster --ca ... --target 127.0.0.1:7310` works)
#   admin.token                a bootstrap admin token (roles admin and reader, grants "*") for you
#   collector.token            the OpenTelemetry Collector's (ingester and reader, grants "*")
#   prometheus.token           Prometheus's (reader, grants "*"), to scrape /metrics
#   tokens.toml                the sidecar's bootstrap tokens file: names, roles, grants and only the
#                              SHA-256 of each token
#
# Run it again to start over (new CA, new tokens; restart the stack). The files the containers read
# are mode 0644 inside a 0700 folder, because the containers run as other users than yours and
# compose mounts each file on its own; ca.key and admin.token stay 0600.
set -eu

out=${1:-$(dirname "$0")/secrets}
umask 077
mkdir -p "$out"
chmod 700 "$out"
days=30

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=paymaster demo CA" -keyout "$out/ca.key" -out "$out/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=sidecar" \
    -keyout "$out/sidecar.key" -out "$out/sidecar.csr" 2>/dev/null
printf '%s\n' "subjectAltName=DNS:sidecar,DNS:localhost,IP:127.0.0.1" "extendedKeyUsage=serverAuth" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" >"$out/sidecar.ext"
openssl x509 -req -in "$out/sidecar.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days "$days" -extfile "$out/sidecar.ext" -out "$out/sidecar.crt" 2>/dev/null
rm -f "$out/sidecar.csr" "$out/sidecar.ext"

# A token in the form the sidecar issues: pmt_<12 hex id>_<43 characters of base64url secret>.
new_token() {
    printf 'pmt_%s_%s' "$(openssl rand -hex 6)" "$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n')"
}
sha256() {
    printf '%s' "$1" | openssl dgst -sha256 -r | cut -d' ' -f1
}

: >"$out/tokens.toml"
for entry in "admin|\"admin\", \"reader\"" "collector|\"ingester\", \"reader\"" "prometheus|\"reader\""; do
    name=${entry%%|*}
    roles=${entry#*|}
    token=$(new_token)
    printf '%s' "$token" >"$out/$name.token" # no newline: some readers send the file as it is
    printf '[[tokens]]\nname = "%s"\nsha256 = "%s"\nroles = [%s]\ngrants = ["*"]\n\n' \
        "$name" "$(sha256 "$token")" "$roles" >>"$out/tokens.toml"
done

chmod 644 "$out/ca.crt" "$out/sidecar.crt" "$out/sidecar.key" "$out/tokens.toml" \
    "$out/collector.token" "$out/prometheus.token"
echo "made $out: a CA, the sidecar's certificate and the bootstrap tokens. On this machine:"
echo "  export PAYMASTER_SIDECAR_CA=$out/ca.crt PAYMASTER_TOKEN_FILE=$out/admin.token"
echo "  paymaster budgets list"
