"""Package definition; also serves as Beam's `--setup_file` for Dataflow workers."""
from __future__ import annotations

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements(name: str) -> list[str]:
    lines = (_HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setuptools.setup(
    name="noisy-student-data",
    version="0.1.0",
    description="Noisy Student pseudo-labeling at scale on Apache Beam and TensorFlow.",
    long_description=(_HERE / "README.md").read_text() if (_HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["ns_data", "ns_data.*", "beam_jobs", "beam_jobs.*",
                                               "ns_train", "ns_train.*"]),
    package_data={"ns_data": ["sample/*.tfrecord", "sample/*.md"]},
    include_package_data=True,
    install_requires=_requirements("requirements.txt"),
    extras_require={"test": _requirements("requirements-test.txt")},
)
