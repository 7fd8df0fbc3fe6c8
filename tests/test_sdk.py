"""SDK checks: what an SDK user generates from protos/ compiles, and the breaking gate bites.

Java and TypeScript are generated with the committed protos/buf.gen.yaml (buf's managed mode,
protoc's built-in Java generator, protoc-gen-es), then compiled with javac against protobuf-java
and type-checked with tsc. The gate test edits a scratch copy of protos/ and runs the same
`buf breaking` command as scripts/test against the committed baseline image.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
TOOLS_BIN = ROOT / "tools" / "node_modules" / ".bin"
BUF = TOOLS_BIN / "buf"
PROTOC_GEN_ES = TOOLS_BIN / "protoc-gen-es"
TSC = TOOLS_BIN / "tsc"
BASELINE = PROTOS / "baseline.binpb"
# protoc 3.21 (Debian bookworm) writes GeneratedMessageV3 code; protobuf-java 4.28 is the oldest
# 4.x runtime on this machine and compiles it (NOTES.md, Protos). 4.29-4.32 do too.
PROTOBUF_JAVA_VERSION = "4.28.2"
PROTOBUF_JAVA = (
    Path.home()
    / ".m2/repository/com/google/protobuf/protobuf-java"
    / PROTOBUF_JAVA_VERSION
    / f"protobuf-java-{PROTOBUF_JAVA_VERSION}.jar"
)
# The same arguments as scripts/test's "buf breaking" step.
GATE = ["breaking", "--against", str(BASELINE), "--path", "cgn"]
TIMEOUT_S = 300

BOOTSTRAP_HINT = "scripts/bootstrap installs it from npm (tools/package.json)"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def _check(args: list[str], cwd: Path) -> str:
    done = _run(args, cwd)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _require_file(path: Path, reason: str) -> None:
    if not path.is_file():
        pytest.skip(f"{path} is missing: {reason}")


def _require_command(name: str, reason: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"`{name}` is not on PATH: {reason}")


def _proto_files() -> list[str]:
    return sorted(
        str(p.relative_to(PROTOS / "third_party" if "third_party" in p.parts else PROTOS))
        for p in PROTOS.rglob("*.proto")
    )


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs `buf generate` with the committed template once; returns the directory holding gen/."""
    _require_file(BUF, BOOTSTRAP_HINT)
    _require_file(PROTOC_GEN_ES, BOOTSTRAP_HINT)
    _require_command(
        "protoc",
        "buf.gen.yaml's `protoc_builtin: java` needs it; scripts/bootstrap installs Debian's "
        "protobuf-compiler when run as root (apt-get install -y protobuf-compiler)",
    )
    out = tmp_path_factory.mktemp("sdk")
    _check([str(BUF), "generate", "--template", "buf.gen.yaml", "-o", str(out)], PROTOS)
    return out


JAVA_CHECK = """\
import com.google.protobuf.Descriptors.FileDescriptor;
import com.google.rpc.Status;
import java.util.TreeSet;

/** Loads every generated class, counts the file descriptors, round-trips one message. */
public final class SdkCheck {
  public static void main(String[] args) throws Exception {
    TreeSet<String> files = new TreeSet<>();
    for (String name : args) {
      Class<?> type = Class.forName(name);
      if (type.isInterface()) {
        continue;
      }
      Object descriptor = type.getMethod("getDescriptor").invoke(null);
      if (descriptor instanceof FileDescriptor) {
        files.add(((FileDescriptor) descriptor).getName());
      }
    }
    Status status = Status.newBuilder().setCode(3).setMessage("checked").build();
    if (!Status.parseFrom(status.toByteArray()).equals(status)) {
      throw new AssertionError("Status did not round-trip");
    }
    for (String file : files) {
      System.out.println(file);
    }
  }
}
"""


def test_java_sdk_compiles_and_links(sdk: Path, tmp_path: Path) -> None:
    _require_command("javac", "Debian: apt-get install -y default-jdk-headless")
    _require_command("java", "Debian: apt-get install -y default-jre-headless")
    _require_file(
        PROTOBUF_JAVA,
        f"protobuf-java {PROTOBUF_JAVA_VERSION} is not in the local Maven repository, and Maven "
        "Central is not reachable from this machine",
    )
    java_root = sdk / "gen" / "java"
    sources = sorted(java_root.rglob("*.java"))
    assert sources, "buf generate wrote no Java"
    # Managed mode: CGN files under net.cgn, the vendored google.rpc under its own package.
    packages = {str(p.parent.relative_to(java_root)) for p in sources}
    assert "com/google/rpc" in packages
    assert all(p.startswith(("net/cgn/", "com/google/rpc")) for p in packages), packages
    (tmp_path / "SdkCheck.java").write_text(JAVA_CHECK)
    argfile = tmp_path / "sources.txt"
    argfile.write_text("\n".join([str(tmp_path / "SdkCheck.java"), *map(str, sources)]))
    classes = tmp_path / "classes"
    _check(
        [
            "javac",
            "-nowarn",
            "-Xlint:none",
            "-encoding",
            "UTF-8",
            "-cp",
            str(PROTOBUF_JAVA),
            "-d",
            str(classes),
            f"@{argfile}",
        ],
        tmp_path,
    )
    names = [".".join(p.relative_to(java_root).with_suffix("").parts) for p in sources]
    stdout = _check(
        ["java", "-cp", os.pathsep.join([str(classes), str(PROTOBUF_JAVA)]), "SdkCheck", *names],
        tmp_path,
    )
    assert stdout.split() == _proto_files()


TS_CHECK = """\
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { StatusSchema, type Status } from "./gen/ts/google/rpc/status_pb";

const status: Status = create(StatusSchema, { code: 3, message: "checked" });
export const roundTripped: Status = fromBinary(StatusSchema, toBinary(StatusSchema, status));
"""

TSCONFIG = """\
{
  "compilerOptions": {
    "strict": true,
    "noEmit": true,
    "target": "es2022",
    "module": "esnext",
    "moduleResolution": "bundler",
    "noUnusedLocals": true,
    "noImplicitOverride": true,
    "exactOptionalPropertyTypes": true
  },
  "include": ["check.ts", "gen/ts/**/*.ts"]
}
"""


def test_typescript_sdk_type_checks(sdk: Path, tmp_path: Path) -> None:
    _require_file(TSC, BOOTSTRAP_HINT)
    ts_files = sorted((sdk / "gen" / "ts").rglob("*_pb.ts"))
    # One module per .proto file, the vendored google/rpc/status.proto included.
    assert sorted(str(p.relative_to(sdk / "gen" / "ts")) for p in ts_files) == [
        name.removesuffix(".proto") + "_pb.ts" for name in _proto_files()
    ]
    project = tmp_path / "project"
    shutil.copytree(sdk / "gen", project / "gen")
    # The generated code imports @bufbuild/protobuf: resolve it from tools/ (pinned there).
    (project / "node_modules").symlink_to(TOOLS_BIN.parent, target_is_directory=True)
    (project / "check.ts").write_text(TS_CHECK)
    (project / "tsconfig.json").write_text(TSCONFIG)
    _check([str(TSC), "-p", "tsconfig.json"], project)
    # The check must be able to fail: a type error in the same project is reported.
    (project / "check.ts").write_text(TS_CHECK + "export const wrong: number = status.message;\n")
    done = _run([str(TSC), "-p", "tsconfig.json"], project)
    assert done.returncode != 0
    assert "check.ts" in done.stdout


GO_STAND_IN = """\
#!{python}
# Stands in for protoc-gen-go / protoc-gen-go-grpc: lists the files it was asked to generate
# with the go_package managed mode gave them. buf runs it once per directory (Go's strategy).
import os, sys
from google.protobuf.compiler import plugin_pb2

request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
files = {{f.name: f for f in request.proto_file}}
response = plugin_pb2.CodeGeneratorResponse(
    supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
)
directory = os.path.dirname(request.file_to_generate[0])
out = response.file.add(name=f"{{directory}}/{{os.path.basename(sys.argv[0])}}.txt")
out.content = "".join(
    f"{{name}} {{files[name].options.go_package}}\\n" for name in request.file_to_generate
)
sys.stdout.buffer.write(response.SerializeToString())
"""


def test_go_template_sets_go_package_and_skips_google_rpc(tmp_path: Path) -> None:
    """No Go toolchain here: stand-in plugins check what buf.gen.go.yaml hands protoc-gen-go."""
    _require_file(BUF, BOOTSTRAP_HINT)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for plugin in ("protoc-gen-go", "protoc-gen-go-grpc"):
        script = bin_dir / plugin
        script.write_text(GO_STAND_IN.format(python=sys.executable))
        script.chmod(0o755)
    out = tmp_path / "out"
    done = subprocess.run(
        [str(BUF), "generate", "--template", "buf.gen.go.yaml", "-o", str(out)],
        cwd=PROTOS,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # cgn/node/v1/x.proto -> "github.com/cgn/sdk/go/cgn/node/v1;nodev1"; google/rpc is not asked.
    expected = {
        name: f"github.com/cgn/sdk/go/{Path(name).parent};{''.join(Path(name).parts[1:3])}"
        for name in _proto_files()
        if name.startswith("cgn/")
    }
    for plugin in ("protoc-gen-go", "protoc-gen-go-grpc"):
        lines = [
            line
            for listing in (out / "gen" / "go").rglob(f"{plugin}.txt")
            for line in listing.read_text().splitlines()
        ]
        assert dict(line.split(" ", 1) for line in lines) == expected


def _first_field(proto_text: str) -> tuple[str, str, re.Match[str]]:
    """(message name, field name, match of the field's declaration) of the first message."""
    message = re.search(r"^message (\w+) \{\n(.*?)^\}", proto_text, re.MULTILINE | re.DOTALL)
    assert message is not None, "no message in the file"
    field = re.compile(
        r"^[ \t]+(?:repeated |optional )?(?:map<[\w.]+, ?[\w.]+>|[\w.]+) (\w+) = \d+",
        re.MULTILINE,
    ).search(proto_text, message.start(2), message.end(2))
    assert field is not None, f"no field in message {message.group(1)}"
    return message.group(1), field.group(1), field


@pytest.fixture
def protos_copy(tmp_path: Path) -> Path:
    _require_file(BUF, BOOTSTRAP_HINT)
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("gen", "baseline.binpb"))
    return copy


def test_breaking_gate_passes_unchanged_protos(protos_copy: Path) -> None:
    done = _run([str(BUF), *GATE], protos_copy)
    assert done.returncode == 0, (
        f"protos/ breaks the committed baseline; if that is on purpose, run scripts/proto_baseline "
        f"and say why in the commit message:\n{done.stdout}{done.stderr}"
    )


def test_breaking_gate_fails_a_renamed_field(protos_copy: Path) -> None:
    path = protos_copy / "cgn" / "common" / "v1" / "http.proto"
    text = path.read_text()
    message, field, match = _first_field(text)
    renamed = f"{field}_renamed"
    start, end = match.span(1)
    path.write_text(text[:start] + renamed + text[end:])
    # The edit is a valid proto that lints, so only the gate can object.
    _check([str(BUF), "lint"], protos_copy)
    done = _run([str(BUF), *GATE], protos_copy)
    assert done.returncode != 0
    assert f'on message "{message}" changed name from "{field}" to "{renamed}"' in done.stdout, (
        done.stdout + done.stderr
    )
    assert "cgn/common/v1/http.proto" in done.stdout
