"""The Kafka jars: fetched from Maven Central once (pom.xml next to stack.py), then run with `java -cp`.

They live in <STACK_DIR>/kafka-libs-<version>/, shared by every mode of the stack; a `.complete` marker
records the pom's hash. When STACK_DIR points outside the repository, a complete jar folder of the
repository's own `.stack/` is used instead of fetching the same jars again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from .common import BASE, HERE, REPO, apt_install, die, log, rel

POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"


def pom_property(name: str) -> str:
    m = re.search(rf"<{re.escape(name)}>\s*(\d[^<\s]*)\s*</{re.escape(name)}>", POM.read_text())
    if not m:
        die(f"{rel(POM)} has no <{name}> property")
    return m.group(1)


class KafkaJars:
    def __init__(self, version: str) -> None:
        self.version = version
        own = BASE / f"kafka-libs-{version}"
        self.libs = next((d for d in (own, REPO / ".stack" / own.name) if self._complete(d)), own)

    def _stamp(self) -> str:
        h = hashlib.sha256(POM.read_bytes())
        h.update(self.version.encode())
        return h.hexdigest()

    def _complete(self, libs: Path) -> bool:
        marker = libs / ".complete"
        return marker.is_file() and marker.read_text().strip() == self._stamp()

    def ensure(self) -> None:
        if self._complete(self.libs):
            return
        ensure_java()
        if not shutil.which("mvn"):
            apt_install("maven", why="Maven is needed once to fetch the Kafka jars")
        BASE.mkdir(parents=True, exist_ok=True)
        tmp = BASE / f".kafka-libs-{self.version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"fetching Kafka {self.version} jars with Maven into {rel(self.libs)} (first run only) ...")
        cmd = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            f"-Dkafka.version={self.version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ]
        r = subprocess.run(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0 or not any(tmp.glob(f"kafka_2.13-{self.version}.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            die(f"Maven could not fetch Kafka {self.version} (exit {r.returncode}):\n{r.stdout[-4000:]}")
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        (self.libs / ".complete").write_text(self._stamp() + "\n")

    def java_base(self, logs: Path) -> list[str]:
        return [
            java_bin(),
            "-cp",
            str(self.libs / "*"),
            f"-Dlog4j2.configurationFile={LOG4J}",
            f"-Dkafka.logs.dir={logs}",
        ]


def java_bin() -> str:
    jh = os.environ.get("JAVA_HOME")
    if jh and (Path(jh) / "bin" / "java").is_file():
        return str(Path(jh) / "bin" / "java")
    return shutil.which("java") or "java"


def ensure_java() -> None:
    if not shutil.which("java") and not (os.environ.get("JAVA_HOME") and Path(java_bin()).is_file()):
        apt_install("openjdk-17-jre-headless", why="Kafka needs Java 17+")
