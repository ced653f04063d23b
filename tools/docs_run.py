"""
Every command the README and docs/ show an operator typing, run as written.

The commands are read from the docs themselves: each line of a ``bash`` (or
plain) fenced block, and each ``$ `` line of an output example, whose first
word is ``salt``, ``salt-run``, ``salt-call``, ``salt-key``, ``consul`` or
``make``. ``make demo`` runs them all on its fleet (two datacenters, ACLs
default-deny, the master and minions on the shipped least-privilege tokens;
``tools/demo.py``, section "The documented commands, as written"), and
``tests/unit/test_docs_commands.py`` fails when a doc shows a command that
``ELSEWHERE`` does not name and the fleet does not run.

    .venv/bin/python tools/docs_run.py        # list them, with where each is written
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DOC_GLOBS = ("README.md", "docs/*.md", "formulas/reactor/README.md")
PROGRAMS = ("salt", "salt-run", "salt-call", "salt-key", "consul", "make")
BLOCK_LANGS = ("", "bash", "sh", "shell", "console")

# Documented commands run somewhere other than on the demo's fleet, and where.
ELSEWHERE = {
    "make demo": "tests/integration/test_demo.py runs tools/demo.py, which is all make demo runs",
    "make test": "CI (.ci/run) runs it as written",
    "make lock": "resolves pins against the package index: a maintainer's command, not run by tests",
    # A virtualenv, a pip install and a running service per host, each on port 8080: one host per
    # machine. Its secrets are read with the minion's own token: a key read under
    # secrets/demoapp/<type>/<group>/, which the shared salt-minion policy does not grant (it would
    # let a dev host read prod's); minted tokens grant it per environment (minion_tokens:kv_read,
    # docs/acl.md; test_minted_tokens reads dev's and is refused prod's).
    # The pip install way's command; the demo's fleet loads the checkout from file_roots.
    "salt-run consul_formulas.path": "tests/integration/test_loading.py and test_salt_ssh.py run it on a pip install",
    # The demo's fleet runs on the shared tokens; the minted-token path has its own cluster and master.
    "salt-run consul_tokens.list": "tests/integration/test_minted_tokens.py runs it on the salt-mint token",
    "salt-run consul_tokens.revoke db01.dev.gg.mydc1.example.com": "tests/integration/test_minted_tokens.py revokes a dev minion (by the salt/key reactor and the runner)",
    "salt-run consul_tokens.sweep": "tests/integration/test_minted_tokens.py sweeps a token whose minion is gone",
    "salt -I consul_env:role:web state.apply app": "tests/integration/test_states_app.py applies app on a web minion",
}
# Words a documented command's output must show here (beyond succeeding).
MUST_SHOW = {
    "salt-call consul.discover_hosts db": "127.0.0.1:",
    "salt-run consul_env.overview": "prod.gg.mydc1",
    "salt-run consul_env.overview dc=mydc2": "prod.gg.mydc2",
    "salt-run consul_targets.minions type=prod group=gg": "db01.prod.gg.mydc1.example.com",
    "salt -C 'I@consul_env:type:prod and I@consul_env:group:gg' test.ping": "db01.prod.gg.mydc1.example.com",
    "salt-run consul_pillar.explain web01.prod.gg.mydc1.example.com app:pool_size": "app:pool_size",
}
# Output that means the command did not do what the doc says, whatever its exit code.
FAILURE = re.compile(r"permission denied|Traceback|Failed:\s+[1-9]|Minion did not return|No minions matched", re.I)


def doc_files(repo=REPO):
    return [p for pattern in DOC_GLOBS for p in sorted(pathlib.Path(repo).glob(pattern))]


def doc_commands(repo=REPO):
    """``{command: [where, ...]}``: each documented command (``shlex.join`` of its words, comment dropped)."""
    found = {}
    for path in doc_files(repo):
        lang = None
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            fence = re.match(r"\s*```(\S*)", line)
            if fence:
                lang = fence.group(1) if lang is None else None
                continue
            if lang not in BLOCK_LANGS:
                continue
            text = line.strip().removeprefix("$ ")
            if text.split(" ", 1)[0] not in PROGRAMS:
                continue
            command = shlex.join(shlex.split(text, comments=True))
            found.setdefault(command, []).append(f"{path.relative_to(repo)}:{number}")
    return found


def run(command, master_dir, minion_dir, consul_env, cwd, timeout=180):
    """
    Run one documented command as written, pointed at this fleet: ``-c`` the
    master's (``salt``, ``salt-run``, ``salt-key``) or a minion's
    (``salt-call``) config dir; ``consul`` with ``consul_env`` (address,
    token file). Returns ``(ok, seconds, output)``.
    """
    argv = shlex.split(command)
    program = argv[0]
    env = dict(os.environ)
    if program == "consul":
        env.update(consul_env)
        argv = [consul_env["CONSUL_BIN"], *argv[1:]]
    else:
        conf = minion_dir if program == "salt-call" else master_dir
        argv = [str(pathlib.Path(sys.executable).parent / program), "-c", str(conf), *argv[1:]]
        if program == "salt-call":
            argv.insert(3, "--retcode-passthrough")
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    ok = proc.returncode == 0 and not FAILURE.search(output) and MUST_SHOW.get(command, "") in output
    return ok, time.monotonic() - started, output


def main():
    for command, where in doc_commands().items():
        print(f"{command}\n    {', '.join(where)}" + (f"\n    elsewhere: {ELSEWHERE[command]}" if command in ELSEWHERE else ""))


if __name__ == "__main__":
    main()
