"""Test certificates made with the `openssl` CLI: a CA, the gateway's, and client ones."""

from __future__ import annotations

import os
import subprocess

#: The password of the PKCS#12 stores made for Java.
STORE_PASSWORD = "glammp-test"


def _run(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: str) -> str:
    """ca.pem / ca.key in `directory`; returns the CA certificate's path."""
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=glammp test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)
    return os.path.join(directory, "ca.pem")


def make_cert(directory: str, name: str, server: bool = False) -> tuple[str, str]:
    """<name>.pem / <name>.key signed by the CA in `directory` (CN=name); a server
    certificate is valid for localhost and 127.0.0.1. Returns (cert, key) paths."""
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
         "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    ext = os.path.join(directory, f"{name}.ext")
    with open(ext, "w") as f:
        if server:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        else:
            f.write("extendedKeyUsage=clientAuth\n")
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{name}.pem", cwd=directory)
    return os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")


def java_stores(directory: str, name: str) -> tuple[str, str]:
    """A PKCS#12 key store with <name>'s key and certificate, and a trust store with the
    CA (made with keytool, which marks the entry trusted for Java). Returns their paths."""
    _run("pkcs12", "-export", "-in", f"{name}.pem", "-inkey", f"{name}.key",
         "-name", name, "-out", f"{name}.p12", "-passout", f"pass:{STORE_PASSWORD}",
         cwd=directory)
    trust = os.path.join(directory, "trust.p12")
    if not os.path.exists(trust):
        subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "ca", "-file",
                        os.path.join(directory, "ca.pem"), "-keystore", trust,
                        "-storetype", "PKCS12", "-storepass", STORE_PASSWORD],
                       check=True, capture_output=True)
    return os.path.join(directory, f"{name}.p12"), trust
