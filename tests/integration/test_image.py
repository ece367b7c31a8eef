"""The image's build, without a Docker engine: the wheel built from exactly the files the Dockerfile
copies installs a `tidings` that finds its schemas, migrations and the catalog where the manifests say."""

import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PACKAGES = ["tidings", "processors", "gateways", "projections"]


def build_stage_copies() -> list[str]:
    """The sources of every `COPY` of the first stage, the build context of the wheel."""
    build = DOCKERFILE.read_text().split("\nFROM ")[1]
    return [src for line in re.findall(r"^COPY (.+)$", build, re.M) for src in line.split()[:-1]]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, timeout=300)


def test_the_wheel_built_from_the_copied_files_runs_the_commands_the_manifests_use(tmp_path: Path) -> None:
    context, wheels, site, app = (tmp_path / d for d in ("context", "wheels", "site", "app"))
    context.mkdir()
    for src in build_stage_copies():
        (shutil.copytree if (ROOT / src).is_dir() else shutil.copy2)(ROOT / src, context / src)
    pip("wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(context))
    [wheel] = wheels.glob("tidings-*.whl")
    with zipfile.ZipFile(wheel) as z:
        [entry_points] = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "tidings = tidings.cli:main" in z.read(entry_points).decode()
    pip("install", "-q", "--no-deps", "--target", str(site), str(wheel))
    copied = re.search(r"^COPY catalog (\S+)$", DOCKERFILE.read_text(), re.M)
    assert copied is not None and copied.group(1) == "/app/catalog", "deploy/k8s/setup.yaml publishes it"
    shutil.copytree(ROOT / "catalog", app / "catalog")
    deps = sysconfig.get_paths()["purelib"]

    def python(code: str, *args: str) -> str:
        """Without the site module, so the checkout's editable install (a .pth file) is not on the path:
        the installed wheel first, then the dependencies."""
        prelude = f"import sys; sys.path[:0] = [{str(site)!r}, {deps!r}]; "
        done = subprocess.run(
            [sys.executable, "-S", "-c", prelude + code, *args],
            cwd=app,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    where = python(
        f"import importlib; [print(importlib.import_module(p).__file__) for p in {PACKAGES!r}]; "
        "import projections.db as d; print(*sorted(p.name for p in d.MIGRATIONS.glob('*.sql')))"
    ).splitlines()
    assert all(w.startswith(str(site)) for w in where[:4]), f"not the installed wheel: {where}"
    assert where[4].split() == sorted(p.name for p in (ROOT / "projections" / "migrations").glob("*.sql"))

    def tidings(*args: str) -> str:
        return python("from tidings.cli import main; main()", *args)

    assert "compatible" in tidings("schemas", "check")
    types = sum(f.read_text().count("[[type]]") for f in (ROOT / "catalog").glob("*.toml"))
    assert f"valid {types} types" in tidings("catalog", "publish", "catalog", "--dry-run")


def test_the_image_runs_as_the_user_the_manifests_require() -> None:
    [user] = re.findall(r"^USER (\d+)$", DOCKERFILE.read_text(), re.M)
    required = {
        uid
        for f in (ROOT / "deploy" / "k8s").glob("*.yaml")
        for uid in re.findall(r"runAsUser: (\d+)", f.read_text())
    }
    assert required == {user}
