#!/bin/sh
# Make the TLS test certificates in folder $1 with the openssl CLI (EC P-256, valid 2 days):
#   ca.pem ca.key              the test CA
#   other-ca.pem other-ca.key  a CA nothing here is signed by (the "wrong CA")
#   server.pem server.key      signed by the CA, for localhost, 127.0.0.1 and ::1
#   server-chain.pem           server.pem then ca.pem (what a server sends)
#   client.pem client.key      a client certificate signed by the CA
#   other.key                  a key that matches no certificate
set -eu
d=$1
mkdir -p "$d"
cd "$d"
key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}
ca() {
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 2 -out "$1.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
}
leaf() {
    key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -out "$1.pem" -extfile "$1.ext" 2>/dev/null
}
ca ca "hookrouter test CA"
ca other-ca "hookrouter other CA"
leaf server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
    "extendedKeyUsage=serverAuth"
leaf client "hookrouter test client" "basicConstraints=CA:FALSE" "extendedKeyUsage=clientAuth"
cat server.pem ca.pem >server-chain.pem
key other.key
