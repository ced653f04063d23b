"""
A minimal PEP 517 build backend for demoapp (stdlib only): a pure-Python
wheel of the ``demoapp`` package and a source tarball. Just enough for
``pip install``/``pip wheel`` without setuptools, wheel or an index.
"""

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = "demoapp"


def _version():
    with open(os.path.join(HERE, NAME, "__init__.py"), encoding="utf-8") as fh:
        return re.search(r'^__version__ = "([^"]+)"', fh.read(), re.M).group(1)


def _sources():
    for root, dirs, files in os.walk(os.path.join(HERE, NAME)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield path, os.path.relpath(path, HERE).replace(os.sep, "/")


def _dist_info(version):
    metadata = (
        "Metadata-Version: 2.1\n"
        f"Name: {NAME}\n"
        f"Version: {version}\n"
        "Summary: salt-consul example application\n"
        "Requires-Python: >=3.8\n"
    )
    wheel = "Wheel-Version: 1.0\nGenerator: demoapp_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entry_points = "[console_scripts]\ndemoapp = demoapp.server:main\n"
    return {"METADATA": metadata, "WHEEL": wheel, "entry_points.txt": entry_points}


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    version = _version()
    name = f"{NAME}-{version}.dist-info"
    os.makedirs(os.path.join(metadata_directory, name), exist_ok=True)
    for fname, text in _dist_info(version).items():
        with open(os.path.join(metadata_directory, name, fname), "w", encoding="utf-8") as fh:
            fh.write(text)
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    version = _version()
    dist_info = f"{NAME}-{version}.dist-info"
    filename = f"{NAME}-{version}-py3-none-any.whl"
    record = []

    def add(zf, arcname, data):
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arcname},sha256={digest},{len(data)}")
        zf.writestr(arcname, data)

    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as zf:
        for path, arcname in _sources():
            with open(path, "rb") as fh:
                add(zf, arcname, fh.read())
        for fname, text in _dist_info(version).items():
            add(zf, f"{dist_info}/{fname}", text.encode("utf-8"))
        record.append(f"{dist_info}/RECORD,,")
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return filename


def build_sdist(sdist_directory, config_settings=None):
    version = _version()
    base = f"{NAME}-{version}"
    filename = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz") as tf:
        for rel in ("pyproject.toml", "demoapp_build.py"):
            tf.add(os.path.join(HERE, rel), f"{base}/{rel}")
        for path, arcname in _sources():
            tf.add(path, f"{base}/{arcname}")
        pkg_info = io.BytesIO(_dist_info(version)["METADATA"].encode("utf-8"))
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        info.size = len(pkg_info.getvalue())
        tf.addfile(info, pkg_info)
    return filename
