"""Generating and building client stubs for other languages, for tests (cached per session)."""

from __future__ import annotations

import glob
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDL = sorted(glob.glob(os.path.join(ROOT, "idl", "*.thrift")))
#: Debian's Java runtime for Thrift (its manifest lists slf4j-api, commons-lang3 ...).
JAVA_CLASSPATH = ["/usr/share/java/thrift.jar", "/usr/share/java/slf4j-nop.jar"]
GENERATORS = {"php": "php", "java": "java:generated_annotations=suppress"}


def generate(lang: str, out: str) -> str:
    """Runs the Thrift compiler for every IDL file into `out`; returns `out`."""
    os.makedirs(out, exist_ok=True)
    for path in IDL:
        subprocess.run(["thrift", "--gen", GENERATORS[lang], "-out", out, path], check=True)
    return out


def build_java(stubs: str, sources: list[str], out: str) -> list[str]:
    """Compiles the Java stubs plus `sources` into `out`; returns the classpath to run them."""
    files = glob.glob(os.path.join(stubs, "**", "*.java"), recursive=True) + sources
    cp = ":".join([out, *JAVA_CLASSPATH])
    subprocess.run(["javac", "-nowarn", "-d", out, "-cp", cp, *files], check=True,
                   capture_output=True)
    return [out, *JAVA_CLASSPATH]
