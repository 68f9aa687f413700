"""bench.preloaded: a command run in a forked child ends as `python -m` would end it."""
from __future__ import annotations

import os

import pytest

from bench import preloaded

MODULES = {
    "fine": "print('hello')\n",
    "bye": "import sys\nsys.exit('bye: bad flag')\n",
    "two": "import sys\nsys.exit(2)\n",
    "boom": "raise ValueError('boom')\n",
    "args": "import sys\nprint(sys.argv[1:], __name__)\n",
    "slow": "import time\ntime.sleep(60)\n",
    "loaded": "import sys\nprint('tensorflow' in sys.modules, 'ns_data' in sys.modules)\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("modules")
    for name, text in MODULES.items():
        (root / f"{name}.py").write_text(text)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), repo])}
    running = preloaded.Server(repo, env)
    yield running, root
    running.close()


@pytest.mark.parametrize("module, argv, code, stdout, stderr", [
    ("fine", [], 0, "hello\n", ""),
    ("bye", [], 1, "", "bye: bad flag\n"),
    ("two", [], 2, "", ""),
    ("args", ["--a=1", "b"], 0, "['--a=1', 'b'] __main__\n", ""),
    ("loaded", [], 0, "True False\n", ""),  # TensorFlow preloaded, the project's modules fresh
])
def test_a_command_exits_and_prints_as_python_m_would(server, module, argv, code, stdout,
                                                      stderr):
    running, root = server
    out, err = str(root / f"{module}.out"), str(root / f"{module}.err")
    assert running.run(module, argv, out, err, timeout=60) == code
    assert open(out).read() == stdout and open(err).read() == stderr


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(server):
    running, root = server
    err = str(root / "boom.err")
    assert running.run("boom", [], str(root / "boom.out"), err, timeout=60) == 1
    text = open(err).read()
    assert text.startswith("Traceback (most recent call last):")
    assert text.endswith("ValueError: boom\n")


def test_a_command_past_its_timeout_is_killed(server):
    running, root = server
    assert running.run("slow", [], str(root / "s.out"), str(root / "s.err"), timeout=1) is None
