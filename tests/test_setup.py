"""setup.py works as Beam's --setup_file: the sdist Dataflow workers install is complete."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sdist_carries_packages_sample_and_requirements(tmp_path):
    # The same command Beam's stager runs for --setup_file.
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    (archive,) = os.listdir(tmp_path)
    with tarfile.open(tmp_path / archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for required in ("setup.py", "requirements.txt", "ns_data/schema.py", "ns_data/balance.py",
                     "beam_jobs/label_and_balance.py", "ns_train/tiny_teacher.py",
                     "ns_data/sample/unlabeled.tfrecord", "ns_data/sample/README.md"):
        assert required in names, required
    assert not any(name.startswith("tests/") for name in names)
