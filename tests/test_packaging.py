"""The package ships like a library people install: licence, typing marker, metadata, changelog.

The checks read the files (no TensorFlow import); one test builds the wheel and the sdist
offline from a copy of the sources (a few seconds) and reads what they contain. `make
package-check` does the isolated build and `twine check` (README rendering) on top.
"""

import configparser
import email.parser
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in")
APACHE_SECTIONS = (
    "1. Definitions.",
    "2. Grant of Copyright License.",
    "3. Grant of Patent License.",
    "4. Redistribution.",
    "5. Submission of Contributions.",
    "6. Trademarks.",
    "7. Disclaimer of Warranty.",
    "8. Limitation of Liability.",
    "9. Accepting Warranty or Additional Liability.",
)


def _setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _lines(value):
    return [line.strip() for line in value.strip().splitlines() if line.strip()]


def _version():
    text = (ROOT / "tf_perturbed" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


def test_license_is_the_declared_apache_2():
    metadata = _setup_cfg()["metadata"]
    assert metadata["license"] == "Apache-2.0"
    assert "LICENSE" in _lines(metadata["license_files"])
    assert "License :: OSI Approved :: Apache Software License" in _lines(metadata["classifiers"])
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    head = [line.strip() for line in text.strip().splitlines()[:3]]
    assert head == ["Apache License", "Version 2.0, January 2004", "http://www.apache.org/licenses/"]
    positions = [text.find(section) for section in APACHE_SECTIONS]
    assert -1 not in positions and positions == sorted(positions), positions
    assert text.rstrip().endswith("limitations under the License.")
    assert "END OF TERMS AND CONDITIONS" in text


def test_typing_marker_ships():
    assert (ROOT / "tf_perturbed" / "py.typed").is_file()
    config = _setup_cfg()
    assert "py.typed" in _lines(config["options.package_data"]["tf_perturbed"])
    assert "Typing :: Typed" in _lines(config["metadata"]["classifiers"])


def test_project_urls_and_classifiers():
    metadata = _setup_cfg()["metadata"]
    urls = dict(line.split(" = ", 1) for line in _lines(metadata["project_urls"]))
    assert set(urls) == {"Documentation", "Source", "Issues", "Changelog"}, urls
    assert all(url.startswith("https://") for url in urls.values()), urls
    classifiers = _lines(metadata["classifiers"])
    assert "Operating System :: OS Independent" in classifiers
    minimum = tuple(
        int(v) for v in re.fullmatch(r">=(\d+)\.(\d+)", _setup_cfg()["options"]["python_requires"]).groups()
    )
    versions = [
        tuple(int(v) for v in m.groups())
        for c in classifiers
        if (m := re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", c))
    ]
    assert versions and min(versions) == minimum, (versions, minimum)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in {f"{a}.{b}" for a, b in versions}


def test_changelog_has_this_version_and_the_policy():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    assert headings and headings[0] in {"Unreleased", _version()}, headings
    if headings[0] == "Unreleased":
        assert f"`{_version()}`" in changelog.split("\n## ", 2)[1], "the Unreleased section names the version"
    assert re.search(r"^## Version policy$", changelog, re.M)
    assert "Semantic Versioning" in changelog and ".keras" in changelog
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "CHANGELOG.md" in readme and "semantic versioning" in readme.lower()
    assert "make package-check" in readme


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Wheel and sdist built offline (no build isolation, no index) from a copy of the sources."""
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("wheel") is None:
        pytest.skip("setuptools and wheel are needed to build without downloading them")
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "tf_perturbed", src / "tf_perturbed", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    commands = (
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            out,
        ],
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
    )
    for command in commands:
        result = subprocess.run(command, cwd=src, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_holds_the_package_licence_and_metadata(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode("utf-8"))
        (license_name,) = [n for n in names if re.search(r"\.dist-info/(licenses/)?LICENSE$", n)]
        assert archive.read(license_name) == (ROOT / "LICENSE").read_bytes()
    assert "tf_perturbed/py.typed" in names
    assert "tf_perturbed/__init__.py" in names and "tf_perturbed/_src/__init__.py" in names
    outside = {n.split("/")[0] for n in names} - {"tf_perturbed", metadata_name.split("/")[0]}
    assert not outside, outside  # no tests, tutorials or benchmarks in the wheel

    assert metadata["Name"].replace("-", "_") == "tf_perturbed"
    assert metadata["Version"] == _version()
    assert metadata["License"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.10"
    requires = metadata.get_all(
        "Requires-Dist"
    )  # typing.Unpack below 3.11; the name as setuptools normalises it
    assert any(re.fullmatch(r'typing[-_]extensions; python_version < "3\.11"', r, re.I) for r in requires), (
        requires
    )
    assert metadata["Description-Content-Type"] == "text/markdown"
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert set(urls) == {"Documentation", "Source", "Issues", "Changelog"}
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert metadata.get_payload().strip() == readme.strip()


def test_sdist_holds_the_documents(built):
    _, sdist = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "setup.cfg",
        "pyproject.toml",
        "tf_perturbed/py.typed",
    } <= names
    assert not any(name.startswith("tests/") for name in names)  # needs tutorials/benchmarks: repository only
